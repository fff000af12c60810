# prefect-genopt: the two commands are `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed  ## create .venv and install prefect-genopt with test tools

demo: setup  ## run the example pipeline, give feedback, query the warehouse
	$(PY) -m flows.demo

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: setup lint  ## lint, then the whole test suite (fails if no test ran)
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup  ## the benchmarks behind docs/benchmarks.md
	$(PY) bench/bench_tracing.py
	$(PY) bench/bench_ingest.py
	$(PY) bench/bench_views.py

clean:
	rm -rf $(VENV) .demo .pytest_cache

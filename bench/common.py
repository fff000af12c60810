"""The one helper module of the benchmarks in ``bench/``: settings (data, work and results
directories), the process set-up, progress lines, machine facts, statistics, tables,
JSON results, and realistic spool records.

The benchmarks are modules of the ``bench`` package, run from the repository root::

    python -m bench.bench_tracing --quick

Directories come from :class:`BenchSettings` (environment prefix ``GENOPT_BENCH_``),
defaulting to paths relative to the repository: the shared data in
``<repo>/../shared/data``, scratch files in ``<repo>/.bench-work`` and the committed
results in ``bench/results``. A ``--quick`` smoke run writes its results to the work
directory, never over a committed result.

The record generator builds every span with :func:`prefect_genopt.records.span_record`
(the library's own storage boundary: redaction, truncation, lifting of genopt and
GenAI attributes into columns), shaped like the spans a real pipeline run leaves
(compare ``.demo/warehouse.duckdb``): one Prefect flow span, one ``genopt.run.start``
and one ``genopt.run.end`` span, Prefect task spans with genopt's inputs/outputs and
Prefect's state events, and LLM call spans with ``gen_ai.*`` attributes.

Nothing here imports Prefect, litellm or the library at module level: a benchmark calls
:func:`prefect_env` first, since Prefect reads its settings when it is imported.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import hashlib
import importlib.metadata as md
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

# ---------------------------------------------------------------------------------------
# settings, directories, process set-up
# ---------------------------------------------------------------------------------------


class BenchSettings(BaseSettings):
    """Where the benchmarks read data and write files (environment prefix ``GENOPT_BENCH_``).

    Example:
        >>> s = BenchSettings(work="somewhere/else")
        >>> s.work.name, s.results == BENCH_DIR / "results"
        ('else', True)
    """

    model_config = SettingsConfigDict(env_prefix="GENOPT_BENCH_")

    data: Path = Field(
        default=ROOT.parent / "shared" / "data",
        description="shared data sets (BBH in <data>/bbh); GENOPT_BENCH_DATA",
    )
    work: Path = Field(
        default=ROOT / ".bench-work",
        description="scratch files, warehouses, caches and --quick results; GENOPT_BENCH_WORK",
    )
    results: Path = Field(
        default=BENCH_DIR / "results",
        description="the committed results of full runs; GENOPT_BENCH_RESULTS",
    )


def settings() -> BenchSettings:
    """The benchmark settings, read from the environment now."""
    return BenchSettings()


def work_dir(name: str) -> Path:
    """``<work>/<name>``, created: a benchmark's own persistent folder (caches, warehouses)."""
    path = settings().work / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def scratch_dir(prefix: str, keep: bool = False) -> Path:
    """A fresh folder under ``<work>/scratch``, removed when the process exits unless
    ``keep``."""
    parent = work_dir("scratch")
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    if not keep:
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


#: Prefect and litellm settings every benchmark wants (defaults; the environment wins)
QUIET_ENV = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
}


def prefect_env(
    home: Path | None = None,
    warehouse: Path | None = None,
    level: str | None = None,
    **extra: str,
) -> None:
    """Set the process environment before Prefect (or the library) is imported: quiet
    logging, no analytics, litellm's bundled cost map (defaults the environment may
    override), a private ``PREFECT_HOME``, ``GENOPT_WAREHOUSE``, and ``extra`` variables
    (set as given)."""
    defaults = dict(QUIET_ENV)
    if level is not None:
        defaults["PREFECT_LOGGING_LEVEL"] = defaults["PREFECT_SERVER_LOGGING_LEVEL"] = level
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    if home is not None:
        os.environ["PREFECT_HOME"] = str(home)
    if warehouse is not None:
        os.environ["GENOPT_WAREHOUSE"] = str(warehouse)
    os.environ.update(extra)


#: the litellm provider of the scripted optimizer models (:func:`scripted_optimizer`)
SCRIPTED_OPTIMIZER = "scripted-opt"


def scripted_optimizer(mode: str) -> str:
    """Register :func:`prefect_genopt.testing.scripted_optimizer` as provider
    ``scripted-opt`` and return the model string of ``mode`` (``rules``, ``onevar``...)."""
    from prefect_genopt import testing

    if mode not in testing.OPTIMIZER_MODES:
        raise ValueError(f"unknown scripted optimizer mode {mode!r}")
    testing.register(SCRIPTED_OPTIMIZER, testing.scripted_optimizer)
    return f"{SCRIPTED_OPTIMIZER}/{mode}"


_T0 = time.perf_counter()


def log(msg: str) -> None:
    """One progress line with a UTC timestamp and the minutes since the process started."""
    now = dt.datetime.now(dt.UTC).strftime("%H:%M:%S")
    print(f"[{now} +{(time.perf_counter() - _T0) / 60:5.1f}m] {msg}", flush=True)


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that ran a benchmark, as it would be typed from the repository root.

    Example:
        >>> command_line("bench_gate", ["--quick"])
        'python -m bench.bench_gate --quick'
    """
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", "-m", f"bench.{module}", *args])


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def library_state() -> dict[str, Any]:
    """Which prefect-genopt code was measured: git HEAD, uncommitted changes, a source hash."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    digest = hashlib.sha256()
    for p in sorted((ROOT / "prefect_genopt").rglob("*.py")):
        digest.update(p.relative_to(ROOT).as_posix().encode() + b"\0" + p.read_bytes())
    return {
        "git_head": git("rev-parse", "--short", "HEAD"),
        "uncommitted_library_files": git("status", "--short", "--", "prefect_genopt").splitlines(),
        "library_source_sha256": digest.hexdigest()[:16],
    }


def describe_library(state: dict[str, Any]) -> str:
    """One line for a log: the commit and the uncommitted library files of
    :func:`library_state`."""
    dirty = ", ".join(state.get("uncommitted_library_files") or []) or "none"
    return f"commit {state.get('git_head') or '?'} (uncommitted library files: {dirty})"


def machine_info() -> dict[str, Any]:
    """Facts about this machine, the library versions and code, for the results file."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in load],
        "library": library_state(),
        "versions": {
            d: _version(d)
            for d in (
                "prefect",
                "duckdb",
                "opentelemetry-api",
                "opentelemetry-sdk",
                "prefect-genopt",
                "orjson",
                "pyarrow",
                "pandas",
            )
        },
    }


def loadavg() -> float:
    """The 1-minute load average (NaN where unknown)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def quantiles(values: Sequence[float]) -> dict[str, float]:
    """Median, p25, p75, min and max of a sample (p25/p75: inclusive method)."""
    vals = sorted(values)
    if len(vals) == 1:
        q1 = q3 = vals[0]
    else:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    return {
        "median": statistics.median(vals),
        "p25": q1,
        "p75": q3,
        "min": vals[0],
        "max": vals[-1],
        "n": len(vals),
    }


def mean(values: Sequence[float]) -> float:
    """The mean, or NaN for no values.

    Example:
        >>> mean([1, 2]), str(mean([]))
        (1.5, 'nan')
    """
    return sum(values) / len(values) if values else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn`` once; returns (seconds, its result)."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> None:
    """Print a plain aligned table (numbers right-aligned)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for raw, r in zip(rows, cells, strict=True):
        out = []
        for v, c, w in zip(raw, r, widths, strict=True):
            out.append(c.rjust(w) if isinstance(v, int | float) else c.ljust(w))
        print("  ".join(out))


def save_json(path: Path, obj: Any, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file, then a rename), so
    a stopped run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str) + "\n")
    os.replace(tmp, path)


def results_path(name: str, quick: bool = False) -> Path:
    """Where the results ``name`` go: ``<results>/<name>.json`` for a full run,
    ``<work>/results/<name>.quick.json`` for a ``--quick`` smoke run (never over the
    committed results).

    Example:
        >>> results_path("replay").relative_to(ROOT).as_posix()
        'bench/results/replay.json'
        >>> results_path("replay", quick=True).name
        'replay.quick.json'
    """
    s = settings()
    return (s.work / "results" / f"{name}.quick.json") if quick else (s.results / f"{name}.json")


def _shown(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def write_results(name: str, payload: dict[str, Any], quick: bool = False) -> Path:
    """Write ``payload``, with the load average at its end (``loadavg_at_end``), to
    :func:`results_path` and say where; returns the path."""
    path = results_path(name, quick)
    save_json(path, {**payload, "loadavg_at_end": loadavg()})
    print(f"\nraw results: {_shown(path)}")
    return path


# ---------------------------------------------------------------------------------------
# realistic records
# ---------------------------------------------------------------------------------------

_WORDS = (
    "invoice refund crash export billing login password reset timeout upgrade plan "
    "colleague invite report dashboard latency error checkout card declined shipping "
    "address warehouse ticket priority customer account settings webhook retry queue"
).split()

PIPELINES = ("triage", "summarize", "extract")
KPIS = ("accuracy", "helpful", "latency_ok", "user_rating")
RESOURCE = {
    "telemetry.sdk.language": "python",
    "telemetry.sdk.name": "opentelemetry",
    "telemetry.sdk.version": "1.45.2",
    "service.instance.id": "d88e27f8-ed4b-4987-a293-e42a6b006577",
    "service.name": "prefect-genopt",
}


def _text(rng: random.Random, lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    out: list[str] = []
    size = 0
    while size < n:
        w = rng.choice(_WORDS)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n]


def _hex(rng: random.Random, nbytes: int) -> str:
    return rng.getrandbits(nbytes * 8).to_bytes(nbytes, "big").hex()


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class ParamSet:
    """One param set of a pipeline: id, values, and the pipeline's schema."""

    def __init__(self, pipeline: str, index: int) -> None:
        self.pipeline = pipeline
        self.values = {
            "prompt": f"Classify the {pipeline} item (variant {index}). Answer with a label.",
            "threshold": round(0.3 + 0.05 * (index % 10), 2),
        }
        self.schema = json.dumps(
            {
                "additionalProperties": False,
                "properties": {
                    "prompt": {"type": "string", "minLength": 1, "genopt_kind": "prompt"},
                    "threshold": {
                        "type": "number",
                        "minimum": 0.0,
                        "maximum": 1.0,
                        "genopt_kind": "numeric",
                    },
                },
                "title": f"{pipeline.title()}Params",
                "type": "object",
            },
            sort_keys=True,
            separators=(",", ":"),
        )
        self.schema_hash = hashlib.sha256(self.schema.encode()).hexdigest()[:16]
        canon = json.dumps(self.values, sort_keys=True, separators=(",", ":"))
        self.id = "ps_" + hashlib.sha256(canon.encode()).hexdigest()[:16]
        self.params_json = canon


def param_sets(n: int) -> list[ParamSet]:
    """``n`` param sets spread round-robin over :data:`PIPELINES`."""
    return [ParamSet(PIPELINES[i % len(PIPELINES)], i) for i in range(n)]


def _state_events(rng: random.Random, start_ns: int, end_ns: int) -> list[dict[str, Any]]:
    states = [("Running", "RUNNING"), ("Completed", "COMPLETED")]
    if rng.random() < 0.5:
        states.insert(0, ("Pending", "PENDING"))
    times = [
        start_ns + (end_ns - start_ns) * i // max(1, len(states) - 1) for i in range(len(states))
    ]
    return [
        {
            "name": name,
            "time_ns": t,
            "attributes": {
                "prefect.state.message": "",
                "prefect.state.type": typ,
                "prefect.state.name": name,
                "prefect.state.id": _uuid(rng),
            },
        }
        for (name, typ), t in zip(states, times, strict=True)
    ]


def run_records(
    rng: random.Random,
    ps: ParamSet,
    start_ns: int,
    n_tasks: int,
    n_llm: int,
    limit: int = 4096,
) -> tuple[str, list[dict[str, Any]]]:
    """The span records of one pipeline run: ``(run_id, records)``.

    ``2 + 1 + n_tasks + n_llm`` spans: Prefect's flow span, genopt's run-start and
    run-end spans, ``n_tasks`` task spans (inputs/outputs of 200-500 chars, ~14
    attributes, 2-3 state events) and ``n_llm`` LLM spans (children of tasks).
    """
    run_id = _uuid(rng)
    trace_id = _hex(rng, 16)
    flow_span = _hex(rng, 8)
    common = {
        "genopt.run_id": run_id,
        "genopt.pipeline": ps.pipeline,
        "genopt.param_set_id": ps.id,
        "genopt.arm": "stable" if rng.random() < 0.8 else "canary",
    }
    out: list[dict[str, Any]] = []
    t = start_ns
    step_ns = 15_000_000
    end_ns = start_ns + step_ns * (n_tasks + n_llm + 2)
    inputs = json.dumps({"n": n_tasks, "batch": _text(rng, 20, 40)})

    from prefect_genopt.records import span_record

    def rec(**kw: Any) -> dict[str, Any]:
        return span_record(trace_id=trace_id, resource=RESOURCE, source="spool", limit=limit, **kw)

    out.append(
        rec(
            span_id=_hex(rng, 8),
            parent_span_id=flow_span,
            name="genopt.run.start",
            span_kind="INTERNAL",
            start_ns=t,
            end_ns=t + 15_000,
            status="UNSET",
            status_message=None,
            attributes={
                **common,
                "genopt.inputs": inputs,
                "genopt.params": ps.params_json,
                "genopt.schema": ps.schema,
                "genopt.schema_hash": ps.schema_hash,
                "genopt.entrypoint": json.dumps(
                    {
                        "module": f"flows.examples.{ps.pipeline}",
                        "function": ps.pipeline,
                        "file": f"flows/examples/{ps.pipeline}.py",
                        "entrypoint": f"flows/examples/{ps.pipeline}.py:{ps.pipeline}",
                    }
                ),
                "genopt.flow_name": ps.pipeline,
                "genopt.host": "bench",
                "genopt.pid": os.getpid(),
            },
            events=[],
        )
    )
    n_total = n_tasks + n_llm
    llm_every = max(1, n_total // max(1, n_llm)) if n_llm else 0
    task_span = flow_span
    n_done_llm = 0
    for i in range(n_total):
        t += step_ns
        is_llm = bool(n_llm) and n_done_llm < n_llm and i % llm_every == llm_every - 1
        if is_llm:
            n_done_llm += 1
            tokens_in = rng.randint(80, 900)
            tokens_out = rng.randint(1, 200)
            model = rng.choice(("openai/gpt-4o-mini", "anthropic/claude-haiku", "ollama/llama3"))
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model,
                "gen_ai.provider.name": model.split("/")[0],
                "gen_ai.system": model.split("/")[0],
                "gen_ai.prompt": json.dumps(
                    [
                        {"role": "system", "content": ps.values["prompt"]},
                        {"role": "user", "content": _text(rng, 150, 350)},
                    ]
                ),
                "gen_ai.request.temperature": 0.0,
                "gen_ai.request.max_tokens": 256,
                **common,
                "gen_ai.client.latency_ms": rng.uniform(100, 2000),
                "gen_ai.usage.input_tokens": tokens_in,
                "gen_ai.usage.prompt_tokens": tokens_in,
                "gen_ai.usage.output_tokens": tokens_out,
                "gen_ai.usage.completion_tokens": tokens_out,
                "gen_ai.response.model": model,
                "gen_ai.completion": json.dumps([_text(rng, 20, 200)]),
                "gen_ai.response.finish_reasons": ["stop"],
            }
            if not model.startswith("ollama"):
                attrs["gen_ai.usage.cost"] = (tokens_in * 0.15 + tokens_out * 0.6) / 1e6
            failed = rng.random() < 0.02
            out.append(
                rec(
                    span_id=_hex(rng, 8),
                    parent_span_id=task_span,
                    name=f"chat {model}",
                    span_kind="CLIENT",
                    start_ns=t,
                    end_ns=t + rng.randint(100, 2000) * 1_000_000,
                    status="ERROR" if failed else "OK",
                    status_message="RateLimitError: slow down" if failed else None,
                    attributes=attrs,
                    events=[],
                )
            )
            continue
        task_span = _hex(rng, 8)
        task = rng.choice(("classify", "fetch", "summarize", "score"))
        item = f"T-{rng.randint(0, 99999):05d}"
        out.append(
            rec(
                span_id=task_span,
                parent_span_id=flow_span,
                name=f"{task}-{_hex(rng, 2)[:3]}",
                span_kind="INTERNAL",
                start_ns=t,
                end_ns=t + step_ns,
                status="OK",
                status_message=None,
                attributes={
                    "prefect.run.name": f"{task}-{_hex(rng, 2)[:3]}",
                    "prefect.run.type": "task",
                    "prefect.run.id": _uuid(rng),
                    "prefect.tags": [],
                    "prefect.run.parameter.ticket": "dict",
                    **common,
                    "genopt.task": task,
                    "genopt.inputs": json.dumps(
                        {"ticket": {"id": item, "text": _text(rng, 160, 440), "label": "other"}}
                    ),
                    "genopt.item_key": item,
                    "genopt.params_read": json.dumps({"prompt": ps.values["prompt"]}),
                    "genopt.output": _text(rng, 200, 500),
                },
                events=_state_events(rng, t, t + step_ns),
            )
        )
    out.append(
        rec(
            span_id=_hex(rng, 8),
            parent_span_id=flow_span,
            name="genopt.run.end",
            span_kind="INTERNAL",
            start_ns=end_ns - 10_000,
            end_ns=end_ns - 5_000,
            status="UNSET",
            status_message=None,
            attributes={
                "genopt.run_id": run_id,
                "genopt.pipeline": ps.pipeline,
                "genopt.status": "completed",
                "genopt.output": "0.875",
            },
            events=[],
        )
    )
    out.append(
        rec(
            span_id=flow_span,
            parent_span_id=None,
            name=f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}",
            span_kind="INTERNAL",
            start_ns=start_ns - 100_000,
            end_ns=end_ns,
            status="OK",
            status_message=None,
            attributes={
                "prefect.run.name": "certain-lorikeet",
                "prefect.run.type": "flow",
                "prefect.run.id": run_id,
                "prefect.tags": [],
                "prefect.run.parameter.n": "int",
                "prefect.flow.id": _uuid(rng),
                **common,
                "genopt.inputs": inputs,
                "genopt.output": "0.875",
            },
            events=_state_events(rng, start_ns, end_ns),
        )
    )
    return run_id, out


def feedback_records(
    rng: random.Random, run_id: str, start_ns: int, n: int
) -> list[dict[str, Any]]:
    """``n`` feedback records for a run (as ``genopt.feedback`` builds them in a run)."""
    out = []
    for i in range(n):
        kpi = KPIS[i % len(KPIS)]
        item = f"T-{i:03d}"
        key = f"{kpi}|{item}|code"
        out.append(
            {
                "k": "feedback",
                "feedback_id": hashlib.sha256(f"{run_id}\0{key}".encode()).hexdigest()[:32],
                "run_id": run_id,
                "kpi": kpi,
                "value": round(rng.random(), 3),
                "comment": _text(rng, 20, 80) if rng.random() < 0.3 else None,
                "item_key": item,
                "source": "code",
                "idempotency_key": key,
                "created_ns": start_ns + (i + 1) * 1_000_000,
                "verified": True,
                "pipeline": None,
                "param_set_id": None,
                "arm": None,
            }
        )
    return out


def runs(
    n_spans: int,
    spans_per_run: int,
    n_param_sets: int = 20,
    llm_share: float = 0.15,
    days: int = 30,
    seed: int = 7,
) -> Iterator[tuple[str, int, ParamSet, list[dict[str, Any]]]]:
    """Yield ``(run_id, start_ns, param_set, span records)`` until ``n_spans`` spans.

    Runs are spread evenly over the last ``days`` days.
    """
    rng = random.Random(seed)
    sets = param_sets(n_param_sets)
    body = max(1, spans_per_run - 3)
    n_llm = round(body * llm_share)
    n_tasks = body - n_llm
    per_run = n_tasks + n_llm + 3
    n_runs = max(1, -(-n_spans // per_run))
    now = time.time_ns()
    span_ns = days * 86_400 * 10**9
    made = 0
    for r in range(n_runs):
        ps = sets[r % len(sets)]
        start = now - span_ns + span_ns * r // n_runs
        left = n_spans - made
        if left < per_run:
            k = max(1, left - 3)
            n_llm_r = round(k * llm_share)
            run_id, recs = run_records(rng, ps, start, k - n_llm_r, n_llm_r)
            recs = recs[:left]
        else:
            run_id, recs = run_records(rng, ps, start, n_tasks, n_llm)
        made += len(recs)
        yield run_id, start, ps, recs


@contextlib.contextmanager
def settings_lookup_cached() -> Iterator[bool]:
    """Generate data faster with older library code; yields whether it patched anything.

    Before the library looked redaction patterns up once per span, each
    :func:`prefect_genopt.redaction.redact` call went through ``get_settings()``,
    which scanned and sorted ``os.environ`` every time (~85% of
    :func:`span_record`'s time). With such code (a module-level
    ``redaction._extra_patterns``), this makes that lookup return the value it
    returns now, so records made inside are identical, only faster to make. Only
    the benchmarks' *data generation* uses it, never a measured path. With newer
    code there is nothing to patch.
    """
    from prefect_genopt import redaction

    original = getattr(redaction, "_extra_patterns", None)
    if original is None:
        yield False
        return
    value = original()
    redaction._extra_patterns = lambda: value
    try:
        yield True
    finally:
        redaction._extra_patterns = original


def ingest_all(warehouse: Path, spool_dir: Path, n_records: int) -> dict[str, Any]:
    """Call ``Ingester.ingest()`` until all ``n_records`` spool records are loaded.

    One call should load everything, but ``Ingester._ingest_once`` only loops while
    a transaction read *at least* ``ingest_batch_bytes`` (256 MB), and a batch cut
    at a line end is almost always a little less: with more than 256 MB spooled,
    one ``ingest()`` leaves the rest for the next call. Every call is timed.
    """
    from prefect_genopt.warehouse import Ingester

    calls: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    while sum(c["records"] for c in calls) < n_records:
        r = Ingester(warehouse, spool_dir).ingest()
        calls.append(vars(r))
        if r.records == 0:
            break
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "calls": len(calls),
        "records": sum(c["records"] for c in calls),
        "spans": sum(c["spans"] for c in calls),
        "rejected": sum(c["rejected"] for c in calls),
        "per_call": calls,
    }

"""Traced vs bare Prefect: what genopt's tracing costs a flow of 100 tasks.

All arms run in ONE warm process, against one local Prefect API server started by
``prefect.testing.utilities.prefect_test_harness()`` (a ``SubprocessASGIServer`` on a
temporary SQLite database), with the same Prefect settings:

* ``bare``: plain ``@flow`` + plain ``@task``, and NO OpenTelemetry SDK
  ``TracerProvider`` installed, so Prefect's spans are the API's no-op spans;
* ``traced``: the same flow written with ``@genopt.pipeline`` + ``@genopt.task``, with
  genopt's tracing installed (the SDK provider that ``setup_tracing`` made at
  decoration time: every span really goes through ``GenoptSpanProcessor`` into a
  ``SpoolSpanExporter`` writing the spool of a temporary ``GENOPT_WAREHOUSE``);
* ``sdk`` (diagnostic; off with ``--quick`` or ``--no-sdk-arm``): the bare flow with an SDK
  ``TracerProvider`` that has no span processor: what Prefect's own span recording
  costs, before genopt does anything.

OpenTelemetry's global provider can be set only once per process, so arms are
switched by resetting the API's globals (``opentelemetry.trace._TRACER_PROVIDER`` and
``_TRACER_PROVIDER_SET_ONCE``; Prefect and genopt look the tracer up per run, so
nothing caches the old provider). Each run checks inside every task that
``trace.get_current_span().is_recording()`` is what the arm should give, and that
the spool grew by the expected number of spans (traced) or not at all (others).

After warm-up runs of each arm, arms alternate in ABBA blocks (``bare, traced,
[sdk, sdk,] traced, bare``), so drift on this shared machine hits both arms alike.
Before each run the script waits until the API server process is idle (it persists
task-run events for seconds after a flow returns; that backlog would otherwise set the
timings). Inside the traced runs, genopt's own work is also measured in place, so the
traced - sdk difference can be accounted for: wrappers around ``GenoptSpanProcessor``'s
``on_start`` and ``on_end``, the spool writer's ``append``, the run's routing-state read
(``resolve_route``), the ``@genopt.task`` wrapper (its time minus the step's own, timed
separately), and the flush of queued spans after the flow returns.
Then genopt's own per-span cost is timed directly on a realistic finished SDK span
(attributes and events copied from a task span the traced arm wrote):
``SpoolSpanExporter().export([span])`` and ``GenoptSpanProcessor.on_end(span)``,
with a breakdown of where that time goes.

Usage: ``python -m bench.bench_tracing [--quick] [--repeats R] [--[no-]sdk-arm]``
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common

# Prefect reads its settings at import: set them first.
_TMP = common.scratch_dir("bench-tracing-")
PREFECT_ENV = {"PREFECT_HOME": str(_TMP / "prefect-home"), **common.QUIET_ENV}
os.environ.update(PREFECT_ENV)
os.environ["GENOPT_WAREHOUSE"] = str(_TMP / "warehouse.duckdb")

NAME = "bench_tracing"
N_TASKS = 100
TARGET_RATIO = 1.05
SETTLE_WINDOW_S = 0.25  # between runs, wait until the API server used <= 1 CPU tick per window
SETTLE_MAX_S = 10.0

_seen: list[bool] = []
TICKETS = [
    {
        "id": f"T-{i:04d}",
        "text": (
            "Customer reports that the invoice export freezes at 99% when the billing "
            f"history holds more than {100 + i} rows; retried twice, same result. "
            "Account on the Starter plan, region eu-west, browser Firefox 131."
        ),
        "label": "bug",
    }
    for i in range(10)
]


def step_body(i: int, ticket: dict[str, Any]) -> str:
    """The work of one task (identical in every arm): a few string operations."""
    from opentelemetry import trace

    _seen.append(trace.get_current_span().is_recording())
    text = ticket["text"]
    return f"{ticket['id']}#{i}: " + " ".join(w.capitalize() for w in text.split()[:40])


def build_flows() -> dict[str, Any]:
    """The bare and the traced flow (decorating the traced one installs genopt's provider)."""
    from opentelemetry import trace
    from prefect import flow, task

    import prefect_genopt as genopt

    bare_step = task(name="step")(step_body)

    @flow(name="bench-bare")
    def bare_flow(n: int, tickets: list[dict[str, Any]]) -> int:
        return sum(len(bare_step(i, tickets[i % len(tickets)])) for i in range(n))

    class BenchParams(genopt.Tunables):
        style: str = genopt.prompt("Capitalize every word.", description="how to rewrite")

    traced_step = genopt.task(name="step")(step_body)

    @flow(name="bench-traced")
    @genopt.pipeline(name="bench-traced", params=BenchParams)
    def traced_flow(n: int, tickets: list[dict[str, Any]]) -> int:
        return sum(len(traced_step(i, tickets[i % len(tickets)])) for i in range(n))

    provider = trace.get_tracer_provider()
    from opentelemetry.sdk.trace import TracerProvider

    if not isinstance(provider, TracerProvider):
        raise SystemExit(f"genopt did not install an SDK TracerProvider: {provider!r}")
    return {
        "bare": bare_flow,
        "traced": traced_flow,
        "traced_step": traced_step,
        "genopt_provider": provider,
    }


class Arms:
    """Switches OpenTelemetry's global tracer provider between arms."""

    def __init__(self, genopt_provider: Any) -> None:
        from opentelemetry.sdk.trace import TracerProvider

        self.providers: dict[str, Any] = {
            "bare": None,
            "traced": genopt_provider,
            "sdk": TracerProvider(),  # records spans, exports nothing
        }

    def use(self, arm: str) -> None:
        from opentelemetry import trace
        from opentelemetry.util._once import Once

        trace._TRACER_PROVIDER_SET_ONCE = Once()
        provider = self.providers[arm]
        if provider is None:
            trace._TRACER_PROVIDER = None
        else:
            trace.set_tracer_provider(provider)
        current = trace.get_tracer_provider()
        if (provider is None) != isinstance(current, trace.ProxyTracerProvider):
            raise SystemExit(f"arm {arm}: global provider is {current!r}")


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b") ", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def wait_server_idle(pid: int | None) -> float:
    """Wait until the API server process is idle (it persists task-run events after a
    flow returns); returns the seconds waited. Same rule for every arm."""
    t0 = time.perf_counter()
    if pid is None:
        time.sleep(SETTLE_WINDOW_S)
        return SETTLE_WINDOW_S
    before = _cpu_ticks(pid)
    while time.perf_counter() - t0 < SETTLE_MAX_S:
        time.sleep(SETTLE_WINDOW_S)
        now = _cpu_ticks(pid)
        if now - before <= 1:
            break
        before = now
    return time.perf_counter() - t0


class Probe:
    """Times genopt's work inside the traced runs (instance attributes wrap the stamping
    processor's ``on_start``/``on_end`` and the exporting one's ``on_end``, this process's
    ``SpoolWriter.append``, the task's ``fn`` (genopt's wrapper) and ``resolve_route``; two
    ``perf_counter`` calls per wrapped call, well under 1 µs)."""

    PARTS = ("on_start", "on_end", "spool_append", "task_wrapper", "routing_read")

    def __init__(self) -> None:
        self.s = dict.fromkeys(self.PARTS, 0.0)
        self.spans = 0
        self.tasks = 0
        self.installed = False

    def _timed(self, part: str, fn: Callable[..., Any], count: str | None = None) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.s[part] += time.perf_counter() - t0
                if count == "spans":
                    self.spans += 1
                elif count == "tasks":
                    self.tasks += 1

        return timed

    def install(self, traced_step: Any) -> None:
        import functools

        from prefect_genopt import spool
        from prefect_genopt.rollout import router
        from prefect_genopt.settings import get_settings
        from prefect_genopt.tracing import get_processor, get_stamper

        processor, stamper = get_processor(), get_stamper()
        writer = spool.writer_for(get_settings().spool_dir)
        if processor is None or stamper is None:
            raise SystemExit("genopt's span processors are not installed")
        # the stamping processor does the on_start work (the exporting one's is empty); both
        # do on_end work: stamping the run's end, then queueing the span for export
        stamper.on_start = self._timed("on_start", stamper.on_start)  # type: ignore[method-assign]
        stamper.on_end = self._timed("on_end", stamper.on_end)  # type: ignore[method-assign]
        processor.on_end = self._timed("on_end", processor.on_end, "spans")  # type: ignore[method-assign]
        writer.append = self._timed("spool_append", writer.append)  # type: ignore[method-assign]
        router.resolve_route = self._timed("routing_read", router.resolve_route)
        # Prefect calls task.fn (genopt's wrapper); keep its signature for parameter binding
        traced_step.fn = functools.wraps(traced_step.fn)(
            self._timed("task_wrapper", traced_step.fn, "tasks")
        )
        self.installed = True

    def take(self) -> dict[str, float]:
        out: dict[str, float] = {f"{k}_s": v for k, v in self.s.items()}
        out.update(spans=self.spans, tasks=self.tasks)
        self.s = dict.fromkeys(self.PARTS, 0.0)
        self.spans = self.tasks = 0
        return out


PROBE = Probe()
STEP_BODY_ROW = "(the step's own body, per call)"


class SpoolCounter:
    """Counts lines appended to the spool directory since the last call."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seen: dict[str, tuple[int, int]] = {}

    def new_lines(self) -> int:
        total = 0
        if not self.directory.exists():
            return 0
        for p in self.directory.iterdir():
            key = p.name.rsplit(".", 1)[0]
            size0, _ = self.seen.get(key, (0, 0))
            size = p.stat().st_size
            if size > size0:
                with open(p, "rb") as fh:
                    fh.seek(size0)
                    total += fh.read(size - size0).count(b"\n")
            self.seen[key] = (size, 0)
        return total


def run_once(
    flows: dict[str, Any], arms: Arms, arm: str, spool: SpoolCounter, server_pid: int | None
) -> dict[str, Any]:
    """Run one flow of ``N_TASKS`` tasks in ``arm``; returns its timing and checks."""
    settle = wait_server_idle(server_pid)
    arms.use(arm)
    fn = flows["traced" if arm == "traced" else "bare"]
    _seen.clear()
    spool.new_lines()
    if arm == "traced" and not PROBE.installed and spool.directory.exists():
        PROBE.install(flows["traced_step"])
    PROBE.take()
    gc.collect()
    t0 = time.perf_counter()
    fn(N_TASKS, TICKETS)
    flow_seconds = time.perf_counter() - t0
    # Spans genopt queued for its background writer are written here, inside the
    # timed region: deferred work is still overhead (conservative).
    from prefect_genopt.tracing import get_processor

    processor = get_processor()
    if arm == "traced" and processor is not None:
        processor.force_flush()
    seconds = time.perf_counter() - t0
    probe = PROBE.take()
    spans = spool.new_lines()
    recording = sum(_seen)
    expect_recording = arm in ("traced", "sdk")
    ok = len(_seen) == N_TASKS and recording == (N_TASKS if expect_recording else 0)
    ok = ok and ((spans >= N_TASKS + 1) if arm == "traced" else (spans == 0))
    if not ok:
        raise SystemExit(
            f"arm {arm}: {recording}/{len(_seen)} tasks saw a recording span, spool grew "
            f"by {spans} lines: the arm is not what it claims"
        )
    return {
        "arm": arm,
        "seconds": seconds,
        "flow_seconds": flow_seconds,
        "recording_tasks": recording,
        "spool_spans": spans,
        "settle_wait_s": settle,
        "flush_s": seconds - flow_seconds,
        "genopt_on_end_s": probe["on_end_s"],
        "spool_append_s": probe["spool_append_s"],
        "genopt_on_start_s": probe["on_start_s"],
        "task_wrapper_s": probe["task_wrapper_s"],
        "routing_read_s": probe["routing_read_s"],
        "probed_spans": probe["spans"],
        "probed_tasks": probe["tasks"],
    }


def genopt_account(
    traced_runs: list[dict[str, Any]], q: dict[str, dict[str, float]], arm_names: list[str]
) -> dict[str, float]:
    """Median ms per traced run of each part of genopt's work, their sum, and the
    differences between the arms' medians it should explain."""

    def med(key: str) -> float:
        return statistics.median(r[key] * 1000 for r in traced_runs)

    parts = {
        "routing-state read (resolve_route)": med("routing_read_s"),
        "span processor on_start": med("genopt_on_start_s"),
        "span processor on_end": med("genopt_on_end_s"),
        "task wrapper (minus the step's body)": med("task_wrapper_s"),
        "flush of queued spans after the flow": med("flush_s"),
    }
    out = dict(parts)
    out["sum of genopt's parts"] = sum(parts.values())
    if "sdk" in arm_names:
        out["traced - sdk (medians)"] = (q["traced"]["median"] - q["sdk"]["median"]) * 1000
    out["traced - bare (medians)"] = (q["traced"]["median"] - q["bare"]["median"]) * 1000
    return out


# ---------------------------------------------------------------------------------------
# genopt's per-span cost, measured directly
# ---------------------------------------------------------------------------------------


def realistic_span(spool_dir: Path, resource: Any) -> Any:
    """A finished SDK span shaped like a real task span from the traced arm."""
    import orjson
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Status, StatusCode

    record = None
    for p in sorted(spool_dir.iterdir()):
        for line in p.read_bytes().splitlines():
            r = orjson.loads(line)
            if r.get("run_type") == "task":
                record = r
                break
        if record:
            break
    if record is None:
        raise SystemExit("no task span in the spool")
    # attributes as Prefect + genopt set them on the live span (flatten nothing: they are
    # already primitive values or lists of them)
    attrs = dict(record["attributes"])
    tracer = TracerProvider(resource=resource).get_tracer("bench")
    span = tracer.start_span(record["name"], attributes=attrs)
    for e in record["events"]:
        span.add_event(e["name"], e["attributes"])
    span.set_status(Status(StatusCode.OK))
    span.end()
    return span


def per_call_us(fn: Callable[[], Any], n: int) -> float:
    """Median over 5 rounds of the mean µs per call of ``fn`` (``n`` calls a round)."""
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(rounds)


def span_costs(spool_dir: Path, resource: Any, n: int) -> list[tuple[str, float]]:
    """µs per span for genopt's export path and its parts."""
    from opentelemetry.sdk.trace import TracerProvider

    from prefect_genopt import spool
    from prefect_genopt.records import from_readable_span
    from prefect_genopt.settings import get_settings
    from prefect_genopt.tracing import GenoptSpanProcessor, SpoolSpanExporter

    span = realistic_span(spool_dir, resource)
    out_dir = _TMP / "span-cost-spool"
    limit = get_settings().max_value_chars
    exporter = SpoolSpanExporter(directory=out_dir)
    processor = GenoptSpanProcessor(SpoolSpanExporter(directory=out_dir))
    writer = spool.SpoolWriter(out_dir / "w")
    record = from_readable_span(span, limit)
    n_strings = sum(1 for v in record["attributes"].values() if isinstance(v, str))

    bare_tp = TracerProvider(resource=resource)
    genopt_tp = TracerProvider(resource=resource)
    genopt_tp.add_span_processor(GenoptSpanProcessor(SpoolSpanExporter(directory=out_dir)))
    attrs = dict(span.attributes or {})
    events = [(e.name, dict(e.attributes or {})) for e in span.events]

    def lifecycle(tp: Any) -> Callable[[], None]:
        tracer = tp.get_tracer("bench")

        def go() -> None:
            s = tracer.start_span(span.name, attributes=attrs)
            for name, a in events:
                s.add_event(name, a)
            s.end()

        return go

    from prefect_genopt.pipeline import _instrument_task_fn
    from prefect_genopt.replay.steps import StepPolicy

    wrapped = _instrument_task_fn(step_body, StepPolicy())  # neither records nor replays
    ticket = TICKETS[0]
    with bare_tp.get_tracer("bench").start_as_current_span("task-span"):
        body_us = per_call_us(lambda: step_body(3, ticket), n)
        wrapper_us = per_call_us(lambda: wrapped(3, ticket), n) - body_us
    _seen.clear()

    rows = [
        ("SpoolSpanExporter().export([span])", per_call_us(lambda: exporter.export([span]), n)),
        (
            "GenoptSpanProcessor.on_end(span) (sync spool export)",
            per_call_us(lambda: processor.on_end(span), n),
        ),
        (
            "  from_readable_span(span) (record: redact, truncate, lift)",
            per_call_us(lambda: from_readable_span(span, limit), n),
        ),
        (
            "    get_settings() (one call)",
            per_call_us(get_settings, n * 10),
        ),
        (
            "  spool encode + write(2) of the record",
            per_call_us(lambda: writer.append([record]), n),
        ),
        ("genopt.task wrapper itself (record inputs/output), per task call", wrapper_us),
        (STEP_BODY_ROW, body_us),
        ("SDK span start+events+end, no processor", per_call_us(lifecycle(bare_tp), n)),
        ("SDK span start+events+end, genopt processor", per_call_us(lifecycle(genopt_tp), n)),
    ]
    with common.settings_lookup_cached() as patched:
        if patched:  # older library code: one settings lookup per string
            rows.insert(
                3,
                (
                    "  from_readable_span(span), settings lookup hoisted (what-if)",
                    per_call_us(lambda: from_readable_span(span, limit), n),
                ),
            )
    writer.close()
    spool.close_all()
    shutil.rmtree(out_dir, ignore_errors=True)
    rows.append(("(string attributes in the record)", float(n_strings)))
    rows.append(("(variables in os.environ)", float(len(os.environ))))
    return rows


# ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repeats (smoke check, < 60 s)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per arm (default 20; quick 4)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up runs per arm (2; quick 1)")
    ap.add_argument(
        "--sdk-arm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the diagnostic sdk arm (default: yes; --quick: no)",
    )
    args = ap.parse_args(argv)
    repeats = args.repeats or (4 if args.quick else 20)
    repeats += repeats % 2  # whole ABBA blocks
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    sdk_arm = args.sdk_arm if args.sdk_arm is not None else not args.quick
    arm_names = ["bare", "traced"] + (["sdk"] if sdk_arm else [])

    info = common.machine_info()
    t_import = time.perf_counter()
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    flows = build_flows()
    arms = Arms(flows["genopt_provider"])
    import_s = time.perf_counter() - t_import

    from prefect_genopt.settings import get_settings

    spool_dir = get_settings().spool_dir
    spool = SpoolCounter(spool_dir)
    settings_shown = {
        **PREFECT_ENV,
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "None (temporary_settings)",
        "server": "prefect_test_harness(): SubprocessASGIServer, temporary SQLite",
        "task_runner": "default ThreadPoolTaskRunner; tasks called directly (sequential)",
        "between_runs": f"wait until the API server process is idle (<= 1 CPU tick per "
        f"{SETTLE_WINDOW_S}s, at most {SETTLE_MAX_S}s), same for every arm",
    }
    print(f"bench_tracing: flow of {N_TASKS} tasks, {repeats} runs per arm after {warmup} warm-up")
    print(
        f"machine: {info['nproc']} cores, python {info['python']}, prefect "
        f"{info['versions']['prefect']}, opentelemetry-sdk {info['versions']['opentelemetry-sdk']}"
        f", duckdb {info['versions']['duckdb']}, load {info['loadavg_at_start']}"
    )
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings_shown.items()))

    results: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with prefect_test_harness():
        with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            api = str(ps.PREFECT_API_URL.value())
            harness_s = time.perf_counter() - t_start
            from prefect.server.api.server import SubprocessASGIServer

            server = SubprocessASGIServer._instances.get(None)
            proc = getattr(server, "server_process", None)
            server_pid = proc.pid if proc is not None else None
            print(
                f"Prefect API (test harness) at {api}, server pid {server_pid}, "
                f"ready in {harness_s:.1f}s"
            )
            for arm in arm_names:
                for _w in range(warmup):
                    r = run_once(flows, arms, arm, spool, server_pid)
                    print(f"  warm-up {arm:6s} {r['seconds']:.3f}s")
            half = [a for a in arm_names if a != "bare"]
            block = ["bare", *half, *reversed(half), "bare"]
            n_blocks = repeats // 2
            for b in range(n_blocks):
                order = block if b % 2 == 0 else list(reversed(block))
                for pos, arm in enumerate(order):
                    r = run_once(flows, arms, arm, spool, server_pid)
                    r.update(block=b, position=pos, loadavg=common.loadavg())
                    results.append(r)
                line = "  ".join(f"{x['arm']} {x['seconds']:.3f}s" for x in results[-len(order) :])
                print(f"  block {b}: {line}  (load {common.loadavg()})")
            arms.use("traced")
            resource = flows["genopt_provider"].resource
            n_calls = 100 if args.quick else 2000
            costs = span_costs(spool_dir, resource, n_calls)
            wait_server_idle(server_pid)  # let it persist the last events before it stops

    from prefect_genopt.warehouse import Warehouse

    landed = Warehouse(ingest=True).sql(
        "SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM spans) AS spans"
    )[0]

    by_arm = {a: [r["seconds"] for r in results if r["arm"] == a] for a in arm_names}
    q = {a: common.quantiles(v) for a, v in by_arm.items()}
    # adjacent (bare, traced) pairs: positions 0-1 and 2k-1..2k of each block
    pair_ratios: list[float] = []
    for b in range(n_blocks):
        blk = [r for r in results if r["block"] == b]
        bare_runs = [r for r in blk if r["arm"] == "bare"]
        traced_runs = [r for r in blk if r["arm"] == "traced"]
        for br in bare_runs:
            tr = min(traced_runs, key=lambda t, br=br: abs(t["position"] - br["position"]))
            pair_ratios.append(tr["seconds"] / br["seconds"])
    ratio_medians = q["traced"]["median"] / q["bare"]["median"]
    ratio_pairs = statistics.median(pair_ratios)

    rows = []
    for a in arm_names:
        rows.append(
            [
                a,
                q[a]["median"],
                q[a]["p25"],
                q[a]["p75"],
                q[a]["median"] / N_TASKS * 1000,
                q[a]["median"] / q["bare"]["median"],
                q[a]["n"],
            ]
        )
    common.print_table(
        ["arm", "median s/run", "p25", "p75", "ms/task (run/100)", "x bare", "runs"],
        rows,
        title=f"Flow of {N_TASKS} tasks, seconds per flow run",
    )
    extra_ms = (q["traced"]["median"] - q["bare"]["median"]) / N_TASKS * 1000
    traced_runs = [r for r in results if r["arm"] == "traced" and r["probed_spans"]]
    in_situ = {
        "on_end_ms_per_run": statistics.median(r["genopt_on_end_s"] * 1000 for r in traced_runs),
        "spool_append_ms_per_run": statistics.median(
            r["spool_append_s"] * 1000 for r in traced_runs
        ),
        "spans_per_run": statistics.median(r["probed_spans"] for r in traced_runs),
    }
    in_situ["on_end_us_per_span"] = in_situ["on_end_ms_per_run"] * 1000 / in_situ["spans_per_run"]
    in_situ["spool_append_us_per_span"] = (
        in_situ["spool_append_ms_per_run"] * 1000 / in_situ["spans_per_run"]
    )
    met = ratio_medians <= TARGET_RATIO and ratio_pairs <= TARGET_RATIO
    account = genopt_account(traced_runs, q, arm_names)
    common.print_table(
        ["measure", "value", "target", "met"],
        [
            [
                "traced / bare, ratio of medians",
                ratio_medians,
                f"<= {TARGET_RATIO}",
                "yes" if ratio_medians <= TARGET_RATIO else "NO",
            ],
            [
                "traced / bare, median of pair ratios",
                ratio_pairs,
                f"<= {TARGET_RATIO}",
                "yes" if ratio_pairs <= TARGET_RATIO else "NO",
            ],
            ["extra ms per task (traced - bare)", extra_ms, "", ""],
            [
                "  of which genopt's on_end (export), ms per task",
                in_situ["on_end_ms_per_run"] / N_TASKS,
                "",
                "",
            ],
            [
                "    of which spool write(2) (encode + append), ms per task",
                in_situ["spool_append_ms_per_run"] / N_TASKS,
                "",
                "",
            ],
        ],
        title="Target",
    )
    common.print_table(
        ["genopt per-span cost (realistic finished task span)", "µs per span"],
        [[k, v] for k, v in costs],
        title=f"Per-span cost, median of 5 rounds x {n_calls} calls",
    )
    body_us = dict(costs).get(STEP_BODY_ROW, 0.0)
    account["task wrapper (minus the step's body)"] -= body_us * N_TASKS / 1000
    account["sum of genopt's parts"] -= body_us * N_TASKS / 1000
    common.print_table(
        ["genopt's work inside a traced run", "median ms per run"],
        [[k, v] for k, v in account.items()],
        title="Where traced - sdk goes (in place; on_end includes the spool append when "
        "it runs on the task thread)",
    )
    print(f"\nlanded in the warehouse after the runs: {landed}")
    common.write_results(
        NAME,
        {
            "benchmark": NAME,
            "command": common.command_line("bench_tracing", argv),
            "machine": info,
            "settings": settings_shown,
            "api_url": api,
            "import_and_decorate_s": import_s,
            "harness_start_s": harness_s,
            "n_tasks": N_TASKS,
            "repeats_per_arm": repeats,
            "warmup_per_arm": warmup,
            "runs": results,
            "quantiles": q,
            "ratio_of_medians": ratio_medians,
            "pair_ratios": pair_ratios,
            "median_pair_ratio": ratio_pairs,
            "extra_ms_per_task": extra_ms,
            "in_situ_export": in_situ,
            "in_situ_genopt_ms_per_run": account,
            "target_ratio": TARGET_RATIO,
            "target_met": met,
            "span_cost_us": dict(costs),
            "landed": landed,
        },
        quick=args.quick,
    )
    shutil.rmtree(_TMP, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

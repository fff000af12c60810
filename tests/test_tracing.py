"""The span processors: run stamping; synchronous export, bounded queue with counted drops."""

from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import prefect_genopt as genopt
from prefect_genopt import semconv
from prefect_genopt.tracing import (
    DROPS_SPAN,
    ExportSpanProcessor,
    GenoptSpanProcessor,
    RunContextSpanProcessor,
    SpoolSpanExporter,
    get_processor,
    get_stamper,
    is_run_boundary,
    setup_tracing,
)

FLOW = {semconv.PREFECT_RUN_TYPE: "flow", semconv.PREFECT_RUN_ID: "run-1"}


def _provider(*procs: SpanProcessor) -> TracerProvider:
    provider = TracerProvider(shutdown_on_exit=False)
    for proc in procs:
        provider.add_span_processor(proc)
    return provider


def _flow_task_llm(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("flow", attributes=FLOW):
        with tracer.start_as_current_span("task"):
            with tracer.start_as_current_span("llm"):
                pass
    with tracer.start_as_current_span("unrelated"):
        pass


def test_the_stamping_processor_alone_stamps_children_of_a_flow_span() -> None:
    exporter = InMemorySpanExporter()  # exported by the SDK's processor, not genopt's
    _flow_task_llm(_provider(RunContextSpanProcessor(), SimpleSpanProcessor(exporter)))
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    for name in ("flow", "task", "llm"):
        assert by_name[name].attributes[semconv.RUN_ID] == "run-1"
    assert semconv.RUN_ID not in by_name["unrelated"].attributes


def test_the_exporting_processor_alone_exports_without_stamping() -> None:
    exporter = InMemorySpanExporter()
    _flow_task_llm(_provider(ExportSpanProcessor(exporter)))
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["flow", "llm", "task", "unrelated"]
    assert all(semconv.RUN_ID not in s.attributes for s in spans)


def test_setup_tracing_adds_the_stamping_then_the_exporting_processor(
    warehouse_path: Path,
) -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    proc = setup_tracing(provider)
    assert proc is get_processor() and isinstance(proc, ExportSpanProcessor)
    stamper = get_stamper()
    assert isinstance(stamper, RunContextSpanProcessor)
    assert provider._active_span_processor._span_processors == (stamper, proc)
    _flow_task_llm(provider)
    # only this test's spans: LLM spans an earlier test left queued in the process-wide
    # processor may be flushed into this warehouse too (the spool follows GENOPT_WAREHOUSE)
    rows = genopt.Warehouse().sql(
        "SELECT name, run_id FROM spans WHERE name IN ('flow', 'task', 'llm', 'unrelated') "
        "ORDER BY name"
    )
    assert rows == [
        {"name": "flow", "run_id": "run-1"},
        {"name": "llm", "run_id": "run-1"},
        {"name": "task", "run_id": "run-1"},
        {"name": "unrelated", "run_id": None},
    ]


def test_genopt_span_processor_stamps_and_exports_in_one() -> None:
    exporter = InMemorySpanExporter()
    _flow_task_llm(_provider(GenoptSpanProcessor(exporter)))
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    for name in ("flow", "task", "llm"):
        assert by_name[name].attributes[semconv.RUN_ID] == "run-1"
    assert semconv.RUN_ID not in by_name["unrelated"].attributes


class SlowExporter(SpanExporter):
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.exported: list[ReadableSpan] = []
        self.lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        time.sleep(self.delay)
        with self.lock:
            self.exported.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_queue_overflow_is_counted_and_reported() -> None:
    exporter = SlowExporter(delay=0.2)
    proc = ExportSpanProcessor(exporter, queue_size=10, batch_size=5, interval=0.05)
    tracer = _provider(proc).get_tracer("t")
    for i in range(100):
        with tracer.start_as_current_span(f"s{i}"):
            pass
    assert proc.force_flush()
    real = [s for s in exporter.exported if s.name != DROPS_SPAN]
    assert proc.dropped > 0
    assert len(real) + proc.dropped == 100  # every span is either exported or counted
    reports = [s for s in exporter.exported if s.name == DROPS_SPAN]
    assert sum(s.attributes["genopt.dropped"] for s in reports) == proc.dropped
    proc.shutdown()


def test_failed_synchronous_export_is_counted() -> None:
    class Failing(InMemorySpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.FAILURE

    proc = ExportSpanProcessor(Failing())
    tracer = _provider(proc).get_tracer("t")
    for _ in range(3):
        with tracer.start_as_current_span("x"):
            pass
    assert proc.dropped == 3


def test_joins_an_application_provider_and_drops_reach_status(warehouse_path: Path) -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    app_exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(app_exporter))
    proc = GenoptSpanProcessor(SpoolSpanExporter())
    provider.add_span_processor(proc)
    with provider.get_tracer("app").start_as_current_span("app-span", attributes={"k": "v"}):
        pass
    assert [s.name for s in app_exporter.get_finished_spans()] == ["app-span"]  # app unchanged
    proc.dropped = 2  # as if two spans had not fit
    proc.force_flush()
    wh = genopt.Warehouse()
    assert wh.sql("SELECT name FROM spans WHERE name = 'app-span'") == [{"name": "app-span"}]
    assert wh.sql("SELECT sum(dropped) AS d FROM span_drops") == [{"d": 2}]


def test_long_and_secret_attribute_values_are_cleaned_at_export(
    warehouse_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("GENOPT_MAX_VALUE_CHARS", "100")
    proc = GenoptSpanProcessor(SpoolSpanExporter())
    tracer = _provider(proc).get_tracer("t")
    with tracer.start_as_current_span("s") as span:
        span.set_attribute("note", "key sk-proj-abcdefghijklmnopqrstu " + "z" * 500)
        span.add_event("ev", {"auth": "Bearer abcdefghij123"})
    row = genopt.Warehouse().sql("SELECT attributes, events FROM spans")[0]
    assert "sk-proj" not in row["attributes"] and "truncated" in row["attributes"]
    assert "abcdefghij123" not in row["events"]


def test_queued_spans_reach_the_spool_without_a_flush(tmp_path: Path) -> None:
    from prefect_genopt import spool as spool_mod

    proc = ExportSpanProcessor(
        SpoolSpanExporter(tmp_path),
        queue_size=100,
        interval=0.05,
        immediate=is_run_boundary,
    )
    tracer = _provider(proc).get_tracer("t")
    with tracer.start_as_current_span(semconv.RUN_START_SPAN):
        pass
    lines = lambda: sum(  # noqa: E731
        f.path.read_bytes().count(b"\n") for f in spool_mod.list_files(tmp_path)
    )
    assert lines() == 1  # a run boundary is written at once
    with tracer.start_as_current_span("task-span"):
        pass
    deadline = time.monotonic() + 5
    while lines() < 2 and time.monotonic() < deadline:  # the background writer's batch
        time.sleep(0.01)
    assert lines() == 2 and proc.dropped == 0
    proc.shutdown()


def test_a_discarded_processor_is_collected_despite_its_fork_hook() -> None:
    proc = ExportSpanProcessor(InMemorySpanExporter(), queue_size=10, interval=0.01)
    proc.shutdown()  # until then its background thread holds it, as the SDK's does
    ref = weakref.ref(proc)
    del proc
    gc.collect()
    assert ref() is None


def test_a_forked_child_exports_through_its_own_thread(tmp_path: Path) -> None:
    from prefect_genopt import spool as spool_mod

    proc = ExportSpanProcessor(SpoolSpanExporter(tmp_path), queue_size=100, interval=0.05)
    tracer = _provider(proc).get_tracer("t")
    pid = os.fork()
    if pid == 0:  # child: the fork hook started a new background thread
        code = 1
        try:
            with tracer.start_as_current_span("in-child"):
                pass
            proc.force_flush(5000)
            code = 0 if proc._thread is not None and proc._thread.is_alive() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    files = spool_mod.list_files(tmp_path)
    assert [f.pid for f in files] == [pid]
    assert files[0].path.read_bytes().count(b"\n") == 1
    proc.shutdown()

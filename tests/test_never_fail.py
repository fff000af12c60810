"""genopt never fails the user's flow (issue 15, item 3).

With the spool's disk full or read-only, or a bad feedback value, a pipeline run completes
with its own result; each cause logs one warning line per run (no traceback) and is
counted on the run (``runs.genopt_errors``, ``genopt status``). ``GENOPT_STRICT=1``
raises instead; outside a pipeline run the Python API raises.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import uuid
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from prefect import flow

import prefect_genopt as genopt
from prefect_genopt import incidents, semconv, spool
from prefect_genopt.feedback import FeedbackError
from prefect_genopt.tracing import ExportSpanProcessor, SpoolSpanExporter, get_processor
from prefect_genopt.warehouse import Ingester
from prefect_genopt.warehouse.status import warehouse_status
from tests.diskfull import InjectedDisk, inject

_RUN = "8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10"


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> InjectedDisk:
    return inject(monkeypatch)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="prefect_genopt")
    return caplog


def _genopt_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("prefect_genopt") and r.levelno >= logging.WARNING
    ]


# -- the exporter, without Prefect ---------------------------------------------------------


def _provider(processor: ExportSpanProcessor) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(processor)
    return provider


def test_lost_spans_log_one_line_per_cause_per_run_and_no_traceback(
    tmp_path: Path, disk: InjectedDisk, logs: pytest.LogCaptureFixture
) -> None:
    run_a, run_b = f"run-a-{uuid.uuid4().hex[:6]}", f"run-b-{uuid.uuid4().hex[:6]}"
    processor = ExportSpanProcessor(SpoolSpanExporter(tmp_path / "spool"))
    tracer = _provider(processor).get_tracer("t")
    disk.full()
    for i in range(100):  # 100 spans lost, in two runs
        run = run_a if i % 2 else run_b
        with tracer.start_as_current_span(f"s{i}", attributes={semconv.RUN_ID: run}):
            pass
    warnings = _genopt_warnings(logs)
    assert len(warnings) == 2, [w.getMessage() for w in warnings]  # one per run, one cause
    assert all(w.exc_info is None for w in logs.records)  # no traceback anywhere
    assert "the spool's disk is full" in warnings[0].getMessage()
    assert incidents.counts(run_a) == {"spool_full": 50}
    assert incidents.counts(run_b) == {"spool_full": 50}
    assert processor.dropped == 100


def test_drops_stay_counted_until_their_report_can_be_written(
    tmp_path: Path, disk: InjectedDisk, logs: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    processor = ExportSpanProcessor(SpoolSpanExporter(spool_dir))
    tracer = _provider(processor).get_tracer("t")
    disk.full()
    for i in range(23):
        with tracer.start_as_current_span(f"lost-{i}"):
            pass
    processor.force_flush()  # the report cannot be written either: still counted
    processor.force_flush()
    assert processor.dropped == 23 and processor._reported_drops == 0
    reports = [r for r in logs.records if "could not report" in r.getMessage()]
    assert len(reports) == 1  # said once, not at every flush
    disk.ok()
    processor.force_flush()  # space is back: reported now
    assert processor._reported_drops == 23
    processor.force_flush()  # and only once
    result = Ingester(tmp_path / "w.duckdb", spool_dir).ingest()
    assert result.spans == 1  # the drops report itself
    wh = genopt.Warehouse(tmp_path / "w.duckdb", spool_dir=spool_dir, ingest=False)
    assert wh.sql("SELECT sum(dropped) AS n FROM span_drops") == [{"n": 23}]


def test_an_exporter_that_raises_is_counted_without_a_traceback(
    logs: pytest.LogCaptureFixture,
) -> None:
    class Broken(SpoolSpanExporter):
        def export(self, spans: object) -> object:
            raise RuntimeError("collector went away")

    run = f"run-{uuid.uuid4().hex[:6]}"
    processor = ExportSpanProcessor(Broken())
    tracer = _provider(processor).get_tracer("t")
    for i in range(10):
        with tracer.start_as_current_span(f"s{i}", attributes={semconv.RUN_ID: run}):
            pass
    assert incidents.counts(run) == {"export_failed": 10}
    assert len(_genopt_warnings(logs)) == 1 and all(r.exc_info is None for r in logs.records)


def test_causes_by_errno() -> None:
    assert incidents.cause_of(spool.SpoolError(errno.ENOSPC, "full")) == "spool_full"
    assert incidents.cause_of(spool.SpoolError(errno.EROFS, "ro")) == "spool_read_only"
    assert incidents.cause_of(spool.SpoolError(errno.EIO, "io")) == "spool_error"
    assert incidents.cause_of(FeedbackError("nan")) == "bad_feedback"


# -- outside a flow: the Python API raises, clearly -------------------------------------------


def test_feedback_outside_a_flow_raises_a_clear_error(
    warehouse_path: Path, disk: InjectedDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_CHECK_RUNS_WITH_PREFECT", "false")
    disk.full()
    with pytest.raises(spool.SpoolError, match="cannot write the spool .*: the disk is full"):
        genopt.feedback("csat", 4.0, run_id=_RUN)
    disk.ok()
    with pytest.raises(FeedbackError, match="finite number"):
        genopt.feedback("csat", math.nan, run_id=_RUN)
    with pytest.raises(FeedbackError, match="KPI name"):
        genopt.feedback("", 1.0, run_id=_RUN)


# -- inside a real flow -------------------------------------------------------------------


@genopt.task
def double(x: int) -> int:
    return 2 * x


def _full_disk_pipeline(name: str, disk: InjectedDisk, error: int) -> object:
    @flow
    @genopt.pipeline(name=name)
    def full_disk(n: int) -> int:
        total = sum(double(i) for i in range(n))
        processor = get_processor()
        if processor is not None:
            processor.force_flush()  # the first tasks are stored
        disk.error = error  # the disk fills up (or turns read-only) mid-run
        total += sum(double(i) for i in range(n))
        genopt.feedback("accuracy", 0.9)
        genopt.feedback("accuracy", 0.8, item_key="ticket-1")
        genopt.feedback("accuracy", math.nan, item_key="ticket-2")  # a bad value, too
        genopt.feedback("  ", 1.0)
        if processor is not None:
            processor.force_flush()  # the queued task spans meet the full disk now
        disk.ok()  # space returns before the run ends
        return total

    return full_disk


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize(
    ("error", "cause"), [(errno.ENOSPC, "spool_full"), (errno.EROFS, "spool_read_only")]
)
def test_a_flow_stays_green_with_a_full_or_read_only_spool(
    warehouse_path: Path,
    disk: InjectedDisk,
    logs: pytest.LogCaptureFixture,
    error: int,
    cause: str,
) -> None:
    name = f"full-disk-{uuid.uuid4().hex[:6]}"
    pipe = _full_disk_pipeline(name, disk, error)
    state = pipe(5, return_state=True)  # type: ignore[operator]
    assert state.is_completed(), state
    assert state.result() == 40  # the flow's own result, untouched

    warnings = _genopt_warnings(logs)
    messages = [w.getMessage() for w in warnings]
    by_cause = {m.split(" in run ")[0] for m in messages if " in run " in m}
    assert len(warnings) == 2, [w.getMessage() for w in warnings]  # one line per cause per run
    assert by_cause == {
        f"genopt: {incidents.CAUSES[cause]}",
        f"genopt: {incidents.CAUSES['bad_feedback']}",
    }
    assert all(r.exc_info is None for r in logs.records if r.name.startswith("prefect_genopt"))

    wh = genopt.Warehouse()
    [run] = wh.sql("SELECT status, genopt_errors FROM runs WHERE pipeline = ?", [name])
    assert run["status"] == "completed"
    errors = run["genopt_errors"]
    errors = errors if isinstance(errors, dict) else json.loads(errors)
    # 5 task spans and 2 feedback records lost to the disk; 2 bad feedback values refused
    assert errors["bad_feedback"] == 2 and errors[cause] >= 7, errors
    assert wh.sql("SELECT count(*) AS n FROM feedback") == [{"n": 0}]
    assert wh.sql("SELECT count(*) AS n FROM spans WHERE task_name IS NOT NULL") == [{"n": 5}]
    # the lost spans were reported once space returned
    assert wh.sql("SELECT sum(dropped) AS n FROM span_drops")[0]["n"] >= 5
    status = warehouse_status(genopt.Warehouse(ingest=False))
    assert status.runs_with_genopt_errors == 1
    assert status.genopt_errors["bad_feedback"] == 2 and status.genopt_errors[cause] >= 7
    assert f"genopt errors in 1 run(s) (the flows went on): {cause}" in _status_text()


def _status_text() -> str:
    """What ``genopt status`` prints."""
    import contextlib
    import io

    from prefect_genopt.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status"]) == 0
    return out.getvalue()


@pytest.mark.usefixtures("prefect_api")
def test_nan_feedback_in_code_keeps_the_flow_green_and_is_counted(
    warehouse_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    name = f"nan-{uuid.uuid4().hex[:6]}"

    @flow
    @genopt.pipeline(name=name)
    def scored() -> str:
        returned = genopt.feedback("accuracy", math.nan)
        genopt.feedback("accuracy", math.inf)
        genopt.feedback("accuracy", 1.0)  # a good one still counts
        return returned or "refused"

    assert scored() == "refused"
    wh = genopt.Warehouse()
    [run] = wh.sql(
        "SELECT status, genopt_errors::VARCHAR AS e FROM runs WHERE pipeline = ?", [name]
    )
    assert run == {"status": "completed", "e": '{"bad_feedback":2}'}
    assert wh.sql("SELECT value FROM feedback") == [{"value": 1.0}]
    assert len([w for w in _genopt_warnings(logs) if "feedback was refused" in w.getMessage()]) == 1


@pytest.mark.usefixtures("prefect_api")
def test_strict_mode_raises_inside_the_flow(
    warehouse_path: Path, disk: InjectedDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_STRICT", "1")

    @flow
    @genopt.pipeline(name=f"strict-{uuid.uuid4().hex[:6]}")
    def strict_nan() -> None:
        genopt.feedback("accuracy", math.nan)

    with pytest.raises(FeedbackError, match="finite number"):
        strict_nan()

    @flow
    @genopt.pipeline(name=f"strict-{uuid.uuid4().hex[:6]}")
    def strict_full() -> None:
        disk.full()
        try:
            genopt.feedback("accuracy", 1.0)
        finally:
            disk.ok()

    with pytest.raises(spool.SpoolError, match="the disk is full"):
        strict_full()

"""Feedback: validation, idempotency, pending until the run arrives, unknown runs."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pytest
from prefect import flow

import prefect_genopt as genopt
from prefect_genopt.feedback import FeedbackError, UnknownRunError, build_record

_RUN = "8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "abc", True])
def test_bad_values_are_refused(value: object) -> None:
    with pytest.raises(FeedbackError):
        build_record("accuracy", value, run_id=_RUN, verify=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("kpi", ["", "   ", None, "x" * 201])
def test_bad_kpi_names_are_refused(kpi: object) -> None:
    with pytest.raises(FeedbackError, match="KPI name"):
        build_record(kpi, 1.0, run_id=_RUN, verify=False)  # type: ignore[arg-type]


def test_empty_feedback_and_oversized_comment_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(FeedbackError, match="needs a value, a comment"):
        build_record("csat", None, run_id=_RUN, verify=False)
    monkeypatch.setenv("GENOPT_MAX_COMMENT_CHARS", "10")
    with pytest.raises(FeedbackError, match="limit is 10"):
        build_record("csat", 1, comment="x" * 11, run_id=_RUN, verify=False)


def test_bad_run_id_and_outside_run() -> None:
    with pytest.raises(FeedbackError, match="not a Prefect flow-run id"):
        build_record("csat", 1, run_id="run-42", verify=False)
    with pytest.raises(FeedbackError, match="needs run_id"):
        build_record("csat", 1)


def test_text_only_feedback_and_redacted_comment() -> None:
    rec = build_record("review", comment="slow; token: abcdef123456", run_id=_RUN, verify=False)
    assert rec["value"] is None
    assert "abcdef123456" not in rec["comment"]


@pytest.mark.usefixtures("prefect_api")
def test_in_flow_feedback_is_idempotent_across_retries(warehouse_path: Path) -> None:
    attempts: list[int] = []

    @flow(retries=1, retry_delay_seconds=0)
    @genopt.pipeline(name="flaky")
    def flaky() -> None:
        attempts.append(1)
        genopt.feedback("quality", float(len(attempts)))
        genopt.feedback("quality", 5.0, item_key="a")
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    flaky()
    assert len(attempts) == 2
    wh = genopt.Warehouse()
    rows = wh.sql("SELECT item_key, value FROM feedback ORDER BY item_key NULLS FIRST")
    # one row per (kpi, item, source) for the run, whatever the retries
    assert rows == [{"item_key": None, "value": 1.0}, {"item_key": "a", "value": 5.0}]
    assert wh.sql("SELECT status FROM runs")[0]["status"] == "completed"


@pytest.mark.usefixtures("prefect_api")
def test_feedback_after_the_run_and_explicit_keys(warehouse_path: Path) -> None:
    @flow
    @genopt.pipeline(name="later")
    def later() -> str:
        from prefect.context import FlowRunContext

        return str(FlowRunContext.get().flow_run.id)

    run_id = later()
    genopt.Warehouse().ingest()
    genopt.feedback("csat", 4, run_id=run_id, source="human", idempotency_key="ticket-9")
    genopt.feedback("csat", 2, run_id=run_id, source="human", idempotency_key="ticket-9")
    genopt.feedback("csat", 3, run_id=run_id, source="human")
    genopt.feedback("csat", 3, run_id=run_id, source="human")
    rows = genopt.Warehouse().sql("SELECT value, source FROM feedback ORDER BY value")
    assert [r["value"] for r in rows] == [3.0, 3.0, 4.0]  # keyed pair stored once, first wins
    assert {r["source"] for r in rows} == {"human"}


@pytest.mark.usefixtures("prefect_api")
def test_unknown_run_is_refused(warehouse_path: Path) -> None:
    with pytest.raises(UnknownRunError, match="no flow run"):
        genopt.feedback("csat", 4, run_id=str(uuid.uuid4()))


@pytest.mark.usefixtures("prefect_api")
def test_feedback_waits_until_its_run_arrives(warehouse_path: Path, tmp_path: Path) -> None:
    """The run exists in Prefect but its spans are still in another spool."""
    from prefect_genopt import spool

    @flow
    @genopt.pipeline(name="elsewhere")
    def elsewhere() -> str:
        from prefect.context import FlowRunContext

        return str(FlowRunContext.get().flow_run.id)

    # Run the flow with its spans going to a different spool (another machine, say).
    other = tmp_path / "other.spool"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENOPT_SPOOL", str(other))
        run_id = elsewhere()
    spool.close_all()

    genopt.feedback("csat", 5, run_id=run_id, comment="great")
    wh = genopt.Warehouse()
    assert wh.sql("SELECT count(*) AS n FROM feedback")[0]["n"] == 0
    pending = wh.sql("SELECT run_id, verified FROM pending_feedback")
    assert pending == [{"run_id": run_id, "verified": True}]

    # the run's spool arrives: the pending feedback attaches to it, exactly once
    for f in other.iterdir():
        f.rename(warehouse_path.with_name(warehouse_path.name + ".spool") / f.name)
    genopt.Warehouse().ingest()
    wh = genopt.Warehouse()
    assert wh.sql("SELECT count(*) AS n FROM pending_feedback")[0]["n"] == 0
    fb = wh.sql("SELECT run_id, pipeline, value FROM feedback")
    assert fb == [{"run_id": run_id, "pipeline": "elsewhere", "value": 5.0}]

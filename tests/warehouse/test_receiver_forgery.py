"""Feedback over HTTP is not believed on who it counts for (issue 15, item 1): the arm, param
set, pipeline, verified flag and id a body sends are ignored and counted, derived at ingest
from the stored run and its item spans; a forged run start and feedback do not decide a
canary."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import prefect_genopt as genopt
from prefect_genopt.cli import main
from prefect_genopt.feedback import feedback_id
from prefect_genopt.warehouse.receiver import Receiver
from tests.warehouse.test_receiver import JSON, PROTOBUF, request, wait_until

PIPELINE = "forge"


def run_spans(
    run_id: str,
    *,
    start: bool = True,
    items: dict[str, tuple[str, str]] | None = None,
    end: bool = False,
    pipeline: str = PIPELINE,
    arm: str = "stable",
    param_set_id: str = "ps_stable",
) -> bytes:
    """An OTLP protobuf body with a run's start, item task spans and end, as genopt sends."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("prefect_genopt")
    run = {
        "genopt.run_id": run_id,
        "genopt.pipeline": pipeline,
        "genopt.param_set_id": param_set_id,
        "genopt.arm": arm,
    }
    if start:
        with tracer.start_as_current_span("genopt.run.start", attributes=run):
            pass
    for key, (item_arm, item_ps) in (items or {}).items():
        attrs = {
            **run,
            "prefect.run.type": "task",
            "genopt.item_key": key,
            "genopt.arm": item_arm,
            "genopt.param_set_id": item_ps,
        }
        with tracer.start_as_current_span(f"work-{key}", attributes=attrs):
            pass
    if end:
        with tracer.start_as_current_span(
            "genopt.run.end", attributes={**run, "genopt.status": "completed"}
        ):
            pass
    return encode_spans(exporter.get_finished_spans()).SerializeToString()


def post(rx: Receiver, path: str, body: Any) -> int:
    if path == "/v1/traces":
        status, _, _ = request(rx.url, "POST", path, body, {"Content-Type": PROTOBUF})
    else:
        status, _, _ = request(rx.url, "POST", path, orjson.dumps(body), {"Content-Type": JSON})
    return status


def fb(run_id: str, kpi: str, value: float, **fields: Any) -> dict[str, Any]:
    return {
        "k": "feedback",
        "feedback_id": uuid.uuid4().hex,
        "run_id": run_id,
        "kpi": kpi,
        "value": value,
        **fields,
    }


def test_forged_fields_are_ignored_counted_and_derived_at_ingest(
    warehouse_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = str(uuid.uuid4())
    forged = {
        "arm": "canary",
        "param_set_id": "ps_canary",
        "pipeline": "someone-else",
        "verified": True,
    }
    with Receiver(port=0, warehouse=warehouse_path, ingest_interval=60) as rx:
        items = {"a": ("stable", "ps_stable"), "b": ("canary", "ps_canary")}
        assert post(rx, "/v1/traces", run_spans(run_id, items=items, end=True)) == 200
        body = [
            fb(run_id, "ok", 1.0, item_key="a", idempotency_key="ok|a", **forged),
            fb(run_id, "ok", 0.0, item_key="b", idempotency_key="ok|b", arm="stable"),
            fb(run_id, "rate", 0.5, idempotency_key="rate", **forged),
            fb(run_id, "csat", 4.0, feedback_id="no-key-given"),
        ]
        assert post(rx, "/v1/genopt/feedback", body) == 200
        # 4 forged fields twice, one arm, three ids that do not match their run and key
        assert rx.stats["ignored_fields"] == 4 + 1 + 4 + 3
    rows = genopt.Warehouse(warehouse_path, ingest=False).sql(
        "SELECT feedback_id, kpi, item_key, pipeline, arm, param_set_id, verified, "
        "idempotency_key FROM feedback ORDER BY kpi, item_key"
    )
    assert [(r["kpi"], r["item_key"], r["arm"], r["param_set_id"]) for r in rows] == [
        ("csat", None, "mixed", None),  # a run-level value of a run split between arms
        ("ok", "a", "stable", "ps_stable"),  # the item's own arm, as its span recorded it
        ("ok", "b", "canary", "ps_canary"),
        ("rate", None, "mixed", None),
    ]
    assert {r["pipeline"] for r in rows} == {PIPELINE}
    assert all(r["verified"] for r in rows)  # its run is stored
    for r in rows:
        assert r["feedback_id"] == feedback_id(run_id, r["idempotency_key"])
    assert rows[0]["idempotency_key"] == "no-key-given"  # a body's id, used as its key

    # visible where an operator looks: genopt status, and the table behind it
    assert main(["--warehouse", str(warehouse_path), "status", "--quick"]) == 0
    assert "receiver_ignored_fields: 12" in capsys.readouterr().out
    [report] = genopt.Warehouse(warehouse_path, ingest=False).sql(
        "SELECT records, ignored, fields FROM receiver_ignored_fields"
    )
    assert (report["records"], report["ignored"]) == (4, 12)
    assert orjson.loads(report["fields"]) == {
        "arm": 3,
        "param_set_id": 2,
        "pipeline": 2,
        "verified": 2,
        "feedback_id": 3,
    }


def test_received_feedback_waits_until_its_arm_can_be_known(warehouse_path: Path) -> None:
    """While the run is running, an item's value attaches once its item's spans are in; a
    run-level value waits for the run's end (its items may still go to either arm)."""
    run_id = str(uuid.uuid4())
    with Receiver(port=0, warehouse=warehouse_path, ingest_interval=60) as rx:
        wait_until(lambda: rx.last_ingest is not None)  # the loop's first pass; next in 60 s
        assert post(rx, "/v1/traces", run_spans(run_id, items={"a": ("canary", "ps_c")})) == 200
        body = [
            fb(run_id, "ok", 1.0, item_key="a"),
            fb(run_id, "ok", 1.0, item_key="c"),  # its span is still on its way
            fb(run_id, "rate", 1.0),
        ]
        assert post(rx, "/v1/genopt/feedback", body) == 200
        first = rx.ingest_now()
        assert (first.feedback, first.pending) == (1, 2)
        later = run_spans(run_id, start=False, items={"c": ("canary", "ps_c")}, end=True)
        assert post(rx, "/v1/traces", later) == 200
        second = rx.ingest_now()
        assert (second.feedback, second.pending) == (2, 0)
    rows = genopt.Warehouse(warehouse_path, ingest=False).sql(
        "SELECT kpi, item_key, arm, param_set_id FROM feedback ORDER BY kpi, item_key"
    )
    assert rows == [
        {"kpi": "ok", "item_key": "a", "arm": "canary", "param_set_id": "ps_c"},
        {"kpi": "ok", "item_key": "c", "arm": "canary", "param_set_id": "ps_c"},
        # every item of the run went to the canary: the run-level value is the canary's,
        # although the run itself was drawn on stable
        {"kpi": "rate", "item_key": None, "arm": "canary", "param_set_id": "ps_c"},
    ]


@pytest.mark.usefixtures("prefect_api")
def test_a_forged_run_and_feedback_do_not_decide_a_canary(
    pipeline_name: str, warehouse_path: Path
) -> None:
    """The drill of issue 15: 1 forged genopt.run.start span and 2 feedback POSTs made
    `rollout analyze` promote a candidate in 2 checks."""
    from prefect_genopt.rollout import FAST_PLAN, controller
    from tests.rollout.pipelines import KnobParams, make_pipeline

    knob = make_pipeline(pipeline_name)
    knob(n=10, batch=0)  # the stable param set is known
    state = controller.start_rollout(
        pipeline_name,
        values={"quality": 0.9},
        plan={**FAST_PLAN, "kpi": "ok"},
        reason="test",
        gate=False,  # the canary alone decides here
    )
    stable, canary = KnobParams().param_set_id, KnobParams(quality=0.9).param_set_id
    assert (state.stable, state.canary) == (stable, canary)
    time.sleep(0.01)  # the forged values come after the rollout's start

    def forge(rx: Receiver) -> list[int]:
        run_id = str(uuid.uuid4())
        span = run_spans(run_id, pipeline=pipeline_name, arm="canary", param_set_id=canary)
        statuses = [post(rx, "/v1/traces", span)]
        for arm, ps, value in (("canary", canary, 1.0), ("stable", stable, 0.0)):
            body = [
                fb(
                    run_id,
                    "ok",
                    value,
                    item_key=f"{arm}-{i}",
                    arm=arm,
                    param_set_id=ps,
                    pipeline=pipeline_name,
                    verified=True,
                )
                for i in range(200)
            ]
            statuses.append(post(rx, "/v1/genopt/feedback", body))
        return statuses

    token = "tok-" + "a1b2" * 8
    with Receiver(port=0, warehouse=warehouse_path, ingest_interval=60, token=token) as rx:
        assert forge(rx) == [401, 401, 401]  # who cannot show the token is not heard
    with Receiver(port=0, warehouse=warehouse_path, ingest_interval=60) as rx:
        assert forge(rx) == [200, 200, 200]  # an open receiver takes them, but ...
        assert rx.stats["ignored_fields"] == 400 * 4

    decisions = [controller.analyze(pipeline_name).decision.kind for _ in range(2)]
    # believed, these fields advanced the canary at the first check (and promoted it at the
    # next step's): here nothing moves
    assert not {"advance", "promote"} & set(decisions), decisions
    wh = genopt.Warehouse(warehouse_path)
    # ... the forged values counted for no arm: their run has not ended, and no item
    # span ever said which arm an item went to
    assert wh.sql(
        "SELECT count(*) AS n FROM feedback WHERE pipeline = ? AND item_key LIKE 'canary-%'",
        [pipeline_name],
    ) == [{"n": 0}]
    assert controller.get_state(pipeline_name).canary == canary

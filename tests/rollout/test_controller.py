"""The controller with real flows, a real Prefect API and a real warehouse.

Each test uses its own pipeline name (the Prefect API is shared by the session).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

import prefect_genopt as genopt
from prefect_genopt.rollout import FAST_PLAN, controller, store
from prefect_genopt.rollout.plan import RolloutPlan
from tests.rollout.pipelines import KnobParams, make_pipeline

PLAN = {**FAST_PLAN, "kpi": "ok"}


def _run_until_verdict(knob: Any, first_batch: int, max_runs: int = 12) -> list[str]:
    decisions = []
    for batch in range(first_batch, first_batch + max_runs):
        knob(n=40, batch=batch)
        result = controller.analyze(knob.name)
        decisions.append(result.decision.kind)
        if result.decision.kind in ("promote", "abort", "pause"):
            break
    return decisions


def test_a_better_candidate_is_promoted_and_every_row_says_which_arm(
    pipeline_name: str, warehouse_path: Path
) -> None:
    knob = make_pipeline(pipeline_name)
    knob(n=40, batch=0)  # a stable run, so the stable param set is known
    state = controller.start_rollout(
        pipeline_name, values={"quality": 1.0}, plan=PLAN, reason="hand-tuned", gate=False
    )
    assert (state.status, state.weight, state.revision) == ("running", 0.3, 1)
    decisions = _run_until_verdict(knob, 1)
    assert decisions[-1] == "promote", decisions
    assert "advance" in decisions
    final = controller.get_state(pipeline_name)
    canary_id = KnobParams(quality=1.0).param_set_id
    assert (final.status, final.stable, final.canary, final.weight) == ("idle", canary_id, None, 0)
    assert final.last_outcome == "promoted"

    wh = genopt.Warehouse()
    # items split within runs: per-item feedback and task spans carry the item's arm
    arms = wh.sql(
        "SELECT arm, param_set_id, count(*) AS n FROM feedback WHERE kpi = 'ok' "
        "GROUP BY ALL ORDER BY arm"
    )
    by_arm = {r["arm"]: r for r in arms}
    assert by_arm["canary"]["param_set_id"] == canary_id
    assert by_arm["stable"]["param_set_id"] == KnobParams().param_set_id
    spans = wh.sql(
        "SELECT s.arm, s.param_set_id, f.arm AS f_arm, f.param_set_id AS f_ps FROM spans s "
        "JOIN feedback f ON f.run_id = s.run_id AND f.item_key = s.item_key AND f.kpi = 'ok' "
        "WHERE s.run_type = 'task'"
    )
    bad = [r for r in spans if (r["arm"], r["param_set_id"]) != (r["f_arm"], r["f_ps"])]
    assert spans and not bad, bad[:5]
    mixed = wh.sql("SELECT DISTINCT arm FROM feedback WHERE kpi = 'ok_rate'")
    assert {r["arm"] for r in mixed} >= {"mixed"}
    # the history: one rollout, its events in order, one analysis row per check
    (ro,) = wh.sql("SELECT * FROM rollouts WHERE pipeline = ?", [pipeline_name])
    assert (ro["status"], ro["canary_param_set_id"]) == ("promoted", canary_id)
    kinds = [
        r["kind"]
        for r in wh.sql(
            "SELECT kind FROM rollout_events WHERE pipeline = ? ORDER BY created_at",
            [pipeline_name],
        )
    ]
    assert kinds[0] == "started" and kinds[-1] == "promote" and "advance" in kinds
    checks = wh.sql(
        "SELECT decision FROM rollout_analyses WHERE pipeline = ? ORDER BY created_at",
        [pipeline_name],
    )
    assert [c["decision"] for c in checks] == decisions
    # after promotion every run uses the new stable param set
    knob(n=10, batch=99)
    last = genopt.Warehouse().sql(
        "SELECT param_set_id, arm FROM runs WHERE pipeline = ? ORDER BY start_time DESC LIMIT 1",
        [pipeline_name],
    )[0]
    assert (last["param_set_id"], last["arm"]) == (canary_id, "stable")


def test_a_worse_candidate_is_rolled_back_at_the_failure_limit(
    pipeline_name: str, warehouse_path: Path
) -> None:
    knob = make_pipeline(pipeline_name)
    knob(n=40, batch=0)
    controller.start_rollout(pipeline_name, values={"quality": 0.1}, plan=PLAN, gate=False)
    decisions = _run_until_verdict(knob, 1)
    assert decisions[-1] == "abort", decisions
    state = controller.get_state(pipeline_name)
    assert (state.status, state.canary, state.stable) == ("idle", None, KnobParams().param_set_id)
    wh = genopt.Warehouse()
    (last,) = wh.sql(
        "SELECT verdict, reason, failed_checks FROM rollout_analyses WHERE pipeline = ? "
        "ORDER BY created_at DESC LIMIT 1",
        [pipeline_name],
    )
    assert last["verdict"] == "fail" and last["failed_checks"] == 1
    assert "abort on failed check 1 of 1" in last["reason"]
    # the stable param set was never edited: runs after the rollback are all stable
    knob(n=10, batch=50)
    assert genopt.Warehouse().sql(
        "SELECT DISTINCT arm FROM feedback WHERE kpi = 'ok' AND item_key LIKE 'item-50-%'"
    ) == [{"arm": "stable"}]


def test_manual_verbs_one_rollout_at_a_time_and_pin(
    pipeline_name: str, warehouse_path: Path
) -> None:
    knob = make_pipeline(pipeline_name)
    knob(n=5, batch=0)
    controller.start_rollout(
        pipeline_name, values={"quality": 0.9}, plan=PLAN, actor="ana", gate=False
    )
    with pytest.raises(controller.RolloutError, match="already running"):
        controller.start_rollout(pipeline_name, values={"quality": 0.7}, plan=PLAN, gate=False)
    with pytest.raises(controller.RolloutError, match="give a reason"):
        controller.pause(pipeline_name, "")
    assert controller.pause(pipeline_name, "holiday", actor="ana").status == "paused"
    with pytest.raises(controller.RolloutError, match="cannot pause"):
        controller.pause(pipeline_name, "again")
    # a paused rollout is measured, not acted on
    knob(n=40, batch=1)
    assert controller.analyze(pipeline_name).decision.kind == "none"
    assert controller.resume(pipeline_name, "back", actor="bo").status == "running"
    # the kill switch: every item on one param set, whatever the rollout says
    stable_id = KnobParams().param_set_id
    assert controller.pin(pipeline_name, stable_id, "incident 42").pinned == stable_id
    knob(n=20, batch=2)
    wh = genopt.Warehouse()
    assert wh.sql(
        "SELECT DISTINCT arm, param_set_id FROM feedback "
        "WHERE kpi = 'ok' AND item_key LIKE 'item-2-%'"
    ) == [{"arm": "pinned", "param_set_id": stable_id}]
    assert controller.unpin(pipeline_name, "resolved").pinned is None
    state = controller.abort(pipeline_name, "changed our mind", actor="bo")
    assert (state.status, state.last_outcome) == ("idle", "aborted")
    with pytest.raises(controller.RolloutError, match="cannot abort"):
        controller.abort(pipeline_name, "twice")
    events = genopt.Warehouse().sql(
        "SELECT kind, actor, reason FROM rollout_events WHERE pipeline = ? ORDER BY created_at",
        [pipeline_name],
    )
    assert [e["kind"] for e in events] == [
        "started",
        "pause",
        "resume",
        "pin",
        "unpin",
        "abort",
    ]
    assert events[1]["actor"] == "ana" and "holiday" in events[1]["reason"]


def test_start_refuses_bad_input(pipeline_name: str, warehouse_path: Path) -> None:
    knob = make_pipeline(pipeline_name)
    with pytest.raises(controller.RolloutError, match="run it once"):
        controller.start_rollout(pipeline_name, values={"quality": 0.9}, plan=PLAN, gate=False)
    knob(n=3, batch=0)
    with pytest.raises(controller.RolloutError, match="unknown param"):
        controller.start_rollout(pipeline_name, values={"qualty": 0.9}, plan=PLAN, gate=False)
    with pytest.raises(controller.RolloutError, match="quality"):
        controller.start_rollout(pipeline_name, values={"quality": 7}, plan=PLAN, gate=False)
    with pytest.raises(controller.RolloutError, match="needs a KPI"):
        controller.start_rollout(pipeline_name, values={"quality": 0.9}, gate=False)
    with pytest.raises(controller.RolloutError, match="stable param set already"):
        controller.start_rollout(pipeline_name, values={"quality": 0.8}, plan=PLAN, gate=False)
    with pytest.raises(controller.RolloutError, match="exactly one"):
        controller.start_rollout(pipeline_name, plan=PLAN, gate=False)
    assert controller.get_state(pipeline_name).status == "idle"


def test_the_same_check_twice_does_not_advance_twice(
    pipeline_name: str, warehouse_path: Path
) -> None:
    knob = make_pipeline(pipeline_name)
    knob(n=40, batch=0)
    controller.start_rollout(pipeline_name, values={"quality": 1.0}, plan=PLAN, gate=False)
    knob(n=40, batch=1)
    knob(n=40, batch=2)
    first = controller.analyze(pipeline_name)
    second = controller.analyze(pipeline_name)
    assert first.decision.kind == "advance", first.decision
    assert (second.decision.kind, second.applied) == ("wait", False)
    assert controller.get_state(pipeline_name).step == 1


def test_overlapping_analyses_are_serialized(pipeline_name: str, warehouse_path: Path) -> None:
    knob = make_pipeline(pipeline_name)
    knob(n=40, batch=0)
    controller.start_rollout(pipeline_name, values={"quality": 1.0}, plan=PLAN, gate=False)
    knob(n=40, batch=1)
    knob(n=40, batch=2)
    results: list[Any] = []
    errors: list[BaseException] = []

    def check() -> None:
        try:
            results.append(controller.analyze(pipeline_name))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=check) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    kinds = sorted(r.decision.kind for r in results)
    assert kinds == ["advance", "wait"], [r.decision for r in results]
    state = controller.get_state(pipeline_name)
    assert (state.step, state.revision) == (1, 2)


def test_a_stale_decision_is_dropped(pipeline_name: str, warehouse_path: Path) -> None:
    knob = make_pipeline(pipeline_name)
    knob(n=5, batch=0)
    state = controller.start_rollout(pipeline_name, values={"quality": 0.9}, plan=PLAN, gate=False)
    controller.pause(pipeline_name, "someone else acted")
    with pytest.raises(store.StaleStateError, match="revision 2, expected 1"):
        store.write_state(state.bump("now", weight=0.5), expected_revision=state.revision)
    assert controller.get_state(pipeline_name).status == "paused"


def test_rollout_events_are_readable_from_the_prefect_api(
    pipeline_name: str, warehouse_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    knob = make_pipeline(pipeline_name)
    knob(n=5, batch=0)
    controller.start_rollout(pipeline_name, values={"quality": 0.9}, plan=PLAN, gate=False)
    controller.abort(pipeline_name, "test over")
    flt = EventFilter(
        event=EventNameFilter(prefix=["genopt.rollout."]),
        resource=EventResourceFilter(id=[f"genopt.pipeline.{pipeline_name}"]),
    )
    names: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=flt, limit=50)  # the server allows 50 at most
        names = sorted(e.event for e in page.events)
        if len(names) >= 2:
            break
        time.sleep(1)
    # aborted before any canary value: the rollout ends withdrawn (see test_withdraw...)
    assert names == ["genopt.rollout.started", "genopt.rollout.withdrawn"]
    (withdrawn,) = [e for e in page.events if e.event.endswith("withdrawn")]
    assert "test over" in withdrawn.payload["reason"]


def test_the_plan_is_recorded_with_the_rollout(pipeline_name: str, warehouse_path: Path) -> None:
    knob = make_pipeline(pipeline_name)
    knob(n=3, batch=0)
    plan = RolloutPlan(kpi="ok", steps=[5, 20, 100], min_sample_per_arm=30)
    controller.start_rollout(pipeline_name, values={"quality": 0.85}, plan=plan, gate=False)
    (row,) = genopt.Warehouse().sql("SELECT plan FROM rollouts WHERE pipeline = ?", [pipeline_name])
    recorded = orjson.loads(row["plan"])
    assert recorded["steps"] == [0.05, 0.2] and recorded["min_sample_per_arm"] == 30
    assert controller.get_state(pipeline_name).weight == 0.05


def test_feedback_given_later_for_an_item_gets_the_items_arm(
    pipeline_name: str, warehouse_path: Path
) -> None:
    knob = make_pipeline(pipeline_name)
    knob(n=5, batch=0)
    controller.start_rollout(pipeline_name, values={"quality": 0.9}, plan=PLAN, gate=False)
    knob(n=30, batch=1)
    wh = genopt.Warehouse()
    in_run = wh.sql(
        "SELECT run_id, item_key, arm, param_set_id FROM feedback WHERE kpi = 'ok' "
        "AND item_key LIKE 'item-1-%' ORDER BY item_key"
    )
    assert {r["arm"] for r in in_run} == {"stable", "canary"}
    for r in in_run:  # a person rates each item a day later, from outside the run
        genopt.feedback("csat", 4, run_id=r["run_id"], item_key=r["item_key"], source="human")
    later = genopt.Warehouse().sql(
        "SELECT item_key, arm, param_set_id FROM feedback WHERE kpi = 'csat' ORDER BY item_key"
    )
    assert [(r["item_key"], r["arm"], r["param_set_id"]) for r in later] == [
        (r["item_key"], r["arm"], r["param_set_id"]) for r in in_run
    ]

"""Rollouts that can decide (issue 15, item 7): KPI refusals at start, the arm of a
run-level value, a gate that cannot run, and a rollout withdrawn before any canary value."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

import prefect_genopt as genopt
from prefect_genopt.cli import main
from prefect_genopt.proposals import get_proposal, record_proposal
from prefect_genopt.rollout import FAST_PLAN, controller
from tests.rollout.pipelines import KnobParams, make_pipeline

PLAN = {**FAST_PLAN, "kpi": "ok"}


def make_whole_run_pipeline(name: str) -> Any:
    """A pipeline whose runs are routed whole (no item keys), with a run-level KPI."""

    @flow(name=name)
    @genopt.pipeline(name=name, params=KnobParams)
    def whole(batch: int = 0) -> float:
        quality = genopt.current_params().quality
        genopt.feedback("rate", quality)
        return quality

    return whole


def test_start_refuses_a_kpi_the_pipeline_never_emitted(
    pipeline_name: str, warehouse_path: Path
) -> None:
    make_pipeline(pipeline_name)(n=5, batch=0)
    plan = {**PLAN, "kpi": "correct"}
    with pytest.raises(controller.RolloutError, match="has not emitted the KPI 'correct'") as exc:
        controller.start_rollout(pipeline_name, values={"quality": 0.9}, plan=plan, gate=False)
    assert "(the KPIs with values there: ok, ok_rate)" in str(exc.value)
    assert "--allow-new-kpi" in str(exc.value)
    assert controller.get_state(pipeline_name).status == "idle"
    state = controller.start_rollout(
        pipeline_name, values={"quality": 0.9}, plan=plan, gate=False, allow_new_kpi=True
    )
    assert state.status == "running"
    controller.abort(pipeline_name, "test over")


def test_start_refuses_a_run_level_kpi_while_items_are_routed_one_by_one(
    pipeline_name: str, warehouse_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_pipeline(pipeline_name)(n=5, batch=0)
    args = ["rollout", "start", pipeline_name, "--params", '{"quality": 0.9}', "--no-gate"]
    assert main([*args, "--kpi", "ok_rate", "--steps", "10,50"]) == 2
    err = capsys.readouterr().err
    assert "the KPI 'ok_rate'" in err and "has only run-level values (no item_key)" in err
    assert "at a 10% canary weight almost no run has all its items on the canary" in err
    assert "--allow-run-kpi" in err
    assert main([*args, "--kpi", "nope"]) == 2
    assert "has not emitted the KPI 'nope'" in capsys.readouterr().err
    assert main([*args, "--kpi", "ok_rate", "--allow-run-kpi", "--fast"]) == 0
    assert controller.get_state(pipeline_name).status == "running"
    controller.abort(pipeline_name, "test over")


def test_a_run_level_kpi_of_runs_routed_whole_is_accepted(
    pipeline_name: str, warehouse_path: Path
) -> None:
    make_whole_run_pipeline(pipeline_name)(batch=0)
    plan = {**FAST_PLAN, "kpi": "rate"}
    state = controller.start_rollout(pipeline_name, values={"quality": 0.9}, plan=plan, gate=False)
    assert state.status == "running"
    controller.abort(pipeline_name, "test over")


def test_a_run_level_kpi_gets_the_arm_all_the_run_s_items_went_to(
    pipeline_name: str, warehouse_path: Path
) -> None:
    knob = make_pipeline(pipeline_name)
    knob(n=3, batch=0)
    controller.start_rollout(pipeline_name, values={"quality": 1.0}, plan=PLAN, gate=False)
    for batch in range(1, 21):
        knob(n=1, batch=batch)  # one item: all of the run's items are on one arm
    knob(n=40, batch=50)  # 40 items at 30%: both arms
    rows = genopt.Warehouse().sql(
        """
        SELECT r.arm AS run_arm, r.param_set_id AS run_ps, i.arms, i.ps
        FROM feedback r JOIN (
            SELECT run_id, list(DISTINCT arm) AS arms, list(DISTINCT param_set_id) AS ps
            FROM feedback WHERE kpi = 'ok' GROUP BY run_id
        ) i USING (run_id)
        WHERE r.kpi = 'ok_rate' AND r.pipeline = ?
          AND r.created_at >= (SELECT min(created_at) FROM rollouts WHERE pipeline = ?)
        """,
        [pipeline_name, pipeline_name],
    )
    assert len(rows) == 21
    whole = [r for r in rows if len(r["arms"]) == 1]
    split = [r for r in rows if len(r["arms"]) == 2]
    assert len(whole) == 20 and len(split) == 1
    for r in whole:
        assert (r["run_arm"], r["run_ps"]) == (r["arms"][0], r["ps"][0])
    assert {r["run_arm"] for r in whole} == {"stable", "canary"}  # 0.7^20 + 0.3^20: ~0.08%
    assert split[0]["run_arm"] == "mixed"  # neither arm counts it
    controller.abort(pipeline_name, "test over")


def _proposal(pipeline: str, values: dict[str, Any], kpi: str = "ok") -> str:
    wh = genopt.Warehouse()
    proposal_id = f"pr_test_{uuid.uuid4().hex[:8]}"
    candidate = KnobParams(**values)
    record_proposal(
        wh,
        {
            "proposal_id": proposal_id,
            "pipeline": pipeline,
            "status": "proposed",
            "kpi": kpi,
            "parent_param_set_id": KnobParams().param_set_id,
            "candidate_param_set_id": candidate.param_set_id,
            "evidence_run_ids": [],
        },
        candidate.values(),
        1,
    )
    wh.ingest()
    return proposal_id


def test_a_gate_that_cannot_run_exits_4_and_the_proposal_stays_proposed(
    pipeline_name: str, warehouse_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_pipeline(pipeline_name)(n=5, batch=0)  # made in a function: the gate cannot import it
    proposal_id = _proposal(pipeline_name, {"quality": 0.95})
    start = ["rollout", "start", pipeline_name, "--proposal", proposal_id, "--fast"]
    assert main(start) == 4
    err = capsys.readouterr().err
    assert err.startswith("genopt rollout: gate not run: ")
    assert "the replay gate could not run: cannot import the pipeline's entrypoint" in err
    assert "--no-gate" in err
    wh = genopt.Warehouse()
    assert get_proposal(wh, proposal_id)["status"] == "proposed"
    assert controller.get_state(pipeline_name).status == "idle"
    (gate,) = wh.sql("SELECT outcome FROM replay_gates WHERE pipeline = ?", [pipeline_name])
    assert gate["outcome"] == "skipped"
    # --no-gate: the canary is the only check
    assert main([*start, "--no-gate"]) == 0
    capsys.readouterr()
    assert get_proposal(genopt.Warehouse(), proposal_id)["status"] == "canary"
    controller.abort(pipeline_name, "test over")


def test_a_rollout_aborted_before_any_canary_value_returns_its_proposal(
    pipeline_name: str, warehouse_path: Path
) -> None:
    knob = make_pipeline(pipeline_name)
    knob(n=5, batch=0)
    proposal_id = _proposal(pipeline_name, {"quality": 0.95})
    controller.start_rollout(pipeline_name, proposal_id=proposal_id, plan=PLAN, gate=False)
    state = controller.abort(pipeline_name, "wrong plan", actor="ana")
    assert (state.status, state.last_outcome, state.last_decision) == (
        "idle",
        "withdrawn",
        "withdraw",
    )
    wh = genopt.Warehouse()
    prop = get_proposal(wh, proposal_id)
    assert prop["status"] == "proposed" and "before any canary value" in prop["status_reason"]
    (ro,) = wh.sql("SELECT status FROM rollouts WHERE pipeline = ?", [pipeline_name])
    assert ro["status"] == "withdrawn"
    assert not wh.sql("SELECT * FROM proposal_ratings WHERE proposal_id = ?", [proposal_id])
    # it can be tried again; aborted once its canary has values, it is rolled back
    controller.start_rollout(pipeline_name, proposal_id=proposal_id, plan=PLAN, gate=False)
    knob(n=30, batch=1)
    state = controller.abort(pipeline_name, "seen enough", actor="ana")
    assert (state.last_outcome, state.last_decision) == ("aborted", "abort")
    assert get_proposal(genopt.Warehouse(), proposal_id)["status"] == "rolled_back"

"""The GEPA and MIPROv2 peer arms of the BBH comparison (bench/bbh_peers.py) on a tiny
made-up split, with the harness's scripted ``--quick`` models: each returns its result
within the caps, and a cap of a few calls stops it cleanly with the best found so far."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from bench import bbh_peers
from bench.bbh_harness import START_INSTRUCTION, ArmContext, ArmResult, Example, Models, Split


def _split(task: str = "navigate", n_pool: int = 24) -> Split:
    rng = random.Random(7)

    def item(i: int) -> Example:
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        return Example(f"{task}-{i:03d}", f"Is {a} more than {b}?", "yes" if a > b else "no")

    return Split(test=[item(i) for i in range(4)], pool=[item(i) for i in range(4, 4 + n_pool)])


def _ctx(tmp_path: Path, task_cap: int, optimizer_cap: int, seed: int = 0) -> ArmContext:
    models = Models(tmp_path / "cache", quick=True)
    models.reset_counts()
    models.set_caps(task_cap, optimizer_cap)
    return ArmContext(
        task="navigate",
        seed=seed,
        split=_split(),
        models=models,
        work_dir=tmp_path / "work",
        progress=lambda msg: None,
        task_call_cap=task_cap,
        optimizer_call_cap=optimizer_cap,
        quick=True,
    )


def _within_caps(result: ArmResult, ctx: ArmContext) -> None:
    counts = ctx.models.counts()
    assert result.task_calls == counts["task_calls"] <= ctx.task_call_cap
    assert result.optimizer_calls == counts["optimizer_calls"] <= ctx.optimizer_call_cap
    assert result.cpu_s >= 0


def test_gepa_returns_its_best_candidate_within_the_caps(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, task_cap=120, optimizer_cap=4)
    result = bbh_peers.run_gepa(ctx)
    _within_caps(result, ctx)
    notes = result.notes
    assert notes["cap_reached"] is None  # its stoppers ended it before a cap
    assert notes["stopped_by"]
    assert (notes["train"], notes["val"]) == (12, 12)
    assert result.demos == []
    best = max(v["score"] for v in notes["validations"])
    assert notes["best_val_score"] == pytest.approx(best)
    assert result.optimizer_calls == notes["calls_by_stage"]["reflection"] > 0
    # the scripted optimizer numbers its drafts: a draft won unless the start stayed best
    if best > notes["start_val_score"]:
        assert result.instruction != START_INSTRUCTION


def test_gepa_stops_at_the_optimizer_cap_before_the_task_cap(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, task_cap=700, optimizer_cap=2)
    result = bbh_peers.run_gepa(ctx)
    _within_caps(result, ctx)
    assert result.optimizer_calls == 2
    assert "optimizer calls 2" in result.notes["stopped_by"]


def test_gepa_at_a_task_cap_of_a_few_calls_keeps_the_start(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, task_cap=5, optimizer_cap=12)
    result = bbh_peers.run_gepa(ctx)
    _within_caps(result, ctx)
    assert result.task_calls == 5
    assert result.instruction == START_INSTRUCTION
    assert "CapReached" in result.notes["cap_reached"]


def test_miprov2_returns_instruction_and_demos_within_the_caps(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, task_cap=150, optimizer_cap=12)
    result = bbh_peers.run_miprov2(ctx)
    _within_caps(result, ctx)
    notes = result.notes
    assert notes["cap_reached"] is None
    plan, stages = notes["trial_plan"], notes["calls_by_stage"]
    # the trial stage made exactly the calls planned for it, and bootstrapping the rest
    assert stages["trials_task"] == plan["planned_calls"] > 0
    assert stages["bootstrap_task"] + stages["trials_task"] == result.task_calls
    assert 0 < plan["trials"] <= plan["light_trials"]
    assert notes["task_predictions"] == result.task_calls  # one call per prediction
    assert result.optimizer_calls == stages["propose_optimizer"] <= 12
    assert 0 <= notes["best_val_score"] <= 1
    assert all(d.input and d.answer for d in result.demos)
    assert len(result.demos) == notes["demos"]


def test_miprov2_at_a_task_cap_of_a_few_calls_keeps_the_start(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, task_cap=6, optimizer_cap=12)
    result = bbh_peers.run_miprov2(ctx)
    _within_caps(result, ctx)
    assert (result.instruction, result.demos) == (START_INSTRUCTION, [])
    assert result.notes["trial_plan"]["trials"] == 0
    assert result.notes["cap_reached"]


def test_miprov2_at_an_optimizer_cap_of_a_few_calls_keeps_the_start(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, task_cap=150, optimizer_cap=2)
    result = bbh_peers.run_miprov2(ctx)
    _within_caps(result, ctx)
    assert result.optimizer_calls == 2
    assert (result.instruction, result.demos) == (START_INSTRUCTION, [])
    assert result.notes["cap_reached"]


def test_planned_trials_never_pass_the_budget() -> None:
    for budget in range(0, 800, 7):
        plan = bbh_peers.plan_mipro_trials(10, True, 35, 80, 5, budget)
        if plan is None:
            assert bbh_peers.mipro_trial_calls(1, True, 20, 80, 5) > budget
        else:
            assert bbh_peers.mipro_trial_calls(plan[0], True, plan[1], 80, 5) <= budget

"""The state machine, one check per call (Flagger's ``advanceCanary`` style)."""

from __future__ import annotations

import pytest

from prefect_genopt.rollout import state as sm
from prefect_genopt.rollout.analysis import ArmStats, Assessment
from prefect_genopt.rollout.plan import RolloutPlan

PLAN = RolloutPlan(
    kpi="ok",
    steps=[0.1, 0.5],
    min_sample_per_arm=10,
    step_min_samples=10,
    failure_limit=3,
    inconclusive_limit=3,
)


def started(plan: RolloutPlan = PLAN) -> sm.RoutingState:
    state, decision = sm.start(
        sm.RoutingState(pipeline="p", stable="ps_a"), "ro", "ps_b", plan, "t0"
    )
    assert decision.kind == "started"
    return state


def verdict(kind: str, n_stable: int, n_canary: int) -> Assessment:
    """An assessment with the given verdict and sample counts (the arms' sizes)."""
    return Assessment(
        kind, f"{kind} by design", ArmStats(n_stable, 0.8, 0.1), ArmStats(n_canary, 0.8, 0.1)
    )  # type: ignore[arg-type]


def tick(state: sm.RoutingState, kind: str, n: tuple[int, int]) -> tuple[sm.RoutingState, str]:
    new, decision = sm.decide(state, verdict(kind, *n), "t")
    return new, decision.kind


def test_the_last_step_needs_proof_and_enough_new_values() -> None:
    s = started()
    s, d = tick(s, "unproven", (50, 10))
    assert (d, s.step, s.weight, s.step_base) == ("advance", 1, 0.5, (50, 10))
    s, d = tick(s, "unproven", (70, 30))  # the last step: no harm seen is not enough
    assert (d, s.status, s.step) == ("continue", "running", 1)
    s = s.model_copy(update={"step_base": (70, 30)})
    s, d = tick(s, "pass", (75, 35))  # proven, but only 5 new canary values in the step
    assert d == "continue" and "needs 10 each" in (s.last_reason or "")
    s, d = tick(s, "pass", (80, 40))
    assert (d, s.status, s.stable, s.canary, s.weight) == ("promote", "idle", "ps_b", None, 0.0)
    assert (s.last_rollout_id, s.last_outcome, s.rollout_id) == ("ro", "promoted", None)


@pytest.mark.parametrize("failures", [2, 3, 4])
def test_abort_on_the_nth_failed_check(failures: int) -> None:
    """failure_limit = 3: checks 1 and 2 only count, check 3 aborts (and nothing runs after)."""
    s = started()
    kinds = []
    for i in range(failures):
        s, d = tick(s, "fail", (20 + 10 * i, 10 + i))
        kinds.append(d)
        if d == "abort":
            break
    if failures < PLAN.failure_limit:
        assert kinds == ["continue"] * failures and s.status == "running"
        assert s.failed_checks == failures
    else:
        assert kinds == ["continue", "continue", "abort"]
        assert (s.status, s.canary, s.stable, s.failed_checks) == ("idle", None, "ps_a", 3)
        assert "abort on failed check 3 of 3" in (s.last_reason or "")
        # nothing runs after the abort: the rollout is over
        with pytest.raises(sm.RolloutStateError, match="cannot abort"):
            sm.abort(s, "again", "t")


def test_failures_are_counted_over_the_rollout_not_consecutively() -> None:
    s = started()
    s, _ = tick(s, "fail", (20, 10))
    s, _ = tick(s, "unproven", (25, 12))
    s, _ = tick(s, "fail", (30, 14))
    s, d = tick(s, "fail", (35, 16))
    assert d == "abort"


def test_inconclusive_pauses_and_resume_starts_the_count_over() -> None:
    """inconclusive_limit = 3: the third batch of 10 new canary values without a verdict
    pauses; checks that bring fewer new values wait without counting."""
    s = started()
    s, d = tick(s, "unproven", (100, 10))
    assert d == "advance"  # now at the last step: no verdict until proven
    s, d1 = tick(s, "unproven", (110, 20))
    s, d_small = tick(s, "unproven", (112, 22))  # 2 new canary values: not a batch
    s, d2 = tick(s, "unproven", (121, 31))
    assert (d1, d_small, d2, s.inconclusive_checks) == ("continue", "continue", "continue", 2)
    s, d3 = tick(s, "unproven", (131, 41))
    assert (d3, s.status) == ("pause", "paused")
    assert "3 checks in a row" in (s.last_reason or "")
    same, d = tick(s, "fail", (200, 100))
    assert (d, same) == ("none", s)  # a paused rollout is not acted on
    s, decision = sm.resume(s, "more traffic now", "t")
    assert (decision.kind, s.status, s.inconclusive_checks) == ("resume", "running", 0)
    s, d = tick(s, "unproven", (141, 51))
    assert (d, s.inconclusive_checks) == ("continue", 1)


def test_how_often_checks_run_does_not_change_when_a_rollout_pauses() -> None:
    def pause_point(every: int) -> int:
        s = started()
        s, _ = tick(s, "unproven", (100, 10))
        n = 10
        while s.status == "running":
            n += every
            s, _ = tick(s, "unproven", (100 + n, n))
        return n

    assert pause_point(1) == pause_point(2) == pause_point(5) == 40


def test_a_starved_canary_pauses() -> None:
    s = started()  # weight 0.1: stable should get 9 values per canary value
    for i in range(1, 4):
        s, d = tick(s, "insufficient", (180 * i, 1))
    assert (d, s.status) == ("pause", "paused")
    assert "the canary got 0 values while stable got 180" in (s.last_reason or "")


def test_the_same_counts_twice_change_nothing() -> None:
    s = started()
    s, d = tick(s, "unproven", (50, 10))
    assert d == "advance"
    again, decision = sm.decide(s, verdict("unproven", 50, 10), "t")
    assert (decision.kind, decision.changed, again) == ("wait", False, s)


def test_every_change_bumps_the_revision() -> None:
    s = started()
    revisions = [s.revision]
    s, _ = tick(s, "insufficient", (1, 1))
    revisions.append(s.revision)
    s, _ = sm.pause(s, "x", "t")
    revisions.append(s.revision)
    s, _ = sm.pin(s, "ps_a", "incident", "t")
    revisions.append(s.revision)
    s, _ = sm.unpin(s, "ok", "t")
    revisions.append(s.revision)
    assert revisions == [1, 2, 3, 4, 5]


def test_manual_verbs_respect_the_states() -> None:
    idle = sm.RoutingState(pipeline="p")
    for verb in (sm.promote, sm.abort, sm.pause):
        with pytest.raises(sm.RolloutStateError, match="no rollout is idle"):
            verb(idle, "why", "t")
    with pytest.raises(sm.RolloutStateError, match="cannot resume"):
        sm.resume(started(), "why", "t")
    with pytest.raises(sm.RolloutStateError, match="not pinned"):
        sm.unpin(idle, "why", "t")
    with pytest.raises(sm.RolloutStateError, match="already running"):
        sm.start(started(), "ro2", "ps_c", PLAN, "t")
    with pytest.raises(sm.RolloutStateError, match="already stable"):
        sm.start(sm.RoutingState(pipeline="p", stable="ps_a"), "ro", "ps_a", PLAN, "t")
    promoted, d = sm.promote(sm.pause(started(), "x", "t")[0], "looks good", "t")
    assert (d.kind, promoted.stable, promoted.status) == ("promote", "ps_b", "idle")


def test_the_pointer_fits_a_prefect_variable() -> None:
    s = started(RolloutPlan(kpi="k" * 200, steps=[0.01 * i for i in range(1, 60)]))
    s = s.bump("t", last_reason="x" * 20000)
    import orjson

    assert len(orjson.dumps(s.model_dump(mode="json"))) < 5000


def test_withdraw_ends_a_rollout_before_any_canary_value() -> None:
    state = started()
    new, decision = sm.withdraw(state, "wrong KPI", "t1", canary_values=0)
    assert (new.status, new.canary, new.weight, new.stable) == ("idle", None, 0.0, "ps_a")
    assert (new.last_outcome, new.last_decision, new.last_rollout_id) == (
        "withdrawn",
        "withdraw",
        "ro",
    )
    assert new.revision == state.revision + 1 and decision.kind == "withdraw"
    assert "before any canary value: wrong KPI" in decision.reason
    # paused works too; a new rollout can start after it
    paused, _ = sm.pause(started(), "x", "t1")
    assert sm.withdraw(paused, "x", "t2", canary_values=0)[0].status == "idle"
    assert sm.start(new, "ro2", "ps_b", PLAN, "t3")[0].status == "running"


def test_withdraw_is_refused_once_the_canary_has_values_or_nothing_runs() -> None:
    with pytest.raises(sm.RolloutStateError, match="has 3 canary value"):
        sm.withdraw(started(), "late", "t1", canary_values=3)
    with pytest.raises(sm.RolloutStateError, match="cannot withdraw"):
        sm.withdraw(sm.RoutingState(pipeline="p"), "nothing", "t1", canary_values=0)

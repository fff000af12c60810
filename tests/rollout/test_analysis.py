"""The analysis: pure functions, edge cases, and the false-rollback bound by simulation."""

from __future__ import annotations

import math
import random

import pytest

from prefect_genopt.rollout.analysis import ArmStats, assess, log_mixture_ratio, mann_whitney
from prefect_genopt.rollout.plan import RolloutPlan
from prefect_genopt.rollout.state import RoutingState, decide, start

PLAN = RolloutPlan(kpi="ok")


def bern(p: float, n: int) -> ArmStats:
    ones = round(p * n)
    return ArmStats.from_values([1.0] * ones + [0.0] * (n - ones))


def test_no_verdict_below_the_minimum_sample_per_arm() -> None:
    a = assess(bern(0.8, 500), bern(0.1, 99), PLAN)
    assert a.verdict == "insufficient" and "canary has 99" in a.reason
    empty = assess(ArmStats.from_values([]), ArmStats.from_values([]), PLAN)
    assert empty.verdict == "insufficient" and "stable has 0 and canary has 0" in empty.reason
    assert math.isnan(empty.effect)


def test_a_clear_regression_fails_and_a_clear_gain_passes() -> None:
    worse = assess(bern(0.8, 1000), bern(0.7, 1000), PLAN)
    assert worse.verdict == "fail" and worse.effect == pytest.approx(-0.1)
    assert worse.log_lr_harm >= worse.harm_threshold
    better = assess(bern(0.8, 1000), bern(0.85, 1000), PLAN)
    assert better.verdict == "pass" and better.log_lr_safe >= better.safe_threshold


def test_direction_lower_is_better_flips_the_sign() -> None:
    plan = RolloutPlan(kpi="latency", direction="lower")
    slow = [2.0 + 0.1 * (i % 7) for i in range(300)]
    fast = [1.0 + 0.1 * (i % 7) for i in range(300)]
    assert assess(ArmStats.from_values(fast), ArmStats.from_values(slow), plan).verdict == "fail"
    assert assess(ArmStats.from_values(slow), ArmStats.from_values(fast), plan).verdict == "pass"
    assert assess(ArmStats.from_values(slow), ArmStats.from_values(fast), plan).effect > 0


def test_within_the_tolerance_is_not_a_failure_with_little_data() -> None:
    a = assess(bern(0.80, 200), bern(0.79, 200), PLAN)
    assert a.verdict == "unproven" and a.effect < 0


def test_constant_data_is_decided_by_the_means() -> None:
    same = assess(bern(1.0, 150), bern(1.0, 150), PLAN)
    assert (same.verdict, same.se) == ("pass", 0.0)
    assert "constant data" in same.reason
    worse = assess(bern(1.0, 150), bern(0.0, 150), PLAN)
    assert worse.verdict == "fail"


def test_absolute_tolerance_and_a_zero_stable_mean() -> None:
    plan = RolloutPlan(kpi="errors", direction="lower", tolerance=0.5, tolerance_mode="absolute")
    a = assess(ArmStats.from_values([0.0] * 200), ArmStats.from_values([0.0] * 199 + [1.0]), plan)
    assert a.margin == 0.5 and a.verdict == "pass"
    rel = assess(
        ArmStats.from_values([0.0] * 200),
        ArmStats.from_values([0.0] * 200),
        RolloutPlan(kpi="errors", direction="lower"),
    )
    assert math.isnan(rel.relative_effect) and rel.margin == 0.05  # falls back to absolute


def test_mann_whitney_handles_ties_and_empty_arms() -> None:
    assert mann_whitney([], [1.0]) is None
    same = mann_whitney([1.0] * 10, [1.0] * 10)
    assert same is not None and (same.z, same.p_worse, same.superiority) == (0.0, 0.5, 0.5)
    mw = mann_whitney([1, 1, 1, 0] * 50, [1, 0, 0, 0] * 50)
    assert mw is not None and mw.superiority < 0.5 and mw.p_worse < 0.001
    lower = mann_whitney([1, 1, 1, 0] * 50, [1, 0, 0, 0] * 50, direction="lower")
    assert lower is not None and lower.superiority > 0.5


def test_mixture_ratio_is_a_likelihood_ratio() -> None:
    assert log_mixture_ratio(0.0, 0.0, 1.0, 1.0) < 0  # no evidence
    assert log_mixture_ratio(3.0, 0.0, 1.0, 1.0) > log_mixture_ratio(1.0, 0.0, 1.0, 1.0)
    # a mixture over several scales lies between its members
    one, two = log_mixture_ratio(2.0, 0.0, 0.5, 1.0), log_mixture_ratio(2.0, 0.0, 0.5, 4.0)
    both = log_mixture_ratio(2.0, 0.0, 0.5, (1.0, 4.0))
    assert min(one, two) <= both <= max(one, two)


def _aa_rollout(rng: random.Random, plan: RolloutPlan, interval: int) -> str:
    """One A/A rollout of Bernoulli(0.8) items, checked every ``interval`` items."""
    state, _ = start(RoutingState(pipeline="p", stable="a"), "r", "b", plan, "t")
    sums = [[0, 0.0], [0, 0.0]]
    for _ in range(200):
        for _ in range(interval):
            arm = 1 if rng.random() < state.weight else 0
            x = 1.0 if rng.random() < 0.8 else 0.0
            sums[arm][0] += 1
            sums[arm][1] += x
        st = ArmStats.from_sums(sums[0][0], sums[0][1], sums[0][1])  # x*x == x for 0/1
        ca = ArmStats.from_sums(sums[1][0], sums[1][1], sums[1][1])
        state, d = decide(state, assess(st, ca, plan), "t")
        if d.kind in ("promote", "abort", "pause"):
            return d.kind
    return "running"


def test_repeated_looks_keep_the_aa_false_rollback_rate_under_alpha() -> None:
    """Checks every 10 items with failure_limit 1 (the harshest setting): many looks
    per rollout, and still at most alpha of the A/A rollouts are rolled back.

    A naive one-look test at the same alpha, applied at every check, is shown to
    exceed it on the same streams (so the check can fail)."""
    plan = RolloutPlan(kpi="ok", alpha=0.05, failure_limit=1, steps=[0.5], tolerance=0.05)
    rng = random.Random(2026)
    runs = 400
    outcomes = [_aa_rollout(rng, plan, interval=10) for _ in range(runs)]
    false_rollbacks = outcomes.count("abort") / runs
    assert false_rollbacks <= plan.alpha, outcomes.count("abort")

    # the same looks with a naive fixed-sample z-test (p < alpha at any check)
    rng = random.Random(2026)
    naive = 0
    for _ in range(runs):
        s, c = [0, 0.0], [0, 0.0]
        for _ in range(100):
            for _ in range(10):
                arm = c if rng.random() < 0.5 else s
                arm[0] += 1
                arm[1] += 1.0 if rng.random() < 0.8 else 0.0
            if min(s[0], c[0]) < 100:
                continue
            a = assess(
                ArmStats.from_sums(s[0], s[1], s[1]), ArmStats.from_sums(c[0], c[1], c[1]), plan
            )
            if a.p_one_look < plan.alpha:
                naive += 1
                break
    assert naive / runs > 2 * plan.alpha, naive


def test_arms_are_compared_within_steps() -> None:
    """The KPI fell between steps for both arms alike; the canary got most of its values in
    the later, worse step. Pooled, it looks worse; compared within steps, it is not."""
    early = (bern(0.9, 900), bern(0.9, 100))  # step 1: 10% on the canary
    late = (bern(0.6, 500), bern(0.6, 500))  # step 2: 50%, a worse period for everyone
    stable = ArmStats.from_values([1.0] * (810 + 300) + [0.0] * (90 + 200))
    canary = ArmStats.from_values([1.0] * (90 + 300) + [0.0] * (10 + 200))
    pooled = assess(stable, canary, PLAN)
    within = assess(stable, canary, PLAN, strata=[early, late])
    assert pooled.verdict == "fail" and pooled.effect < -0.1
    assert within.verdict != "fail" and within.effect == pytest.approx(0.0, abs=1e-12)
    # one stratum (or strata where an arm is empty) is the pooled comparison
    alone = assess(stable, canary, PLAN, strata=[(stable, canary), (bern(0.5, 10), bern(0, 0))])
    assert alone.effect == pooled.effect

"""The confirmation test (issue 14, "Tests" item 4): seeded simulations of a scripted
candidate against its parent on 150 confirmation items."""

from __future__ import annotations

import math
import random

import pytest

from prefect_genopt.optimize.search.core import Scores
from prefect_genopt.optimize.search.stats import (
    binom_tail,
    mcnemar_exact,
    min_confirmation_items,
    min_disagreements,
    power,
    sign_test,
)

N_ITEMS = 150
P0 = 0.6  # the parent is right on an item with this probability
ALPHA = 0.05
SIMULATIONS = 100


def _simulate(p_candidate: float, seed: int) -> tuple[Scores, Scores]:
    """Each item right with the parent's probability, and with the candidate's,
    independently."""
    rng = random.Random(seed)
    parent = {f"run{i // 10}:{i}": float(rng.random() < P0) for i in range(N_ITEMS)}
    candidate = {k: float(rng.random() < p_candidate) for k in parent}
    return parent, candidate


def _accepted(p_candidate: float, simulations: int = SIMULATIONS) -> int:
    return sum(
        sign_test(*_simulate(p_candidate, seed)).accepted(ALPHA) for seed in range(simulations)
    )


def test_accepts_a_better_candidate_in_a_large_majority() -> None:
    # +0.15 on 150 items: the exact power is 0.845 (stats.power). Measured with these seeds:
    # 79 of the first 100 simulations, 248 of 300 (0.83). 100 simulations alone would miss
    # an 80% floor about 1 time in 14 by chance, so the rate is measured on 300.
    assert abs(power(N_ITEMS, (P0 + 0.15) * (1 - P0), P0 * (1 - P0 - 0.15)) - 0.845) < 0.005
    accepted = _accepted(P0 + 0.15, 300)
    assert accepted >= 240, accepted


def test_refuses_an_equal_candidate() -> None:
    accepted = _accepted(P0)  # measured: 2 of 100 (13 of 300: the test's size is < 0.05)
    assert SIMULATIONS - accepted >= 90, accepted


def test_refuses_a_worse_candidate() -> None:
    assert _accepted(P0 - 0.15) == 0  # measured: 0 of 100 (and 0 of 300)


def test_counts_p_and_interval_by_hand() -> None:
    parent = {"a": 1.0, "b": 0.0, "c": 0.0, "d": 1.0, "e": 0.0, "only-parent": 1.0}
    candidate = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0, "e": 1.0, "only-cand": 0.0}
    t = sign_test(parent, candidate)
    assert (t.wins, t.losses, t.ties, t.n_items) == (3, 1, 1, 5)
    assert t.p_value == pytest.approx(5 / 16)  # P(X >= 3 | 4, 1/2)
    assert t.diff_mean == pytest.approx(2 / 5)
    assert t.ci_method == "newcombe" and -1 <= t.ci_low < t.diff_mean < t.ci_high <= 1
    # lower is better: the candidate's ones are now losses
    low = sign_test(parent, candidate, direction="lower")
    assert (low.wins, low.losses, low.diff_mean) == (1, 3, pytest.approx(-2 / 5))
    assert low.ci_low == pytest.approx(-t.ci_high) and low.ci_high == pytest.approx(-t.ci_low)


def test_no_disagreement_gives_p_one_and_nan_items_are_left_out() -> None:
    same = {"a": 1.0, "b": 0.0}
    assert sign_test(same, dict(same)).p_value == 1.0
    t = sign_test({"a": 1.0, "b": math.nan}, {"a": 1.0, "b": 1.0})
    assert (t.n_items, t.wins) == (1, 0)
    empty = sign_test({}, {"a": 1.0})
    assert empty.n_items == 0 and empty.p_value == 1.0 and not empty.accepted(ALPHA)


def test_graded_scores_use_the_normal_interval() -> None:
    parent = {str(i): 0.5 for i in range(40)}
    candidate = {str(i): 0.5 + (0.1 if i % 4 else -0.05) for i in range(40)}
    t = sign_test(parent, candidate)
    assert t.ci_method == "normal" and (t.wins, t.losses) == (30, 10)
    assert t.ci_low < t.diff_mean < t.ci_high and t.ci_low > 0
    assert t.as_dict()["p_value"] == t.p_value and "wins 30" in t.summary()


def test_mcnemar_is_two_sided_and_symmetric() -> None:
    a = {str(i): 1.0 for i in range(20)}
    b = {**a, **{str(i): 0.0 for i in range(6)}}  # 6 discordant, all for a
    assert mcnemar_exact(a, b) == pytest.approx(2 * 0.5**6)
    assert mcnemar_exact(a, b) == mcnemar_exact(b, a)
    assert mcnemar_exact(a, a) == 1.0


def test_binomial_tail_and_the_minimum_sizes() -> None:
    assert binom_tail(5, 5) == 0.5**5 and binom_tail(6, 5) == 0.0
    assert sum(binom_tail(k, 10) - binom_tail(k + 1, 10) for k in range(11)) == pytest.approx(1)
    assert min_disagreements(0.05) == 5 and binom_tail(4, 4) >= 0.05
    assert min_confirmation_items(0.05) == 25
    with pytest.raises(ValueError):
        min_disagreements(1.5)

"""Successive halving (issue 14, "Tests" item 3): it keeps the best candidate of a scripted
population with known per-item scores, pays each rung only for its new items, and stops
cleanly mid-way."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from prefect_genopt.optimize.search.core import Candidate, Scores
from prefect_genopt.optimize.search.halving import rank, successive_halving

ITEMS = [f"run{i // 6}:{i}" for i in range(48)]
QUALITY = [0.35, 0.5, 0.45, 0.6, 0.4, 0.55, 0.85, 0.3, 0.5, 0.65, 0.45, 0.5]
BEST = "c6"


def _population() -> tuple[list[Candidate], dict[str, Scores]]:
    """Candidate ``cK`` is right on an item with probability QUALITY[K] (seeded, fixed)."""
    rng = random.Random(7)
    cands = [Candidate(f"c{k}", {"k": k}, "drafts", "ps_parent") for k in range(len(QUALITY))]
    truth = {
        c.candidate_id: {i: float(rng.random() < q) for i in ITEMS}
        for c, q in zip(cands, QUALITY, strict=True)
    }
    return cands, truth


class Scorer:
    """The caller's score function: known per-item scores, every call recorded."""

    def __init__(self, truth: dict[str, Scores]) -> None:
        self.truth = truth
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, c: Candidate, items: Sequence[str]) -> Scores:
        self.calls.append((c.candidate_id, list(items)))
        return {i: self.truth[c.candidate_id][i] for i in items}


def _mean(scores: Scores, items: Sequence[str]) -> float:
    return sum(scores[i] for i in items) / len(items)


def test_keeps_the_best_candidate_of_a_scripted_population() -> None:
    cands, truth = _population()
    scorer = Scorer(truth)
    lines: list[str] = []
    r = successive_halving(cands, ITEMS, scorer, progress=lines.append)
    assert r.winner is not None and r.winner.candidate_id == BEST
    best_on_48 = max(truth, key=lambda c: _mean(truth[c], ITEMS))
    assert best_on_48 == BEST and r.stop_reason is None
    # the table: 12 rows on 16 items (4 kept), then 4 rows on 48 (1 kept), best first
    first = [row for row in r.table if row.rung == 1]
    second = [row for row in r.table if row.rung == 2]
    assert [row.n for row in first] == [16] * 12 and sum(row.kept for row in first) == 4
    assert [row.n for row in second] == [48] * 4 and [row.kept for row in second] == [
        True,
        False,
        False,
        False,
    ]
    assert [row.place for row in second] == [1, 2, 3, 4] and second[0].candidate_id == BEST
    assert second[0].mean == _mean(truth[BEST], ITEMS)
    assert {row.candidate_id for row in second} == {row.candidate_id for row in first if row.kept}
    means = [row.mean for row in first]
    assert means == sorted(means, reverse=True)
    assert r.ranking[0] == BEST and len(lines) == 16 and "ETA" in lines[-1]


def test_each_rung_scores_only_new_items_one_candidate_at_a_time() -> None:
    cands, truth = _population()
    scorer = Scorer(truth)
    r = successive_halving(cands, ITEMS, scorer)
    first, second = scorer.calls[:12], scorer.calls[12:]
    assert [c for c, _ in first] == [c.candidate_id for c in cands]  # the order given
    assert all(items == ITEMS[:16] for _, items in first)
    assert len(second) == 4 and all(items == ITEMS[16:] for _, items in second)
    kept = {row.candidate_id for row in r.table if row.rung == 1 and row.kept}
    assert {c for c, _ in second} == kept
    assert all(len(r.scores[c]) == 48 for c in kept)
    assert all(len(r.scores[c.candidate_id]) == 16 for c in cands if c.candidate_id not in kept)


def test_stops_mid_way_and_the_best_so_far_wins() -> None:
    cands, truth = _population()

    def stop_after(calls: int) -> tuple[Scorer, object]:
        scorer = Scorer(truth)
        return (
            scorer,
            lambda: "task-call budget of 999 spent" if len(scorer.calls) >= calls else None,
        )

    # in the second rung: the top of the first rung wins, the rest of rung 2 is not scored
    scorer, stop = stop_after(13)
    r = successive_halving(cands, ITEMS, scorer, should_stop=stop)
    assert r.stop_reason == "task-call budget of 999 spent" and len(scorer.calls) == 13
    rung1 = [row for row in r.table if row.rung == 1]
    assert r.winner is not None and r.winner.candidate_id == rung1[0].candidate_id
    assert not [row for row in r.table if row.rung == 2]
    # in the first rung: the best of the candidates scored so far
    scorer, stop = stop_after(5)
    r = successive_halving(cands, ITEMS, scorer, should_stop=stop)
    assert len(r.table) == 5 and r.winner is not None
    assert r.winner.candidate_id == max(
        (c.candidate_id for c in cands[:5]),
        key=lambda c: (_mean(truth[c], ITEMS[:16]), -int(c[1:])),
    )
    # before anything: no winner
    scorer, stop = stop_after(0)
    r = successive_halving(cands, ITEMS, scorer, should_stop=stop)
    assert r.winner is None and not scorer.calls and r.stop_reason


def test_a_candidate_the_budget_stopped_part_way_is_not_ranked() -> None:
    cands, truth = _population()
    spent: list[str] = []

    def scorer(c: Candidate, items: Sequence[str]) -> Scores:
        if c.candidate_id == "c2":  # the budget runs out after 4 of its 16 items
            spent.append("out")
            return {i: truth["c2"][i] for i in items[:4]}
        return {i: truth[c.candidate_id][i] for i in items}

    r = successive_halving(
        cands, ITEMS, scorer, should_stop=lambda: "task-call budget spent" if spent else None
    )
    assert r.stop_reason == "task-call budget spent"
    ranked = {row.candidate_id for row in r.table}
    assert ranked == {"c0", "c1"}, "only the candidates scored on every rung item are ranked"
    assert r.winner is not None and r.winner.candidate_id in ("c0", "c1")


def test_ties_go_to_fewer_failures_then_the_order_given() -> None:
    spread = Candidate("spread", {}, "drafts", "p")  # mean 0.5, one failure
    steady = Candidate("steady", {}, "drafts", "p")  # mean 0.5, no failure
    twin = Candidate("twin", {}, "demos", "p")  # the same as steady
    table = {"spread": [1.0, 0.0], "steady": [0.5, 0.5], "twin": [0.5, 0.5]}
    items = ["r:a", "r:b"]

    def score(c: Candidate, its: Sequence[str]) -> Scores:
        return dict(zip(its, table[c.candidate_id], strict=False))

    r = successive_halving([spread, twin, steady], items, score, rungs=((2, 1),))
    assert r.ranking == ["twin", "steady", "spread"] and r.winner == twin


def test_missing_and_nan_scores_count_as_failures_and_lower_can_be_better() -> None:
    a, b = Candidate("a", {}, "drafts", "p"), Candidate("b", {}, "drafts", "p")
    items = ["r:1", "r:2", "r:3"]
    scores = {"a": {"r:1": 1.0, "r:2": math.nan}, "b": {"r:1": 1.0, "r:2": 1.0, "r:3": 0.0}}
    ranked = rank([a, b], scores, items)
    assert [(c.candidate_id, round(m, 3), f) for c, m, f in ranked] == [
        ("b", 0.667, 1),
        ("a", 0.333, 2),
    ]
    # an error rate: lower is better, a missing item counts as 1.0
    errors = {"a": {"r:1": 0.0, "r:2": 0.0, "r:3": 0.0}, "b": {"r:1": 0.0, "r:2": 0.0}}
    assert [c.candidate_id for c, _, _ in rank([b, a], errors, items, direction="lower")] == [
        "a",
        "b",
    ]


def test_small_pools_and_repeated_candidates() -> None:
    cands, truth = _population()
    scorer = Scorer(truth)
    r = successive_halving([*cands[:3], cands[0]], ITEMS[:10], scorer)
    assert len(scorer.calls) == 3  # 3 distinct candidates; 10 items: rung 2 adds none
    assert {row.n for row in r.table} == {10} and r.winner is not None
    assert successive_halving([], ITEMS, scorer).winner is None

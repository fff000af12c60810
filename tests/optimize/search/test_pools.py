"""Pools of whole runs (issue 14, "Tests" item 1): disjoint, stable across nights, sized
in labelled items; and the SQL that lists the runs they may use."""

from __future__ import annotations

from pathlib import Path

import pytest

import prefect_genopt as genopt
from prefect_genopt.optimize.search.core import Pools, RunInfo
from prefect_genopt.optimize.search.pools import (
    POOLS,
    assign_pools,
    fingerprint,
    hash_fraction,
    needed_items,
    pool_runs,
)
from prefect_genopt.optimize.search.stats import min_confirmation_items

SIZES = {"evidence": 30, "selection": 48, "confirmation": 150}


def _runs(prefix: str, n: int, items: int = 5) -> list[RunInfo]:
    return [RunInfo(f"{prefix}-{i}", "ps_old" if i % 3 else "ps_stable", items) for i in range(n)]


def _pool_of(pools: Pools) -> dict[str, str]:
    return {run: name for name in POOLS for run in getattr(pools, name)}


def test_pools_are_disjoint_and_sized_in_whole_runs() -> None:
    runs = _runs("r", 120, items=7)
    p = assign_pools(runs, pipeline="triage", **SIZES)
    members = [r for name in POOLS for r in getattr(p, name)]
    assert len(members) == len(set(members))  # a run never serves two pools
    for name in POOLS:
        wanted, got = p.sizes[name]
        assert wanted == SIZES[name] and got == p.n_items(name)
        assert wanted <= got < wanted + 7  # whole runs: at most one run past the target
    assert all(p.items[r] == 7 for r in members)


def test_a_runs_pool_is_decided_by_its_hash_alone() -> None:
    night1 = _runs("r", 60)
    p1 = assign_pools(night1, pipeline="triage", **SIZES)
    # the next night: 80 new runs arrive, 10 old ones fell out of the window
    night2 = night1[10:] + _runs("new", 80)
    p2 = assign_pools(night2, pipeline="triage", **SIZES)
    before, after = _primary(p1), _primary(p2)
    moved = {
        r: (before[r], after[r]) for r in before.keys() & after.keys() if before[r] != after[r]
    }
    assert not moved
    # the same runs in another order give the same pools
    p3 = assign_pools(list(reversed(night2)), pipeline="triage", **SIZES)
    assert _pool_of(p3) == _pool_of(p2)
    # a primary member's pool follows the hash fraction's cut points (30 : 48 : 150)
    for run, pool in after.items():
        assert pool == _bucket(run)
    for run, home in p2.borrowed.items():
        assert home == _bucket(run) != _pool_of(p2)[run]


def _bucket(run: str, pipeline: str = "triage") -> str:
    cut1, cut2 = 30 / 228, 78 / 228
    f = hash_fraction(pipeline, run)
    return "evidence" if f < cut1 else "selection" if f < cut2 else "confirmation"


def _primary(pools: Pools) -> dict[str, str]:
    return {r: name for r, name in _pool_of(pools).items() if r not in pools.borrowed}


@pytest.mark.parametrize("prefix", ["a", "b"])
def test_with_few_runs_a_short_pool_borrows_what_full_pools_leave_unused(prefix: str) -> None:
    # 16 runs of 16 items for 30 + 48 + 150 = 228: the buckets alone leave pools short
    # ("a": selection 16 of 48 and evidence 16 of 30, as measured; "b": confirmation 128)
    runs = _runs(prefix, 16, items=16)
    primary_only = {name: 0 for name in POOLS}
    for r in runs:
        primary_only[_bucket(r.run_id)] += 16
    assert any(primary_only[n] < SIZES[n] for n in POOLS)  # the case borrowing is for
    p = assign_pools(runs, pipeline="triage", **SIZES)
    members = [r for name in POOLS for r in getattr(p, name)]
    assert len(members) == len(set(members))  # a run never serves two pools in one night
    for name in POOLS:
        wanted, got = p.sizes[name]
        assert got == p.n_items(name) and got > wanted - 16, (name, p.sizes)  # within one run
    assert p.borrowed and any("borrowed" in n for n in p.notes)
    # a borrowed run is lent in hash order from runs beyond a full pool's target
    for run, home in p.borrowed.items():
        wanted, _ = p.sizes[home]
        own = [r for r in getattr(p, home) if r not in p.borrowed]
        assert sum(p.items[r] for r in own) >= wanted
        assert all(hash_fraction("triage", r) < hash_fraction("triage", run) for r in own)
    # a new run arrives: every primary member stays in its pool (one may be pushed out of
    # its bucket's pool by a new run with a smaller hash, and then lent or unused)
    for extra in range(5):
        p2 = assign_pools([*runs, RunInfo(f"new-{extra}", "ps", 16)], pipeline="triage", **SIZES)
        after = _pool_of(p2)
        for run, pool in _primary(p).items():
            assert after.get(run) == pool or run in p2.borrowed or run not in after
        pushed = [r for r in _primary(p) if _primary(p2).get(r) != _primary(p)[r]]
        assert len(pushed) <= 1


def test_short_pools_say_so_and_use_what_there_is() -> None:
    runs = [*_runs("r", 12, items=4), RunInfo("unlabelled", "ps", 0), RunInfo("r-0", "ps", 4)]
    p = assign_pools(runs, pipeline="triage", **SIZES)
    assert "unlabelled" not in p.items and sum(p.items.values()) == 48
    assert sum(got for _, got in p.sizes.values()) == 48
    assert any(n.startswith("confirmation has ") and "of 150" in n for n in p.notes)
    assert needed_items(p, min_confirmation_items()) == max(
        0, -(-(25 - p.n_items("confirmation")) * 228 // 150)
    )
    full = assign_pools(_runs("r", 200), pipeline="triage", **SIZES)
    assert needed_items(full, 25) == 0 and not [n for n in full.notes if " has " in n]
    assert any("unused" in n for n in full.notes)


def test_a_confirmation_pool_set_smaller_than_the_floor_needs_only_to_be_full() -> None:
    small = assign_pools(_runs("r", 40), pipeline="t", evidence=10, selection=10, confirmation=10)
    assert small.n_items("confirmation") >= 10 and needed_items(small, 25) == 0
    empty = assign_pools([], pipeline="t", evidence=10, selection=10, confirmation=10)
    assert needed_items(empty, 25) == 30  # 10 for the pool, which gets a third of new items


def test_a_zero_size_pool_gets_no_run() -> None:
    p = assign_pools(_runs("r", 30), pipeline="t", evidence=0, selection=20, confirmation=20)
    assert p.evidence == [] and p.sizes["evidence"] == (0, 0)
    assert p.selection and p.confirmation


def test_fingerprint_ignores_order_and_repeats() -> None:
    assert fingerprint([("a", "1")], ["m"]) == fingerprint([("a", "1"), ("a", "1")], ["m", None])
    assert fingerprint([("a", "1")], ["m"]) != fingerprint([("a", "1")], ["m2"])


ITEMS = [
    ["T1", "my invoice is wrong", "billing"],
    ["T2", "the app crash on start", "bug"],
    ["T3", "thanks for the roadmap", "other"],
]


def test_pool_runs_lists_labelled_replayable_production_runs(
    warehouse_path: Path, prefect_api: str
) -> None:
    from tests.replay.pipelines import RecParams, replayer

    replayer(ITEMS)  # the stable arm (no routing: defaults)
    old = RecParams(prompt="billing: invoice; bug: crash, error")
    with genopt.pinned_params(old, arm="stable"):  # an older param set, on the stable arm
        replayer(ITEMS[:2])
    with genopt.pinned_params(old, arm="replay"):  # a replay: never a pool's run
        replayer(ITEMS)
    wh = genopt.Warehouse()
    wh.ingest()
    runs = pool_runs(wh, "replayer", "correct", limit=10)
    assert len(runs) == 2
    newest, first = runs
    assert (newest.n_items, first.n_items) == (2, 3)  # newest first
    assert newest.param_set_id == old.param_set_id
    assert first.param_set_id == RecParams().param_set_id
    assert newest.fingerprint and newest.fingerprint.startswith("fp_")
    assert newest.fingerprint == first.fingerprint  # same step versions, same model
    assert pool_runs(wh, "replayer", "correct", limit=1) == [newest]
    assert pool_runs(wh, "replayer", "other-kpi", limit=10) == []
    assert len(pool_runs(wh, "replayer", "correct", limit=10, arms=("replay",))) == 1

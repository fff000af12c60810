"""Three disjoint pools of whole recorded runs: evidence, selection, confirmation.

A replay re-runs a whole recorded run (``flow(**inputs)``), so a pool is a set of runs,
sized in labelled items (:attr:`RunInfo.n_items`). :func:`assign_pools` places runs in
two passes:

1. **Primary: a run's bucket is fixed by its hash.** A hash of ``(pipeline, run_id)``
   alone gives a fraction in ``[0, 1)`` that falls in one of three buckets whose widths
   are proportional to the three target sizes. Within its bucket a pool takes runs in
   hash order (the smallest hash fraction first) while it holds fewer items than wanted;
   a run is never split, so the last run taken may carry the pool past its target by
   less than its own size. A primary member's pool depends on its own hash and the runs
   of its own bucket only, never on the other buckets: it stays in its pool from night
   to night (scores cached by item are reused).
2. **Borrowing: a short pool takes runs a full pool left unused.** Bucket counts are
   binomial, so with few runs one bucket can be short while another holds more runs than
   its pool needs (measured: 16 runs of 16 items gave the selection pool 16 of 48 items).
   The runs beyond a full pool's target are lent, in hash order, each to the short pool
   that is furthest below its target (by the fraction it holds; ties in pool order),
   until every pool is full or none is left. When the runs suffice, every pool reaches
   its target (to within one run).

The trade-off of borrowing: a borrowed run may move on a later night. When its own
bucket's pool needs it again (a primary run fell out of the window), it returns there;
when the lending pool's surplus changes, another run may be lent instead. Its scores stay
valid (the score cache is keyed by item, not by pool), and within one night a run still
never serves two pools. :attr:`Pools.borrowed` names the borrowed runs and their own
bucket. Hash order rather than newest first keeps a pool's members the same from night to
night; the age of the data is bounded by :func:`pool_runs`, which reads only the newest
``limit`` runs.

:func:`pool_runs` lists the candidates: recorded production runs of the pipeline with
per-item feedback on the KPI and replayable inputs, under the stable param set or older
ones (:attr:`RunInfo.param_set_id` says which).

Example:
    >>> runs = [RunInfo(f"r{i}", "ps_a", 10) for i in range(40)]
    >>> p = assign_pools(runs, pipeline="triage", evidence=30, selection=48, confirmation=150)
    >>> set(p.evidence) & set(p.selection), set(p.selection) & set(p.confirmation)
    (set(), set())
    >>> [p.sizes[k][0] for k in ("evidence", "selection", "confirmation")]
    [30, 48, 150]
    >>> all(got >= wanted for wanted, got in p.sizes.values())  # 400 items suffice for 228
    True
    >>> few = [RunInfo(f"r{i}", "ps_a", 16) for i in range(16)]  # 256 items for 228
    >>> q = assign_pools(few, pipeline="triage", evidence=30, selection=48, confirmation=150)
    >>> all(got > wanted - 16 for wanted, got in q.sizes.values())  # each within one run
    True
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prefect_genopt.optimize.search.core import Pools, RunInfo
from prefect_genopt.replay.fingerprint import fingerprint, run_fingerprints
from prefect_genopt.replay.gate import replayable_inputs

if TYPE_CHECKING:
    from prefect_genopt.warehouse import Warehouse

__all__ = [
    "POOLS",
    "PRODUCTION_ARMS",
    "hash_fraction",
    "assign_pools",
    "needed_items",
    "pool_runs",
    "run_fingerprints",
    "fingerprint",
]

#: the pools, in the order of their hash buckets
POOLS = ("evidence", "selection", "confirmation")
#: the arms whose recorded runs are production traffic (not replays, pinned or offline runs)
PRODUCTION_ARMS = ("stable", "canary")


def hash_fraction(pipeline: str, run_id: str) -> float:
    """A run's place in ``[0, 1)``: SHA-256 of ``pipeline``, NUL, ``run_id``.

    Example:
        >>> hash_fraction("triage", "r1") == hash_fraction("triage", "r1")
        True
        >>> 0.0 <= hash_fraction("triage", "r1") < 1.0
        True
    """
    digest = hashlib.sha256(f"{pipeline}\0{run_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _bucket(fraction: float, cuts: Sequence[float]) -> int | None:
    """The pool index of a hash fraction, given cumulative cut points (None: no pool)."""
    for i, cut in enumerate(cuts):
        if fraction < cut:
            return i
    return None


def assign_pools(
    runs: Sequence[RunInfo],
    *,
    pipeline: str,
    evidence: int,
    selection: int,
    confirmation: int,
) -> Pools:
    """Split ``runs`` into the three pools (pure; see the module docstring for the rule).

    Args:
        runs: The candidate runs (from :func:`pool_runs`); a run id given twice counts
            once, runs without a labelled item are left out.
        pipeline: The pipeline (part of the hash, so two pipelines split differently).
        evidence: Labelled items wanted in the evidence / demo source pool.
        selection: Labelled items wanted in the selection pool.
        confirmation: Labelled items wanted in the confirmation pool.

    Returns:
        The pools, with ``sizes`` (wanted, got) and a note for each pool that is short.

    Example:
        >>> few = [RunInfo("a", "ps", 5), RunInfo("b", "ps", 5)]
        >>> p = assign_pools(few, pipeline="t", evidence=10, selection=10, confirmation=10)
        >>> sum(got for _, got in p.sizes.values()), len(p.notes) >= 1
        (10, True)
    """
    wanted = {"evidence": evidence, "selection": selection, "confirmation": confirmation}
    if any(v < 0 for v in wanted.values()):
        raise ValueError(f"pool sizes must be >= 0, got {wanted}")
    total = sum(wanted.values())
    cuts: list[float] = []
    acc = 0
    for name in POOLS:
        acc += wanted[name]
        cuts.append(acc / total if total else 0.0)
    placed: dict[str, list[tuple[float, RunInfo]]] = {name: [] for name in POOLS}
    seen: set[str] = set()
    for run in runs:
        if run.run_id in seen or run.n_items <= 0:
            continue
        seen.add(run.run_id)
        fraction = hash_fraction(pipeline, run.run_id)
        i = _bucket(fraction, cuts)
        if i is not None:
            placed[POOLS[i]].append((fraction, run))
    pools = Pools()
    spare: list[tuple[float, RunInfo, str]] = []
    got: dict[str, int] = dict.fromkeys(POOLS, 0)
    for name in POOLS:
        members: list[str] = getattr(pools, name)
        for fraction, run in sorted(placed[name], key=lambda fr: (fr[0], fr[1].run_id)):
            if got[name] >= wanted[name]:
                spare.append((fraction, run, name))
                continue
            members.append(run.run_id)
            pools.items[run.run_id] = run.n_items
            got[name] += run.n_items
    spare.sort(key=lambda fr: (fr[0], fr[1].run_id))
    lent = 0
    for _, run, home in spare:
        short = [n for n in POOLS if got[n] < wanted[n]]
        if not short:
            break
        to = min(short, key=lambda n: (got[n] / wanted[n], POOLS.index(n)))
        getattr(pools, to).append(run.run_id)
        pools.items[run.run_id] = run.n_items
        pools.borrowed[run.run_id] = home
        got[to] += run.n_items
        lent += 1
    for name in POOLS:
        pools.sizes[name] = (wanted[name], got[name])
        n_borrowed = sum(1 for r in getattr(pools, name) if r in pools.borrowed)
        if n_borrowed:
            pools.notes.append(
                f"{name} borrowed {n_borrowed} run(s) that other full pools left unused"
            )
        if got[name] < wanted[name]:
            pools.notes.append(
                f"{name} has {got[name]} of {wanted[name]} labelled items "
                f"({len(getattr(pools, name))} run(s)): using what there is"
            )
    unused = len(spare) - lent
    if unused:
        pools.notes.append(f"{unused} run(s) left unused: their pool was full")
    return pools


def needed_items(pools: Pools, min_confirmation: int) -> int:
    """Labelled items still to record before anything can be confirmed (0: enough).

    The confirmation pool needs ``min_confirmation`` items (see
    :func:`prefect_genopt.optimize.search.stats.min_confirmation_items` for the rule), or
    to be full when its target size is smaller (a pool set that small is the user's
    choice; more runs would not enter it). New runs land in the confirmation pool only in
    proportion to its share of the three target sizes, so the missing items are divided
    by that share: the answer is how many labelled items to record in new runs, all
    pools together (rounded up).

    Example:
        >>> p = Pools(confirmation=["a"], items={"a": 20},
        ...           sizes={"evidence": (30, 30), "selection": (48, 48),
        ...                  "confirmation": (150, 20)})
        >>> needed_items(p, 25)  # 5 missing, and 150 / 228 of new items land there
        8
        >>> needed_items(p, 20)
        0
    """
    wanted_total = sum(w for w, _ in pools.sizes.values())
    wanted_conf = pools.sizes.get("confirmation", (0, 0))[0]
    target = min(min_confirmation, wanted_conf) if wanted_conf > 0 else min_confirmation
    missing = target - pools.n_items("confirmation")
    if missing <= 0:
        return 0
    if wanted_total <= 0 or wanted_conf <= 0:
        return missing
    return math.ceil(missing * wanted_total / wanted_conf)


_POOL_RUNS = """
SELECT r.run_id, r.param_set_id, r.start_time, r.inputs, i.n_items
FROM runs r JOIN (
    SELECT run_id, count(DISTINCT item_key) AS n_items FROM feedback
    WHERE pipeline = ? AND kpi = ? AND item_key IS NOT NULL AND value IS NOT NULL
      AND step IS NULL
    GROUP BY run_id
) i USING (run_id)
WHERE r.pipeline = ? AND r.status = 'completed' AND list_contains(?, r.arm)
  AND r.param_set_id IS NOT NULL AND r.inputs IS NOT NULL
ORDER BY r.start_time DESC, r.run_id
LIMIT ? OFFSET ?
"""


def pool_runs(
    wh: Warehouse,
    pipeline: str,
    kpi: str,
    *,
    limit: int,
    arms: Sequence[str] = PRODUCTION_ARMS,
) -> list[RunInfo]:
    """The newest ``limit`` recorded runs the pools may use, newest first.

    A run qualifies when it completed on a production arm (``arms``: stable and canary
    by default; never a replay's), has per-item feedback on ``kpi`` (``n_items`` counts
    its distinct labelled items) and inputs the replay gate can replay
    (:func:`prefect_genopt.replay.gate.replayable_inputs`). Runs of the stable param set
    and of older param sets both qualify; each carries its ``param_set_id`` and its
    :func:`fingerprint` (the step versions and task models it was recorded with).

    Args:
        wh: The warehouse.
        pipeline: The pipeline.
        kpi: The per-item KPI.
        limit: Most runs returned (the setting that replaces the gate's fixed 50).
        arms: The arms whose runs count.
    """
    out: list[RunInfo] = []
    offset, page = 0, max(limit, 1)
    while len(out) < limit:
        rows = wh.sql(_POOL_RUNS, [pipeline, kpi, pipeline, list(arms), page, offset])
        for r in rows:
            if replayable_inputs(r["inputs"]) is None:
                continue
            out.append(
                RunInfo(
                    run_id=r["run_id"],
                    param_set_id=r["param_set_id"],
                    n_items=int(r["n_items"]),
                    start_time=r["start_time"],
                )
            )
            if len(out) >= limit:
                break
        if len(rows) < page:
            break
        offset += page
    prints = run_fingerprints(wh, [r.run_id for r in out])
    return [
        RunInfo(r.run_id, r.param_set_id, r.n_items, r.start_time, prints.get(r.run_id))
        for r in out
    ]

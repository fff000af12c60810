"""Canary analysis: how often genopt's rollout rules roll back, promote or pause, and
how many items they consume, on simulated KPI streams with fixed seeds.

Each simulated rollout is a stream of items. Item ``i`` has a routing draw ``u_i``
(the item hash) and a KPI draw; it goes to the canary when ``u_i`` is below the
canary's current weight. The KPI is Bernoulli (stable p = 0.80) or normal (stable
mean 0.80, sd 0.15); the candidate is equal (A/A), 2%, 5% or 10% worse, or 5% better
(relative). Rollout ``i`` draws from ``random.Random(f"{seed_base + i}:{kpi}")``
whatever the rule and the candidate, so every rule sees the same items, hashes and
KPI draws (common random numbers); a rule's routing decides which of them land on
which arm. Stable and candidate KPIs are coupled per item (the same uniform or
normal draw), which changes nothing for one rule: each item is on one arm only.

Three rules, all checking every ``--interval`` items:

1. **genopt**: the default :class:`~prefect_genopt.rollout.plan.RolloutPlan`
   (10% -> 25% -> 50%, tolerance 5%, alpha 0.01, beta 0.05, ...), through
   :func:`~prefect_genopt.rollout.state.start` and one
   :func:`~prefect_genopt.rollout.analysis.assess` +
   :func:`~prefect_genopt.rollout.state.decide` per check, on running sums per arm
   since the rollout start (what the controller measures).
2. **fixed threshold** (Flagger's ``advanceCanary``): the same steps; each check
   compares the canary's mean over that check's items only with stable's over the
   same items and fails when ``canary < stable * (1 - t)``; a passing check advances
   one step (after the last step: promote); the rollout is rolled back when failed
   checks reach 2 (Flagger's default ``threshold`` is 5; 2 matches genopt's
   ``failure_limit``). Failed checks are never reset (as in Flagger); a check with
   an empty arm fails (Flagger's "no values found"). ``t`` is calibrated on separate
   seeds so that the A/A rollback rate is at most ``max(genopt's measured A/A rate,
   1%)``. Variants hold each step for ``k`` passing checks, or check every ``w``
   intervals (a longer Flagger ``interval``); each is calibrated the same way.
3. **fixed horizon**: 50% of items on the canary until both arms have ``N`` items,
   then one one-sided Welch z-test at alpha 0.01 for "candidate worse": rollback if
   significant, else promote. ``N`` is the standard power formula for a 5% relative
   regression with 95% power, from the stable variance.

An extra, clearly labelled row runs the same default plan with a check every 500
items (``--extra-every 5``; ``--extra-every ''`` drops it): the plan's
``inconclusive_limit`` counts checks, so the check interval sets how many items a
rollout gets before it pauses.

Run (single process; the full run takes a few minutes on one core)::

    python -m bench.bench_canary             # 1000 rollouts per scenario
    python -m bench.bench_canary --quick     # 100 rollouts (smoke check)
    python -m bench.bench_canary --profile   # cProfile of a small slice only

Writes ``bench/results/bench_canary.json`` (with ``--quick``: ``bench_canary.quick.json``
in the work directory, see :mod:`bench.common`) and prints one Markdown table per KPI
type and the target lines.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
import statistics
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from random import Random
from typing import Any

from bench import common
from prefect_genopt.rollout.analysis import ArmStats, assess
from prefect_genopt.rollout.plan import RolloutPlan
from prefect_genopt.rollout.state import RoutingState, decide, start

NAME = "bench_canary"
STABLE_MEAN = 0.80
NORMAL_SD = 0.15
#: (label, relative change of the candidate's mean)
SCENARIOS: tuple[tuple[str, float], ...] = (
    ("A/A", 0.0),
    ("-2%", -0.02),
    ("-5%", -0.05),
    ("-10%", -0.10),
    ("+5%", 0.05),
)
BENCH_SEED_BASE = 1_000_000
CALIB_SEED_BASE = 9_000_000
FLAGGER_FAILURE_LIMIT = 2
#: the fixed-threshold variants: (passing checks per step k, intervals per check w)
FLAGGER_CONFIGS: tuple[tuple[int, int], ...] = ((1, 1), (3, 1), (10, 1), (1, 10), (3, 10), (1, 30))
FH_WEIGHT = 0.5
FH_ALPHA = 0.01
FH_POWER = 0.95
FH_REGRESSION = 0.05
NOW = "2026-01-01T00:00:00+00:00"
TERMINAL = {"promote": "promote", "abort": "rollback", "pause": "pause"}
OUTCOMES = ("rollback", "promote", "pause", "capped")

Sums = tuple[float, float, float]  # count, sum, sum of squares


@dataclass(frozen=True)
class Kpi:
    """A KPI type: Bernoulli (``sd`` None) or normal with a fixed sd."""

    name: str
    sd: float | None

    @property
    def bernoulli(self) -> bool:
        return self.sd is None

    def variance(self, mean: float) -> float:
        return mean * (1 - mean) if self.sd is None else self.sd**2


KPIS = (Kpi("bernoulli", None), Kpi("normal", NORMAL_SD))


def candidate_mean(rel: float) -> float:
    return round(STABLE_MEAN * (1 + rel), 6)


LEVELS: tuple[float, ...] = tuple(
    sorted({STABLE_MEAN, *(candidate_mean(rel) for _, rel in SCENARIOS)})
)


class Stream:
    """The items of one simulated rollout, summarized per block of ``block`` items.

    For each block and each routing bin (``u`` below each weight edge) it keeps
    prefix sums over the bins, so the arms' sums at any weight that is an edge, and
    for any candidate mean, come out of a few additions. Bernoulli: per bin the
    count and, for every level ``p``, how many items have ``v < p``; normal: count,
    sum of z and sum of z^2 (a value is ``mean + sd * z``).
    """

    def __init__(
        self, kpi: Kpi, seed: int, block: int, edges: Sequence[float], keep_raw: bool
    ) -> None:
        self.kpi = kpi
        self.seed = seed
        self.block = block
        self.edges = tuple(edges)
        self.nb = len(self.edges) + 1
        self.f = 1 + len(LEVELS) if kpi.bernoulli else 3
        self._rng = Random(f"{seed}:{kpi.name}")
        self._data: list[float] = []
        self._raw: list[tuple[list[float], list[float]]] = []
        self._keep_raw = keep_raw
        self.blocks = 0

    def _accumulate(self, us: Sequence[float], vs: Sequence[float]) -> list[float]:
        """Prefix-over-bins sums of some items (the layout of one block)."""
        nb, f, edges = self.nb, self.f, self.edges
        acc = [0.0] * (nb * f)
        if self.kpi.bernoulli:
            hist = [0] * (nb * (len(LEVELS) + 1))
            width = len(LEVELS) + 1
            for u, v in zip(us, vs, strict=True):
                hist[bisect_right(edges, u) * width + bisect_right(LEVELS, v)] += 1
            for b in range(nb):
                row = hist[b * width : (b + 1) * width]
                acc[b * f] = float(sum(row))
                below = 0
                for m in range(len(LEVELS)):
                    below += row[m]  # items with v < LEVELS[m]
                    acc[b * f + 1 + m] = float(below)
        else:
            for u, z in zip(us, vs, strict=True):
                base = bisect_right(edges, u) * f
                acc[base] += 1.0
                acc[base + 1] += z
                acc[base + 2] += z * z
        for b in range(1, nb):  # prefix over bins: bin b holds all items with u < edge b
            for k in range(f):
                acc[b * f + k] += acc[(b - 1) * f + k]
        return acc

    def ensure(self, blocks: int) -> None:
        rng = self._rng
        while self.blocks < blocks:
            us = [rng.random() for _ in range(self.block)]
            if self.kpi.bernoulli:
                vs = [rng.random() for _ in range(self.block)]
            else:
                vs = [rng.gauss(0.0, 1.0) for _ in range(self.block)]
            self._data.extend(self._accumulate(us, vs))
            if self._keep_raw:
                self._raw.append((us, vs))
            self.blocks += 1

    def raw(self, j: int) -> tuple[list[float], list[float]]:
        self.ensure(j + 1)
        return self._raw[j]

    def arm_sums(self, vec: Sequence[float], off: int, wi: int, cand: float) -> tuple[Sums, Sums]:
        """(stable, canary) sums of the items in ``vec[off:]`` at weight ``edges[wi]``."""
        f = self.f
        c = off + wi * f
        t = off + (self.nb - 1) * f
        nc = vec[c]
        ns = vec[t] - nc
        if self.kpi.bernoulli:
            lc = 1 + LEVELS.index(cand)
            ls = 1 + LEVELS.index(STABLE_MEAN)
            sc = vec[c + lc]
            ss = vec[t + ls] - vec[c + ls]
            return (ns, ss, ss), (nc, sc, sc)
        sd = self.kpi.sd or 0.0
        zc, qc = vec[c + 1], vec[c + 2]
        zs, qs = vec[t + 1] - zc, vec[t + 2] - qc

        def values(n: float, z: float, q: float, mean: float) -> Sums:
            return (n, n * mean + sd * z, n * mean * mean + 2 * mean * sd * z + sd * sd * q)

        return values(ns, zs, qs, STABLE_MEAN), values(nc, zc, qc, cand)

    def arms(self, j: int, wi: int, cand: float) -> tuple[Sums, Sums]:
        """(stable, canary) sums of block ``j`` at weight ``edges[wi]``."""
        self.ensure(j + 1)
        return self.arm_sums(self._data, j * self.nb * self.f, wi, cand)


@dataclass
class Outcome:
    outcome: str  # rollback | promote | pause | capped
    items: int
    canary_items: int
    failed_checks: int = 0  # checks that failed along the way (genopt, fixed threshold)


def _add(a: Sums, b: Sums) -> Sums:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2])


def _stats(s: Sums) -> ArmStats:
    return ArmStats.from_sums(int(s[0]), s[1], s[2])


# ---------------------------------------------------------------------------------------
# the three rules
# ---------------------------------------------------------------------------------------


def run_genopt(
    stream: Stream,
    cand: float,
    plan: RolloutPlan,
    every: int,
    max_items: int,
    stratified: bool = True,
) -> Outcome:
    """genopt's controller: one assess + decide every ``every`` blocks, on sums since the
    start and per step (the arms are compared within steps, as the controller does)."""
    state = RoutingState(pipeline="bench", stable="ps_stable")
    state, _ = start(state, "ro_bench", "ps_candidate", plan, NOW)
    stable: Sums = (0.0, 0.0, 0.0)
    canary: Sums = (0.0, 0.0, 0.0)
    zero: Sums = (0.0, 0.0, 0.0)
    per_step: list[tuple[Sums, Sums]] = [(zero, zero)]  # sums of each step, for strata
    j = 0
    items = 0
    while items + every * stream.block <= max_items:
        wi = stream.edges.index(state.weight)
        while len(per_step) <= state.step:
            per_step.append((zero, zero))
        for _ in range(every):
            s, c = stream.arms(j, wi, cand)
            stable, canary = _add(stable, s), _add(canary, c)
            ps, pc = per_step[state.step]
            per_step[state.step] = (_add(ps, s), _add(pc, c))
            j += 1
        items += every * stream.block
        strata = [(_stats(a), _stats(b)) for a, b in per_step] if stratified else None
        a = assess(_stats(stable), _stats(canary), plan, strata=strata)
        state, d = decide(state, a, NOW)
        if d.kind in TERMINAL:
            return Outcome(TERMINAL[d.kind], items, int(canary[0]), state.failed_checks)
    return Outcome("capped", items, int(canary[0]), state.failed_checks)


@dataclass(frozen=True)
class Flagger:
    """Flagger-style fixed threshold: ``k`` passing checks per step, a check every
    ``w`` blocks judging only that check's items, fail if canary < stable * (1 - t)."""

    k: int
    w: int
    steps: tuple[float, ...]
    failure_limit: int = FLAGGER_FAILURE_LIMIT

    @property
    def key(self) -> str:
        return f"threshold_k{self.k}_w{self.w}"

    def label(self, block: int, t: float) -> str:
        per_step = "1 check/step" if self.k == 1 else f"{self.k} checks/step"
        return f"fixed threshold t={t:.3f}, {per_step}, check every {self.w * block} items"


def run_flagger(stream: Stream, cand: float, cfg: Flagger, t: float, max_items: int) -> Outcome:
    step = passes = failed = 0
    j = items = canary_items = 0
    while items + cfg.w * stream.block <= max_items:
        wi = stream.edges.index(cfg.steps[step])
        ns = ss = nc = sc = 0.0
        for _ in range(cfg.w):
            s, c = stream.arms(j, wi, cand)
            ns, ss, nc, sc = ns + s[0], ss + s[1], nc + c[0], sc + c[1]
            j += 1
        items += cfg.w * stream.block
        canary_items += int(nc)
        ok = ns > 0 and nc > 0 and sc / nc >= (ss / ns) * (1 - t)
        if ok:
            passes += 1
            if passes >= cfg.k:
                if step == len(cfg.steps) - 1:
                    return Outcome("promote", items, canary_items, failed)
                step, passes = step + 1, 0
        else:
            failed += 1
            if failed >= cfg.failure_limit:
                return Outcome("rollback", items, canary_items, failed)
    return Outcome("capped", items, canary_items, failed)


def fixed_horizon_n(kpi: Kpi) -> int:
    """Items per arm for a one-sided test at FH_ALPHA with FH_POWER against a
    FH_REGRESSION relative regression, from the stable variance (both arms)."""
    nd = statistics.NormalDist()
    z = nd.inv_cdf(1 - FH_ALPHA) + nd.inv_cdf(FH_POWER)
    delta = FH_REGRESSION * STABLE_MEAN
    return math.ceil(z * z * 2 * kpi.variance(STABLE_MEAN) / (delta * delta))


@dataclass(frozen=True)
class HorizonStop:
    """Where a fixed-horizon rollout stops (the same for every candidate)."""

    blocks: int  # whole blocks before the stopping block
    partial: list[float]  # sums of the stopping block's items up to the stop
    items: int


def fixed_horizon_stop(stream: Stream, n: int, wi: int) -> HorizonStop:
    """The first item at which both arms have ``n`` items (weight ``edges[wi]``)."""
    w = stream.edges[wi]
    ns = nc = 0
    j = 0
    while True:
        us, vs = stream.raw(j)
        block_c = sum(1 for u in us if u < w)
        if min(ns + len(us) - block_c, nc + block_c) >= n:
            for i, u in enumerate(us):
                if u < w:
                    nc += 1
                else:
                    ns += 1
                if min(ns, nc) >= n:
                    part = stream._accumulate(us[: i + 1], vs[: i + 1])
                    return HorizonStop(j, part, j * stream.block + i + 1)
        ns += len(us) - block_c
        nc += block_c
        j += 1


def run_fixed_horizon(
    stream: Stream, cand: float, stop: HorizonStop, wi: int, z_crit: float
) -> Outcome:
    stable: Sums = (0.0, 0.0, 0.0)
    canary: Sums = (0.0, 0.0, 0.0)
    for j in range(stop.blocks):
        s, c = stream.arms(j, wi, cand)
        stable, canary = _add(stable, s), _add(canary, c)
    s, c = stream.arm_sums(stop.partial, 0, wi, cand)
    st, ca = _stats(_add(stable, s)), _stats(_add(canary, c))
    se = math.sqrt(st.var / st.n + ca.var / ca.n)
    z = (ca.mean - st.mean) / se if se > 0 else (0.0 if ca.mean == st.mean else -math.inf)
    return Outcome("rollback" if z < -z_crit else "promote", stop.items, ca.n)


# ---------------------------------------------------------------------------------------
# summaries
# ---------------------------------------------------------------------------------------


def summarize(outs: Sequence[Outcome]) -> dict[str, Any]:
    n = len(outs)
    items = sorted(o.items for o in outs)
    canary = sorted(o.canary_items for o in outs)
    rates = {k: sum(o.outcome == k for o in outs) / n for k in OUTCOMES}
    aborted = [o.items for o in outs if o.outcome == "rollback"]

    def p90(v: Sequence[int]) -> float:
        return statistics.quantiles(v, n=10, method="inclusive")[8] if len(v) > 1 else v[0]

    return {
        "n": n,
        **{f"{k}_rate": r for k, r in rates.items()},
        "items_median": statistics.median(items),
        "items_p90": p90(items),
        "canary_items_median": statistics.median(canary),
        "canary_items_p90": p90(canary),
        "items_to_rollback_median": statistics.median(aborted) if aborted else None,
        # for genopt's A/A this is what the plan's alpha bounds (any check ever failing)
        "any_failed_check_rate": sum(o.failed_checks > 0 for o in outs) / n,
        # one letter per rollout (R rollback, P promote, S pause, C capped), in seed order
        "outcomes": _codes(outs),
    }


def _codes(outs: Sequence[Outcome]) -> str:
    code = {"rollback": "R", "promote": "P", "pause": "S", "capped": "C"}
    return "".join(code[o.outcome] for o in outs)


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown_table(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    head = (
        "| rule | candidate | rollback | promote | pause | capped | items p50 | items p90 "
        "| canary items p50 |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for rule, scen, s in rows:
        lines.append(
            f"| {rule} | {scen} | {pct(s['rollback_rate'])} | {pct(s['promote_rate'])} "
            f"| {pct(s['pause_rate'])} | {pct(s['capped_rate'])} | {s['items_median']:,.0f} "
            f"| {s['items_p90']:,.0f} | {s['canary_items_median']:,.0f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    rollouts: int
    calib_rollouts: int
    interval: int
    max_items: int
    plan: RolloutPlan
    extra_every: tuple[int, ...]  # extra genopt rows checking every k intervals


def calibrate(
    kpi: Kpi,
    cfg: Flagger,
    streams: list[Stream],
    target: float,
    max_items: int,
    iterations: int = 14,
) -> dict[str, Any]:
    """The smallest threshold (bisection on [0, 1]) whose A/A rollback rate on the
    calibration streams is at most ``target``; also its -5% detection there."""
    aa = STABLE_MEAN

    def runs(t: float, cand: float) -> list[Outcome]:
        return [run_flagger(s, cand, cfg, t, max_items) for s in streams]

    def rate(t: float, cand: float = aa) -> float:
        outs = runs(t, cand)
        return sum(o.outcome == "rollback" for o in outs) / len(outs)

    lo, hi = 0.0, 1.0
    hi_rate = rate(hi)
    if hi_rate > target:
        raise SystemExit(f"{cfg.key}: even t=1 rolls back {hi_rate:.1%} of A/A rollouts")
    for _ in range(iterations):
        mid = (lo + hi) / 2
        r = rate(mid)
        if r <= target:
            hi, hi_rate = mid, r
        else:
            lo = mid
    t = math.ceil(hi * 10_000) / 10_000
    minus5 = runs(t, candidate_mean(-0.05))
    return {
        "threshold": t,
        "calib_aa_rollback": rate(t),
        "calib_minus5_rollback": sum(o.outcome == "rollback" for o in minus5) / len(minus5),
        "calib_minus5_items_median": statistics.median(o.items for o in minus5),
        "target_aa_rollback": target,
        "calib_rollouts": len(streams),
    }


def run_kpi(kpi: Kpi, p: Params, log: Callable[[str], None]) -> dict[str, Any]:
    plan = p.plan
    fh_n = fixed_horizon_n(kpi)
    flaggers = [Flagger(k, w, plan.steps) for k, w in FLAGGER_CONFIGS]
    edges = tuple(sorted({*plan.steps, FH_WEIGHT}))
    fh_wi = edges.index(FH_WEIGHT)
    z_crit = statistics.NormalDist().inv_cdf(1 - FH_ALPHA)
    cands = [(label, candidate_mean(rel)) for label, rel in SCENARIOS]
    results: dict[str, dict[str, list[Outcome]]] = {}

    # 1. genopt (the default plan, and extra check intervals) on the benchmark seeds
    t0 = time.perf_counter()
    genopt_keys = ["genopt", "genopt_pooled", *(f"genopt_every{e}" for e in p.extra_every)]
    for key in genopt_keys:
        results[key] = {label: [] for label, _ in cands}
    for i in range(p.rollouts):
        stream = Stream(kpi, BENCH_SEED_BASE + i, p.interval, edges, keep_raw=False)
        for label, cand in cands:
            results["genopt"][label].append(run_genopt(stream, cand, plan, 1, p.max_items))
            pooled = run_genopt(stream, cand, plan, 1, p.max_items, stratified=False)
            results["genopt_pooled"][label].append(pooled)
            for e in p.extra_every:
                out = run_genopt(stream, cand, plan, e, p.max_items)
                results[f"genopt_every{e}"][label].append(out)
    genopt_s = time.perf_counter() - t0
    aa = results["genopt"]["A/A"]
    genopt_aa = sum(o.outcome == "rollback" for o in aa) / len(aa)
    target = max(genopt_aa, 0.01)
    log(f"  {kpi.name}: genopt done in {genopt_s:.1f}s; A/A rollback {genopt_aa:.2%}")

    # 2. calibrate the fixed-threshold rules on separate seeds
    t0 = time.perf_counter()
    calib_streams = [
        Stream(kpi, CALIB_SEED_BASE + i, p.interval, edges, keep_raw=False)
        for i in range(p.calib_rollouts)
    ]
    calib: dict[str, dict[str, Any]] = {}
    for cfg in flaggers:
        calib[cfg.key] = {
            "k": cfg.k,
            "w": cfg.w,
            **calibrate(kpi, cfg, calib_streams, target, p.max_items),
        }
        c = calib[cfg.key]
        log(
            f"  {kpi.name}: {cfg.key}: t={c['threshold']:.4f}, calib A/A "
            f"{c['calib_aa_rollback']:.2%}, -5% {c['calib_minus5_rollback']:.2%}"
        )
    del calib_streams
    calib_s = time.perf_counter() - t0

    # 3. fixed-threshold rules and the fixed horizon on the benchmark seeds
    t0 = time.perf_counter()
    for cfg in flaggers:
        results[cfg.key] = {label: [] for label, _ in cands}
    results["fixed_horizon"] = {label: [] for label, _ in cands}
    for i in range(p.rollouts):
        stream = Stream(kpi, BENCH_SEED_BASE + i, p.interval, edges, keep_raw=True)
        stop = fixed_horizon_stop(stream, fh_n, fh_wi)
        for label, cand in cands:
            for cfg in flaggers:
                t = calib[cfg.key]["threshold"]
                results[cfg.key][label].append(run_flagger(stream, cand, cfg, t, p.max_items))
            results["fixed_horizon"][label].append(
                run_fixed_horizon(stream, cand, stop, fh_wi, z_crit)
            )
    others_s = time.perf_counter() - t0

    primary = flaggers[0]
    variants = flaggers[1:]
    # the variant shown next to the primary: the cheapest (median items at -5% on the
    # calibration seeds) that rolls back >= 95% of -5% rollouts there, else the best one
    reach = [c for c in variants if calib[c.key]["calib_minus5_rollback"] >= 0.95]
    if reach:
        best = min(reach, key=lambda c: calib[c.key]["calib_minus5_items_median"])
    else:
        best = max(variants, key=lambda c: calib[c.key]["calib_minus5_rollback"])
    labels = {
        "genopt": "genopt (default plan)",
        "genopt_pooled": "extra: genopt, arms pooled over steps (no strata)",
        **{
            f"genopt_every{e}": f"extra: genopt (default plan), check every {e * p.interval} items"
            for e in p.extra_every
        },
        **{c.key: c.label(p.interval, calib[c.key]["threshold"]) for c in flaggers},
        "fixed_horizon": f"fixed horizon N={fh_n:,}/arm at {FH_WEIGHT:.0%}",
    }
    summaries = {
        key: {label: summarize(outs) for label, outs in per.items()} for key, per in results.items()
    }
    shown = ["genopt", "genopt_pooled", *(f"genopt_every{e}" for e in p.extra_every), primary.key]
    if best.key not in shown:
        shown.append(best.key)
    shown.append("fixed_horizon")
    rows = [(labels[k], label, summaries[k][label]) for k in shown for label, _ in cands]
    return {
        "kpi": kpi.name,
        "stable_mean": STABLE_MEAN,
        "sd": kpi.sd,
        "candidate_means": dict(cands),
        "fixed_horizon_n_per_arm": fh_n,
        "fixed_horizon_z_crit": z_crit,
        "genopt_aa_rollback": genopt_aa,
        "flagger_target_aa_rollback": target,
        "flagger_calibration": calib,
        "flagger_primary": primary.key,
        "flagger_best_variant": best.key,
        "labels": labels,
        "table_rules": shown,
        "table_markdown": markdown_table(rows),
        "summaries": summaries,
        "seconds": {"genopt": genopt_s, "calibration": calib_s, "others": others_s},
    }


def targets(res: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, met, detail) lines for one KPI type."""
    s = res["summaries"]
    name = res["kpi"]
    g = s["genopt"]
    out: list[tuple[str, bool, str]] = []
    aa = g["A/A"]["rollback_rate"]
    out.append((f"[{name}] A/A false rollback <= 1% (genopt, default plan)", aa <= 0.01, pct(aa)))
    det = g["-5%"]["rollback_rate"]
    out.append(
        (
            f"[{name}] 5% regression rolled back with >= 95% probability (genopt)",
            det >= 0.95,
            f"{pct(det)} rolled back, {pct(g['-5%']['promote_rate'])} promoted, "
            f"{pct(g['-5%']['pause_rate'])} paused",
        )
    )
    for key in dict.fromkeys([res["flagger_primary"], res["flagger_best_variant"]]):
        f = s[key]["-5%"]
        gi, fi = g["-5%"]["items_median"], f["items_median"]
        out.append(
            (
                f"[{name}] genopt consumes fewer items than {res['labels'][key]} at the same "
                "false-rollback budget (5% regression, median items)",
                gi < fi,
                f"genopt {gi:,.0f} vs {fi:,.0f} items; rollback {pct(det)} vs "
                f"{pct(f['rollback_rate'])}; A/A rollback {pct(aa)} vs "
                f"{pct(s[key]['A/A']['rollback_rate'])}",
            )
        )
    return out


DRIFT_DROP = 0.10  # the KPI of both arms falls by this much (absolute) over DRIFT_ITEMS
DRIFT_ITEMS = 4000


def run_drift(seed: int, plan: RolloutPlan, stratified: bool, max_items: int, every: int) -> str:
    """An A/A rollout of a normal KPI whose mean drifts down for both arms alike (the
    same items, a worse day): item by item, a check every ``every`` items."""
    rng = Random(f"drift:{seed}")
    state, _ = start(RoutingState(pipeline="bench", stable="a"), "r", "b", plan, NOW)
    zero: Sums = (0.0, 0.0, 0.0)
    per_step: list[list[Sums]] = [[zero, zero]]
    items = 0
    while items < max_items:
        for _ in range(every):
            mean = STABLE_MEAN - DRIFT_DROP * min(items / DRIFT_ITEMS, 1.0)
            x = rng.gauss(mean, NORMAL_SD)
            arm = 1 if rng.random() < state.weight else 0
            while len(per_step) <= state.step:
                per_step.append([zero, zero])
            per_step[state.step][arm] = _add(per_step[state.step][arm], (1.0, x, x * x))
            items += 1
        stable = _stats(_sum_all(ps[0] for ps in per_step))
        canary = _stats(_sum_all(ps[1] for ps in per_step))
        strata = [(_stats(a), _stats(b)) for a, b in per_step] if stratified else None
        state, d = decide(state, assess(stable, canary, plan, strata=strata), NOW)
        if d.kind in TERMINAL:
            return TERMINAL[d.kind]
    return "capped"


def _sum_all(parts: Iterable[Sums]) -> Sums:
    total: Sums = (0.0, 0.0, 0.0)
    for x in parts:
        total = _add(total, x)
    return total


def drift_experiment(rollouts: int, p: Params) -> dict[str, Any]:
    """A/A under drift: the false rollback rate with and without comparing within steps."""
    out: dict[str, Any] = {"rollouts": rollouts, "drop": DRIFT_DROP, "over_items": DRIFT_ITEMS}
    for name, stratified in (("within steps (default)", True), ("pooled over steps", False)):
        outcomes = [
            run_drift(i, p.plan, stratified, p.max_items, p.interval) for i in range(rollouts)
        ]
        out[name] = {k: outcomes.count(k) / rollouts for k in ("rollback", "promote", "pause")}
    return out


def profile(p: Params) -> None:
    """cProfile a small slice (50 Bernoulli rollouts, genopt and one fixed threshold)."""
    kpi = KPIS[0]
    edges = tuple(sorted({*p.plan.steps, FH_WEIGHT}))
    cfg = Flagger(1, 1, p.plan.steps)

    def work() -> None:
        for i in range(50):
            stream = Stream(kpi, BENCH_SEED_BASE + i, p.interval, edges, keep_raw=True)
            for _, rel in SCENARIOS:
                run_genopt(stream, candidate_mean(rel), p.plan, 1, p.max_items)
                run_flagger(stream, candidate_mean(rel), cfg, 0.2, p.max_items)

    prof = cProfile.Profile()
    prof.runcall(work)
    pstats.Stats(prof).sort_stats("cumulative").print_stats(15)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 rollouts per scenario")
    ap.add_argument("--rollouts", type=int, default=None, help="per scenario (default 1000)")
    ap.add_argument(
        "--calib-rollouts",
        type=int,
        default=None,
        help="A/A rollouts (separate seeds) to calibrate the fixed threshold (default 2000)",
    )
    ap.add_argument("--interval", type=int, default=100, help="items between checks")
    ap.add_argument("--max-items", type=int, default=50_000, help="cap per rollout")
    ap.add_argument(
        "--extra-every",
        default="5",
        help="extra genopt rows checking every k intervals (comma list; '' for none)",
    )
    ap.add_argument("--profile", action="store_true", help="profile a small slice and exit")
    args = ap.parse_args(argv)
    rollouts = args.rollouts or (100 if args.quick else 1000)
    calib_rollouts = args.calib_rollouts or (400 if args.quick else 2000)
    extra = tuple(int(x) for x in args.extra_every.split(",") if x.strip())
    p = Params(
        rollouts=rollouts,
        calib_rollouts=calib_rollouts,
        interval=args.interval,
        max_items=args.max_items,
        plan=RolloutPlan(kpi="kpi"),
        extra_every=extra,
    )
    if args.profile:
        profile(p)
        return 0

    info = common.machine_info()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    command = common.command_line("bench_canary", argv)
    print(
        f"bench_canary: {rollouts} rollouts per scenario, {calib_rollouts} calibration A/A "
        f"rollouts, a check every {p.interval} items, cap {p.max_items:,} items"
    )
    print(f"plan: {p.plan.describe()}")
    print(
        f"machine: {info['nproc']} cores, python {info['python']}, load {info['loadavg_at_start']}"
    )
    per_kpi = {}
    for kpi in KPIS:
        per_kpi[kpi.name] = run_kpi(kpi, p, print)
    drift = drift_experiment(max(100, rollouts // 2), p)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0

    for res in per_kpi.values():
        c = res["flagger_calibration"]
        print(f"\n### {res['kpi']} KPI\n")
        print(res["table_markdown"])
        print(
            f"\nfixed horizon: N = {res['fixed_horizon_n_per_arm']:,} per arm; fixed-threshold "
            f"target A/A rollback <= {pct(res['flagger_target_aa_rollback'])} (genopt measured "
            f"{pct(res['genopt_aa_rollback'])})"
        )
        g = res["summaries"]["genopt"]
        print(
            f"genopt A/A: a check failed at least once in {pct(g['A/A']['any_failed_check_rate'])}"
            f" of rollouts (the plan's alpha = {p.plan.alpha:g} bounds this); median items to a "
            f"rollback at -5%: {g['-5%']['items_to_rollback_median']:,.0f}"
        )
        print("\nfixed-threshold calibration (calibration seeds) and benchmark results:\n")
        print(
            "| k checks/step | check every | threshold t | calib A/A | bench A/A | bench -2% "
            "| bench -5% | bench -10% | bench +5% promote | items p50 at -5% |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key, cal in c.items():
            s = res["summaries"][key]
            print(
                f"| {cal['k']} | {cal['w'] * p.interval:,} | {cal['threshold']:.4f} "
                f"| {pct(cal['calib_aa_rollback'])} | {pct(s['A/A']['rollback_rate'])} "
                f"| {pct(s['-2%']['rollback_rate'])} | {pct(s['-5%']['rollback_rate'])} "
                f"| {pct(s['-10%']['rollback_rate'])} | {pct(s['+5%']['promote_rate'])} "
                f"| {s['-5%']['items_median']:,.0f} |"
            )
    print(
        f"\n### A/A under drift: normal KPI, both arms' mean falls by {DRIFT_DROP:g} over "
        f"{DRIFT_ITEMS:,} items ({drift['rollouts']} rollouts)\n"
    )
    print("| comparison | rollback | promote | pause |\n|---|---:|---:|---:|")
    for name in ("within steps (default)", "pooled over steps"):
        r = drift[name]
        print(f"| {name} | {pct(r['rollback'])} | {pct(r['promote'])} | {pct(r['pause'])} |")
    lines = [t for res in per_kpi.values() for t in targets(res)]
    print("\ntargets:")
    for text, met, detail in lines:
        print(f"- {text}: {'yes' if met else 'no'} ({detail})")
    print(f"\nwall time {wall:.1f}s, CPU {cpu:.1f}s")

    common.write_results(
        NAME,
        {
            "benchmark": NAME,
            "command": command,
            "machine": info,
            "params": {
                "rollouts_per_scenario": rollouts,
                "calib_rollouts": calib_rollouts,
                "interval_items": p.interval,
                "max_items": p.max_items,
                "plan": p.plan.model_dump(mode="json"),
                "extra_genopt_every_intervals": list(extra),
                "stable_mean": STABLE_MEAN,
                "normal_sd": NORMAL_SD,
                "scenarios": {label: rel for label, rel in SCENARIOS},
                "flagger": {
                    "steps": list(p.plan.steps),
                    "failure_limit": FLAGGER_FAILURE_LIMIT,
                    "configs_k_w": [list(x) for x in FLAGGER_CONFIGS],
                    "rule": "fail if canary mean < stable mean * (1 - t) over the check's "
                    "items; empty arm fails; advance after k passing checks; promote "
                    "after the last step; rollback at failure_limit failed checks (never reset)",
                    "calibration": "smallest t (bisection, 14 steps, rounded up to 1e-4) "
                    "with A/A rollback <= max(genopt A/A, 1%) on the calibration seeds",
                },
                "fixed_horizon": {
                    "weight": FH_WEIGHT,
                    "alpha_one_sided": FH_ALPHA,
                    "power": FH_POWER,
                    "regression": FH_REGRESSION,
                },
            },
            "seeds": {
                "bench": f"rollout i uses random.Random(f'{{{BENCH_SEED_BASE} + i}}:{{kpi}}'), "
                f"i = 0..{rollouts - 1}, the same for every rule and candidate",
                "calibration": f"random.Random(f'{{{CALIB_SEED_BASE} + i}}:{{kpi}}'), "
                f"i = 0..{calib_rollouts - 1}",
                "outcome codes": "R rollback, P promote, S pause, C capped",
            },
            "results": per_kpi,
            "drift_aa": drift,
            "targets": [{"target": t, "met": m, "detail": d} for t, m, d in lines],
            "wall_s": wall,
            "cpu_s": cpu,
        },
        quick=args.quick,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

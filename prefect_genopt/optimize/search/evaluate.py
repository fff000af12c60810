"""Scores by replay: a candidate's per-item KPI on recorded items, cached.

:class:`ReplayEvaluator` scores a :class:`~.core.Candidate` on item ids
(``"<run_id>:<item_key>"``) the way the replay gate judges one
(:mod:`prefect_genopt.replay.gate`): it re-runs the pipeline's recorded entrypoint on the
recorded inputs of the runs holding those items, with the candidate's values pinned on
the ``replay`` arm (:func:`~prefect_genopt.replay.gate.replay_run`), and reads back the
per-item feedback the pipeline gives itself
(:func:`~prefect_genopt.replay.gate.item_values`). One replay of a run scores all of its
items, so a later request for another of its items costs nothing. Rules:

* **Failures.** An item the replay did not score (the run crashed before it) or scored
  NaN gets the failure score (0 when higher is better). Items a side-effecting task
  skipped (``@genopt.task(side_effect=True)`` with no recorded output:
  :class:`~prefect_genopt.pipeline.SideEffectSkipped`) are not scored and are counted in
  :attr:`ReplayEvaluator.skipped`.
* **Recorded scores.** A run recorded under the candidate's own param set (the parent,
  usually) with the same step versions and task model as the code loaded now
  (:func:`code_fingerprint` equals the run's
  :attr:`~.core.RunInfo.fingerprint`) is not replayed: its recorded per-item feedback on
  that param set's stable arm is the score (source ``recorded``). Otherwise the parent is
  replayed like any candidate.
* **The cache.** Scores are cached by (param set id, item id, fingerprint) where the
  fingerprint covers the step versions and the task model (:class:`ScoreCache`: SQLite
  in WAL mode with a busy timeout, safe with two processes writing; by default the file
  beside the warehouse, ``<warehouse>.scores.sqlite``, see :func:`score_cache_path`).
  Calls made at a temperature above 0 are never cached, nor calls that do not say their
  temperature (the provider's default may sample): read from the replayed run's LLM spans
  (``gen_ai.request.temperature``).
* **The budget.** Every LLM span of a replayed run is a task-model call charged to the
  night's :class:`~.core.Budget` with its USD (litellm's cost of the call, where the task
  model is priced: a paid task model spends the USD budget as the optimizer does); a
  cached score charges the calls it cost when it was measured, but no USD (no call is
  made). Before each replay the evaluator checks that the budget can pay for the run (its
  items times the calls, and the USD, per item measured so far) and otherwise stops
  cleanly: :attr:`ReplayEvaluator.stop_reason` says why, and
  :meth:`~ReplayEvaluator.score` returns what it has.
* **Upstream steps.** A recording step whose inputs, version, params read and model
  are unchanged returns its recorded output on the replay instead of running
  (``reuse_recorded``, on by default: :func:`~prefect_genopt.replay.steps.reuse_recorded_steps`),
  so a multi-step pipeline tuned at one step does not re-run the steps upstream of it;
  the step tuned (its params changed) and the steps whose inputs it changes do run.
* **Order.** :meth:`~ReplayEvaluator.score` evaluates one candidate on all of its items
  before it returns (runs in the order of the items asked), so a local model reuses the
  candidate's shared prompt prefix.

Example:
    >>> import tempfile, pathlib
    >>> cache = ScoreCache(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite")
    >>> cache.put("ps_a", "fp_1", {"r1:T-1": (1.0, 1, 0.0), "r1:T-2": (0.0, 1, 0.0)})
    >>> sorted(cache.get("ps_a", ["r1:T-1", "r1:T-9"], "fp_1").items())
    [('r1:T-1', (1.0, 1, 0.0))]
    >>> cache.get("ps_a", ["r1:T-1"], "fp_2")
    {}
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import math
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_genopt.optimize.search.core import (
    Budget,
    Candidate,
    RunInfo,
    Scores,
    item_id,
    split_item_id,
)
from prefect_genopt.pipeline import SIDE_EFFECT_SKIPPED
from prefect_genopt.replay.fingerprint import code_fingerprint
from prefect_genopt.replay.gate import (
    REPLAY_TAGS,
    item_values,
    pipeline_tag,
    replay_run,
    replayable_inputs,
)
from prefect_genopt.semconv import REPLAY
from prefect_genopt.warehouse import Warehouse, WarehouseBusyError

__all__ = [
    "ReplayEvaluator",
    "ScoreCache",
    "score_cache_path",
    "code_fingerprint",
    "task_budget_spent",
    "SOURCES",
    "CACHE_SUFFIX",
    "SEARCH_TAGS",
]

logger = logging.getLogger("prefect_genopt.optimize.search")

#: where a score came from (the ``source`` column of ``candidate_scores``)
SOURCES = ("replay", "recorded", "cache")
#: the Prefect tags of the search's replayed flow runs
SEARCH_TAGS = (*REPLAY_TAGS, "genopt-search")
#: the score cache's file name, appended to the warehouse file's
CACHE_SUFFIX = ".scores.sqlite"
#: seconds a writer waits on the cache's lock before giving up on one write
CACHE_BUSY_TIMEOUT_S = 30.0


def score_cache_path(warehouse_path: str | Path) -> Path:
    """The score cache beside a warehouse file: ``<warehouse>.scores.sqlite``.

    Example:
        >>> score_cache_path("data/warehouse.duckdb").name
        'warehouse.duckdb.scores.sqlite'
    """
    p = Path(warehouse_path)
    return p.with_name(p.name + CACHE_SUFFIX)


class ScoreCache:
    """Per-item scores by (param set id, item id, fingerprint), in a SQLite file.

    WAL mode with a busy timeout lets two processes (two nights of different pipelines, a
    benchmark's two workers) read and write it at once; each write is one short
    transaction. A row also keeps the task-model calls (and USD) the score cost, so a
    cached score charges the budget what it cost when it was measured.

    Args:
        path: The SQLite file (created with its folder when missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(
                "CREATE TABLE IF NOT EXISTS scores (candidate_id TEXT NOT NULL, "
                "item_id TEXT NOT NULL, fingerprint TEXT NOT NULL, score REAL NOT NULL, "
                "calls INTEGER NOT NULL, usd REAL NOT NULL, created_at REAL NOT NULL, "
                "PRIMARY KEY (candidate_id, item_id, fingerprint))"
            )

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=CACHE_BUSY_TIMEOUT_S)
        try:
            con.execute(f"PRAGMA busy_timeout={int(CACHE_BUSY_TIMEOUT_S * 1000)}")
            with con:  # one transaction: committed on success, rolled back on error
                yield con
        finally:
            con.close()

    def get(
        self, candidate_id: str, item_ids: Sequence[str], fingerprint: str
    ) -> dict[str, tuple[float, int, float]]:
        """The cached ``(score, calls, usd)`` of those of ``item_ids`` the cache holds."""
        out: dict[str, tuple[float, int, float]] = {}
        ids = list(dict.fromkeys(item_ids))
        with self._connect() as con:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = con.execute(
                    "SELECT item_id, score, calls, usd FROM scores WHERE candidate_id = ? "
                    f"AND fingerprint = ? AND item_id IN ({marks})",
                    [candidate_id, fingerprint, *chunk],
                ).fetchall()
                out.update({r[0]: (float(r[1]), int(r[2]), float(r[3])) for r in rows})
        return out

    def put(
        self,
        candidate_id: str,
        fingerprint: str,
        scores: Mapping[str, tuple[float, int, float]],
    ) -> None:
        """Store ``{item id: (score, calls, usd)}`` (a later measurement replaces one)."""
        if not scores:
            return
        now = time.time()
        with self._connect() as con:
            con.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (candidate_id, iid, fingerprint, float(s), int(c), float(u), now)
                    for iid, (s, c, u) in scores.items()
                ],
            )


#: how a stop caused by :meth:`ReplayEvaluator.reserve` ends
RESERVE_NOTE = "kept for the confirmation"


def task_budget_spent(budget: Budget) -> str | None:
    """Why replays must stop (the task-call or the USD budget is spent), or None:
    :meth:`~.core.Budget.task_spent`. The optimizer-call budget stops only the optimizer's
    calls (the rule is :class:`~.core.Budget`'s).

    Example:
        >>> task_budget_spent(Budget(task_calls=5, optimizer_calls=1, used_optimizer_calls=1))
        >>> task_budget_spent(Budget(task_calls=5, used_task_calls=5))
        'task-call budget of 5 spent'
    """
    return budget.task_spent()


def _source_fingerprint(flow: Any) -> str:
    """A hash of the flow's module source (the cache key when no step is recorded)."""
    fn = inspect.unwrap(getattr(flow, "fn", flow))
    try:
        text = inspect.getsource(sys.modules[fn.__module__])
    except (KeyError, OSError, TypeError):
        text = repr(fn)
    return "src_" + hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class _Usage:
    """The LLM calls of one replayed run: per item key (None: calls of no item)."""

    calls: dict[str | None, int] = field(default_factory=dict)
    usd: dict[str | None, float] = field(default_factory=dict)
    #: item keys (None: the run) with a call above temperature 0, or of unknown temperature
    hot: set[str | None] = field(default_factory=set)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_usd(self) -> float:
        return math.fsum(self.usd.values())


_USAGE_SQL = """
SELECT item_key, count(*) AS calls, sum(coalesce(cost_usd, 0)) AS usd,
       bool_or(coalesce(TRY_CAST(json_extract_string(
           attributes, '$."gen_ai.request.temperature"') AS DOUBLE), 1.0) > 0) AS hot
FROM spans WHERE run_id = ? AND run_type = 'llm'
GROUP BY item_key
"""

_SKIPPED_SQL = f"""
SELECT count(*) AS n FROM spans
WHERE run_id = ? AND json_extract_string(attributes, '$."{REPLAY}"') = ?
"""


class ReplayEvaluator:
    """Scores candidates by replaying recorded runs (see the module docstring).

    Args:
        wh: The warehouse (its spool receives the replayed runs; it is ingested after each
            replay).
        pipeline: The pipeline.
        kpi: The per-item KPI the pipeline's feedback scores.
        flow: The pipeline's flow (``load_entrypoint`` of its recorded entrypoint).
        runs: The runs whose items may be asked for (from ``pool_runs``).
        direction: ``higher`` or ``lower``.
        budget: The night's budget (task-model calls are charged to it).
        cache: The score cache (None: no cache).
        failure: The score of an item a crash left unscored or scored NaN (default: 0.0
            when higher is better, else the highest recorded value of the runs' items).
        fingerprint: The step versions and task model of the code replayed (default:
            :func:`code_fingerprint` of ``flow``).
        on_progress: Called after each replay with the candidate, the items scored so far
            of the current :meth:`score` call and the items it asked for.
        reuse_recorded: Recording steps whose inputs, version, params read and model are
            unchanged (those upstream of the tuned step) return their recorded output on
            the replays instead of running
            (:func:`~prefect_genopt.replay.steps.reuse_recorded_steps`).
    """

    def __init__(
        self,
        wh: Warehouse,
        *,
        pipeline: str,
        kpi: str,
        flow: Any,
        runs: Sequence[RunInfo],
        direction: str = "higher",
        budget: Budget | None = None,
        cache: ScoreCache | None = None,
        failure: float | None = None,
        fingerprint: str | None = None,
        on_progress: Callable[[Candidate, int, int], None] | None = None,
        reuse_recorded: bool = True,
    ) -> None:
        self.wh = wh
        self.pipeline = pipeline
        self.kpi = kpi
        self.flow = flow
        self.direction = direction
        self.runs = {r.run_id: r for r in runs}
        self.budget = budget or Budget()
        self.cache = cache
        self.fingerprint = fingerprint if fingerprint is not None else code_fingerprint(flow)
        #: the cache key's fingerprint: the steps' one, else the flow module's source
        self.cache_key = self.fingerprint or _source_fingerprint(flow)
        self.on_progress = on_progress
        self.reuse_recorded = reuse_recorded
        self._inputs: dict[str, dict[str, Any] | None] = {}
        self._keys: dict[str, list[str]] = {}
        self._recorded_values: list[float] = []
        self._load_runs()
        self.failure = failure if failure is not None else self._default_failure()
        #: candidate id -> item id -> score / source
        self.scores: dict[str, dict[str, float]] = {}
        self.sources: dict[str, dict[str, str]] = {}
        #: candidate id -> item ids a side-effecting task left unscored
        self.skipped: dict[str, set[str]] = {}
        #: replayed run ids per candidate id
        self.replays: dict[str, list[str]] = {}
        #: why evaluation stopped (the budget), or None
        self.stop_reason: str | None = None
        #: items whose task calls a replay must leave unspent (the night keeps the
        #: confirmation's calls while it selects: :meth:`reserve`)
        self.reserved_items = 0
        self.calls_replayed = 0
        #: litellm's cost of the replays' task-model calls (0 where the model is unpriced)
        self.usd_replayed = 0.0
        self.calls_cached = 0
        self.items_replayed = 0
        self.seconds = 0.0
        #: seconds spent replaying (of :attr:`items_replayed` items): the per-item time
        self.replay_seconds = 0.0

    # -- the runs -----------------------------------------------------------------------

    def _load_runs(self) -> None:
        ids = list(self.runs)
        if not ids:
            return
        rows = self.wh.sql(
            "SELECT run_id, inputs FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
            [ids],
        )
        self._inputs = {r["run_id"]: replayable_inputs(r["inputs"]) for r in rows}
        keys = self.wh.sql(
            "SELECT run_id, item_key, avg(value) AS v FROM feedback "
            "WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND kpi = ? "
            "AND item_key IS NOT NULL AND value IS NOT NULL AND step IS NULL "
            "GROUP BY run_id, item_key ORDER BY run_id, item_key",
            [ids, self.kpi],
        )
        self._recorded_values = [float(r["v"]) for r in keys]
        for r in keys:
            self._keys.setdefault(r["run_id"], []).append(r["item_key"])

    def _default_failure(self) -> float:
        if self.direction == "higher":
            return min([0.0, *self._recorded_values])
        return max([1.0, *self._recorded_values])

    def items_of(self, run_ids: Sequence[str]) -> list[str]:
        """The labelled item ids of ``run_ids`` (in run order, keys sorted)."""
        return [item_id(r, k) for r in run_ids for k in self._keys.get(r, [])]

    # -- scoring ------------------------------------------------------------------------

    def score(self, candidate: Candidate, items: Sequence[str]) -> Scores:
        """The candidate's per-item scores on ``items`` (fewer when the budget ran out, or
        a side-effecting task skipped some: see :attr:`skipped`)."""
        t0 = time.monotonic()
        cid = candidate.candidate_id
        have = self.scores.setdefault(cid, {})
        where = self.sources.setdefault(cid, {})
        skipped = self.skipped.setdefault(cid, set())
        wanted = list(dict.fromkeys(items))
        missing = [i for i in wanted if i not in have and i not in skipped]
        self._use_recorded(candidate, missing)
        missing = [i for i in missing if i not in have]
        if self.cache is not None and missing:
            cached = self.cache.get(cid, missing, self.cache_key)
            for iid, (value, calls, _usd) in cached.items():
                have[iid], where[iid] = value, "cache"
                self.budget.charge_task(calls)
                self.calls_cached += calls
            missing = [i for i in missing if i not in have]
        runs = list(dict.fromkeys(split_item_id(i)[0] for i in missing))
        for run_id in runs:
            if not self._can_pay(run_id):
                break
            t_run = time.monotonic()
            self._replay(candidate, run_id)
            self.replay_seconds += time.monotonic() - t_run
            if self.on_progress is not None:
                done = sum(1 for i in wanted if i in have or i in skipped)
                self.on_progress(candidate, done, len(wanted))
        self.seconds += time.monotonic() - t0
        return {i: have[i] for i in wanted if i in have}

    def _use_recorded(self, candidate: Candidate, items: Sequence[str]) -> None:
        """Recorded scores for items of runs recorded under this candidate's param set with
        the same step versions and task model as the code replayed now."""
        if self.fingerprint is None:
            return
        cid = candidate.candidate_id
        runs = {
            split_item_id(i)[0]
            for i in items
            if (info := self.runs.get(split_item_id(i)[0])) is not None
            and info.param_set_id == cid
            and info.fingerprint == self.fingerprint
        }
        for run_id in sorted(runs):
            values = item_values(self.wh, run_id, self.kpi, cid)
            for key, value in values.items():
                if math.isfinite(value):
                    iid = item_id(run_id, key)
                    self.scores[cid][iid], self.sources[cid][iid] = value, "recorded"

    def reserve(self, items: int) -> None:
        """Keep the task calls of about ``items`` items (at the calls per item measured so
        far) unspent: a replay that would eat into them is not made, and ``stop_reason``
        says so. ``reserve(0)`` releases them (and clears a stop the reserve caused).

        Example:
            >>> ev = ReplayEvaluator.__new__(ReplayEvaluator)
            >>> ev.reserved_items, ev.stop_reason = 0, None
            >>> ev.reserve(160); ev.reserved_items
            160
        """
        if items <= 0 and self.reserved_items and (self.stop_reason or "").endswith(RESERVE_NOTE):
            self.stop_reason = None
        self.reserved_items = max(0, items)

    def _can_pay(self, run_id: str) -> bool:
        """Whether the budget can pay for replaying ``run_id`` (else sets stop_reason)."""
        why = task_budget_spent(self.budget)
        left = self.budget.task_calls_left()
        n_items = max(len(self._keys.get(run_id, [])), 1)
        per_item = self.calls_replayed / self.items_replayed if self.items_replayed else 1.0
        estimate = math.ceil(n_items * per_item)
        kept = math.ceil(self.reserved_items * per_item)
        if why is None and left is not None and estimate > left:
            why = (
                f"task-call budget of {self.budget.task_calls}: {left} call(s) left, a replay "
                f"of run {run_id[:8]} needs about {estimate}"
            )
        if why is None and left is not None and kept and estimate + kept > left:
            why = (
                f"task-call budget of {self.budget.task_calls}: {left} call(s) left, about "
                f"{kept} of them {RESERVE_NOTE}"
            )
        usd_left = self.budget.usd_left()
        usd = n_items * self.usd_replayed / self.items_replayed if self.items_replayed else 0.0
        if why is None and usd_left is not None and usd > usd_left:
            why = (
                f"USD budget of {self.budget.usd:g}: ${usd_left:.4g} left, a replay of run "
                f"{run_id[:8]} costs about ${usd:.4g} (the task model's price, measured)"
            )
        if why is not None:
            self.stop_reason = why
            return False
        return True

    def _replay(self, candidate: Candidate, run_id: str) -> None:
        cid = candidate.candidate_id
        keys = self._keys.get(run_id, [])
        inputs = self._inputs.get(run_id)
        rep: str | None = None
        if inputs is not None:
            try:
                rep = replay_run(
                    self.flow,
                    inputs,
                    candidate.values,
                    tags=(*SEARCH_TAGS, pipeline_tag(self.pipeline)),
                    reuse_recorded=self.reuse_recorded,
                )
            except Exception as exc:  # noqa: BLE001 - the user's code may raise anything
                logger.warning("replay of run %s raised %s: %s", run_id, type(exc).__name__, exc)
        got: dict[str, float] = {}
        usage = _Usage()
        side_skips = 0
        if rep is not None:
            self.replays.setdefault(cid, []).append(rep)
            self._ingest()
            got = item_values(self.wh, rep, self.kpi)
            usage = self._usage(rep)
            side_skips = int(self.wh.sql(_SKIPPED_SQL, [rep, SIDE_EFFECT_SKIPPED])[0]["n"] or 0)
        self.budget.charge_task(usage.total_calls, usage.total_usd)
        self.calls_replayed += usage.total_calls
        self.usd_replayed += usage.total_usd
        self.items_replayed += len(keys)
        to_cache: dict[str, tuple[float, int, float]] = {}
        run_hot = None in usage.hot
        unkeyed = usage.calls.get(None, 0)
        for n, key in enumerate(keys):
            iid = item_id(run_id, key)
            value = got.get(key)
            if value is None and side_skips:
                self.skipped[cid].add(iid)  # a side-effecting task stopped the run first
                continue
            if value is None or not math.isfinite(value):
                value = self.failure
            self.scores[cid][iid], self.sources[cid][iid] = value, "replay"
            if rep is not None and not run_hot and key not in usage.hot:
                calls = usage.calls.get(key, 0) + (unkeyed if n == 0 else 0)
                usd = usage.usd.get(key, 0.0) + (usage.usd.get(None, 0.0) if n == 0 else 0.0)
                to_cache[iid] = (value, calls, usd)
        if self.cache is not None and to_cache:
            self.cache.put(cid, self.cache_key, to_cache)

    def _ingest(self) -> None:
        """Load the replayed run (another process's ingest may have loaded it already)."""
        try:
            self.wh.ingest()
        except WarehouseBusyError as exc:
            logger.warning("warehouse busy after a replay, reading what is loaded: %s", exc)

    def _usage(self, run_id: str) -> _Usage:
        usage = _Usage()
        for r in self.wh.sql(_USAGE_SQL, [run_id]):
            key = r["item_key"]
            usage.calls[key] = int(r["calls"])
            usage.usd[key] = float(r["usd"] or 0.0)
            if r["hot"]:
                usage.hot.add(key)
        return usage

    # -- reporting ------------------------------------------------------------------------

    def seconds_per_item(self) -> float | None:
        """The measured time of one replayed item (None before the first replay)."""
        return self.replay_seconds / self.items_replayed if self.items_replayed else None

    def source_counts(self, candidate_id: str) -> dict[str, int]:
        """How many of a candidate's scores came from each source."""
        out = dict.fromkeys(SOURCES, 0)
        for s in self.sources.get(candidate_id, {}).values():
            out[s] = out.get(s, 0) + 1
        return out

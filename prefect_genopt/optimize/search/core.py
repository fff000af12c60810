"""The search's shared vocabulary: items, pools, candidates, dropped drafts, the budget.

The nightly search (issue 14) drafts many candidates cheaply, scores them by replaying
the pipeline on recorded items, and proposes one only when a paired test says it beats
its parent. Every module of :mod:`prefect_genopt.optimize.search` speaks these types.

An *item* is one labelled unit of a recorded run: ``"<run_id>:<item_key>"`` (or
``"<run_id>:"`` for a run-level KPI). A pool is a set of whole runs (a replay re-runs a
whole recorded run), sized in labelled items.

Example:
    >>> item_id("r1", "T-7")
    'r1:T-7'
    >>> split_item_id("r1:T-7")
    ('r1', 'T-7')
    >>> b = Budget(task_calls=10, optimizer_calls=2)
    >>> b.charge_task(4); b.charge_task(6); b.exhausted()
    'task-call budget of 10 spent'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "item_id",
    "split_item_id",
    "RunInfo",
    "Pools",
    "Candidate",
    "Dropped",
    "Budget",
    "Scores",
    "HistoryEntry",
    "ProgressLine",
    "eta_text",
]

#: per-item scores of one candidate: item id -> KPI value (a crash or NaN scores as failure)
Scores = dict[str, float]


def item_id(run_id: str, item_key: str | None) -> str:
    """The id of one labelled item of a recorded run."""
    return f"{run_id}:{item_key or ''}"


def split_item_id(iid: str) -> tuple[str, str]:
    """``(run_id, item_key)`` of an item id (item key ``''`` for a run-level KPI)."""
    run_id, _, key = iid.partition(":")
    return run_id, key


@dataclass(frozen=True)
class RunInfo:
    """A recorded run that pools may use: whole inputs, per-item feedback on the KPI."""

    run_id: str
    param_set_id: str
    n_items: int
    start_time: Any = None
    #: the step versions and task model the run was recorded with (for score reuse)
    fingerprint: str | None = None


@dataclass
class Pools:
    """Three disjoint sets of runs: what the optimizer reads (evidence and demo source),
    where candidates are chosen (selection) and where the winner is confirmed."""

    evidence: list[str] = field(default_factory=list)
    selection: list[str] = field(default_factory=list)
    confirmation: list[str] = field(default_factory=list)
    #: labelled items per run id
    items: dict[str, int] = field(default_factory=dict)
    #: what each pool wanted and got, in items, e.g. {"selection": (48, 40)}
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: plain sentences for the night's log ("selection has 40 of 48 items")
    notes: list[str] = field(default_factory=list)
    #: runs a short pool borrowed from a full pool's surplus: run id -> its own bucket's
    #: pool (:func:`~.pools.assign_pools`); every other member is in its own bucket
    borrowed: dict[str, str] = field(default_factory=dict)

    def n_items(self, pool: str) -> int:
        """Labelled items in ``pool``."""
        return sum(self.items.get(r, 0) for r in getattr(self, pool))


@dataclass(frozen=True)
class Candidate:
    """One param set the search may propose: full values (parent merged with the change)."""

    candidate_id: str  # the param set id of ``values``
    values: dict[str, Any]
    generator: str  # "parent", "drafts", "demos", "combination", "optoprime", ...
    parent_id: str
    changed: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Dropped:
    """A draft a cheap filter dropped before any evaluation, with its reason.

    Reasons: ``copy`` (of the current or an earlier value), ``quotes_evidence`` (shares
    several 4-word runs with an evidence input), ``too_long`` (over 3x the parent),
    ``drops_answer_words`` (an extract step's draft without the answer words),
    ``invalid`` (fails the Tunables schema), ``empty`` / ``unparsable`` (no draft).
    Generators add ``timeout`` (the optimizer call timed out) and ``no_change`` (the
    OptoPrime answer asked for no change).
    """

    generator: str
    reason: str
    detail: str = ""
    value: Any = None


@dataclass
class Budget:
    """The night's budgets: task-model calls (replays; cached calls count), optimizer
    calls and USD. ``None`` is unlimited.

    One rule: **each budget stops what it pays for.** The task-call budget stops the
    replays (:meth:`task_spent`), the optimizer-call budget stops the optimizer's calls
    (:meth:`optimizer_spent`), and the USD budget, which covers both (litellm's cost of the
    optimizer's calls and of the task-model calls the replays make, where the model is
    priced), stops both. A night whose optimizer calls are spent still scores the
    candidates it has; one whose task calls are spent still records what it measured.
    :meth:`exhausted` is any of the three (the first spent).

    Example:
        >>> b = Budget(task_calls=10, optimizer_calls=1, usd=0.5)
        >>> b.charge_optimizer(1); b.optimizer_spent(), b.task_spent()
        ('optimizer-call budget of 1 spent', None)
        >>> b.charge_task(3, usd=0.5); b.task_spent()
        'USD budget of 0.5 spent'
    """

    task_calls: int | None = None
    optimizer_calls: int | None = None
    usd: float | None = None
    used_task_calls: int = 0
    used_optimizer_calls: int = 0
    used_usd: float = 0.0

    def charge_task(self, calls: int, usd: float = 0.0) -> None:
        """Count task-model calls (and their cost) a replay made."""
        self.used_task_calls += calls
        self.used_usd += usd

    def charge_optimizer(self, calls: int = 1, usd: float = 0.0) -> None:
        """Count optimizer-model calls (and their cost)."""
        self.used_optimizer_calls += calls
        self.used_usd += usd

    def _usd_spent(self) -> str | None:
        if self.usd is not None and self.used_usd >= self.usd:
            return f"USD budget of {self.usd:g} spent"
        return None

    def task_spent(self) -> str | None:
        """Why no more replays may run (the task-call or the USD budget is spent), or None."""
        if self.task_calls is not None and self.used_task_calls >= self.task_calls:
            return f"task-call budget of {self.task_calls} spent"
        return self._usd_spent()

    def optimizer_spent(self) -> str | None:
        """Why no more optimizer calls may be made (the optimizer-call or the USD budget is
        spent), or None."""
        if self.optimizer_calls is not None and self.used_optimizer_calls >= self.optimizer_calls:
            return f"optimizer-call budget of {self.optimizer_calls} spent"
        return self._usd_spent()

    def exhausted(self) -> str | None:
        """The first budget spent, whichever part of the night it stops, or None."""
        if self.task_calls is not None and self.used_task_calls >= self.task_calls:
            return f"task-call budget of {self.task_calls} spent"
        return self.optimizer_spent()

    def task_calls_left(self) -> int | None:
        """Task-model calls still allowed (None: unlimited)."""
        return None if self.task_calls is None else max(0, self.task_calls - self.used_task_calls)

    def usd_left(self) -> float | None:
        """USD still allowed (None: unlimited)."""
        return None if self.usd is None else max(0.0, self.usd - self.used_usd)


@dataclass(frozen=True)
class HistoryEntry:
    """A past value of one param with its measured selection score (OPRO's scored
    history): what drafts are shown, ascending, and what filters treat as "earlier".

    ``field`` names the param (None: tonight's only drafted field); ``score`` is the
    mean per-item KPI on ``n_items`` selection items.
    """

    value: Any
    score: float
    n_items: int = 0
    candidate_id: str | None = None
    field: str | None = None


def eta_text(seconds: float | None) -> str:
    """An ETA as a progress line shows it: ``42s``, ``3m05s``, ``1h02m`` (``?``: unknown).

    Example:
        >>> eta_text(42.4), eta_text(185), eta_text(3720), eta_text(None)
        ('42s', '3m05s', '1h02m', '?')
    """
    if seconds is None:
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressLine(str):
    """A progress line of the night that is also a record: a ``str`` (what a
    ``progress(str)`` callback, a logger or stderr takes, unchanged) with the fields a
    renderer reads: the ``stage``, the ``candidate`` (and its ``generator``), items
    ``done`` of ``total`` and ``eta_s`` (seconds, from the measured per-item time).

    Example:
        >>> line = ProgressLine("replaying ps_1 (drafts): 12/48 items, ETA 30s",
        ...                     stage="selection", candidate="ps_1", generator="drafts",
        ...                     done=12, total=48, eta_s=30.0)
        >>> line.startswith("replaying"), line.stage, line.done, line.total, line.eta_s
        (True, 'selection', 12, 48, 30.0)
        >>> line.fields()["candidate"]
        'ps_1'
    """

    stage: str
    candidate: str | None
    generator: str | None
    done: int | None
    total: int | None
    eta_s: float | None

    def __new__(
        cls,
        text: str,
        *,
        stage: str,
        candidate: str | None = None,
        generator: str | None = None,
        done: int | None = None,
        total: int | None = None,
        eta_s: float | None = None,
    ) -> ProgressLine:
        line = super().__new__(cls, text)
        line.stage, line.candidate, line.generator = stage, candidate, generator
        line.done, line.total, line.eta_s = done, total, eta_s
        return line

    def fields(self) -> dict[str, Any]:
        """The structured form: the text and every field."""
        return {
            "text": str(self),
            "stage": self.stage,
            "candidate": self.candidate,
            "generator": self.generator,
            "done": self.done,
            "total": self.total,
            "eta_s": self.eta_s,
        }

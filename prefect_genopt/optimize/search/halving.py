"""Successive halving: score every candidate on a few items, keep the best, score those
on more.

Each rung ``(n_items, keep)`` scores every surviving candidate on the first ``n_items``
of the selection items (the same items for all, in the fixed seeded order the caller
chose) and keeps the ``keep`` best. The default ``((16, 4), (48, 1))`` is issue 14's: all
candidates on 16 items, the top 4 on all 48, one winner.

* **Ranking**: by mean score over the rung's items (an item the score function did not
  return, or returned as NaN, counts as the ``failure`` score); ties by fewer failures
  (items at or worse than the failure score), then by the order the candidates were
  given (put the parent, or the cheapest, first).
* **Reuse**: the score function is called once per (candidate, rung), with only the
  items not scored yet for that candidate, so a later rung pays only for its new items.
  One candidate gets all its items before the next is scored, so a local model reuses
  the shared prompt prefix.
* **Stopping**: ``should_stop()`` is asked before every call; when it gives a reason
  the search stops there and the best so far wins: the top of the last rung every
  surviving candidate finished (the ranking of complete, equal item sets), or, when the
  first rung is not finished, the best of the candidates that finished it (none: no
  winner).

Everything is pure apart from calling ``score``, ``progress`` and ``should_stop``.

Example:
    >>> from prefect_genopt.optimize.search.core import Candidate
    >>> cands = [Candidate(c, {}, "drafts", "p") for c in ("a", "b", "c")]
    >>> quality = {"a": 0.2, "b": 0.9, "c": 0.5}
    >>> items = [f"r:{i}" for i in range(10)]
    >>> score = lambda c, its: {i: float(int(i[2:]) < quality[c.candidate_id] * 10)
    ...                         for i in its}
    >>> r = successive_halving(cands, items, score, rungs=((4, 2), (10, 1)))
    >>> r.winner.candidate_id, [(row.candidate_id, row.n, row.mean) for row in r.table[-2:]]
    ('b', [('b', 10, 0.9), ('c', 10, 0.5)])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prefect_genopt.optimize.search.core import Candidate, ProgressLine, Scores, eta_text

__all__ = ["RUNGS", "RungRow", "HalvingResult", "successive_halving", "rank"]

#: issue 14's rungs: all candidates on 16 items, keep 4; those on 48 items, keep 1
RUNGS: tuple[tuple[int, int], ...] = ((16, 4), (48, 1))


@dataclass(frozen=True)
class RungRow:
    """One candidate at one rung: its mean on the rung's ``n`` items, its failures, its
    place in the rung's ranking (1 is best) and whether it went on."""

    rung: int
    candidate_id: str
    generator: str
    n: int
    mean: float
    failures: int
    place: int
    kept: bool


@dataclass
class HalvingResult:
    """What successive halving chose.

    Attributes:
        winner: The chosen candidate (None: stopped before any candidate finished the
            first rung, or no candidate).
        scores: Every per-item score obtained, by candidate id.
        table: One row per candidate per rung it was ranked at, rung by rung, best first.
        stop_reason: What ``should_stop`` said, when the search stopped early.
        ranking: The candidate ids of the last rung ranked, best first.
    """

    winner: Candidate | None
    scores: dict[str, Scores] = field(default_factory=dict)
    table: list[RungRow] = field(default_factory=list)
    stop_reason: str | None = None
    ranking: list[str] = field(default_factory=list)


def _failure_default(direction: str) -> float:
    return 0.0 if direction == "higher" else 1.0


def _stats(got: Scores, items: Sequence[str], failure: float, direction: str) -> tuple[float, int]:
    """(mean, failures) over ``items``, missing or non-finite scores counting as failure."""
    values = []
    for i in items:
        v = got.get(i)
        values.append(v if v is not None and math.isfinite(v) else failure)
    worse = (lambda v: v <= failure) if direction == "higher" else (lambda v: v >= failure)
    mean = math.fsum(values) / len(values) if values else math.nan
    return mean, sum(worse(v) for v in values)


def rank(
    candidates: Sequence[Candidate],
    scores: dict[str, Scores],
    items: Sequence[str],
    *,
    direction: str = "higher",
    failure: float | None = None,
) -> list[tuple[Candidate, float, int]]:
    """``(candidate, mean, failures)`` on ``items``, best first (pure; ties: fewer
    failures, then the order given)."""
    fail = _failure_default(direction) if failure is None else failure
    sign = -1.0 if direction == "higher" else 1.0
    rows = [
        (c, *_stats(scores.get(c.candidate_id, {}), items, fail, direction)) for c in candidates
    ]
    order = sorted(range(len(rows)), key=lambda k: (sign * rows[k][1], rows[k][2], k))
    return [rows[k] for k in order]


def successive_halving(
    candidates: Sequence[Candidate],
    items: Sequence[str],
    score: Callable[[Candidate, Sequence[str]], Scores],
    *,
    rungs: Sequence[tuple[int, int]] = RUNGS,
    direction: str = "higher",
    progress: Callable[[str], None] | None = None,
    should_stop: Callable[[], str | None] | None = None,
    failure: float | None = None,
) -> HalvingResult:
    """Choose one of ``candidates`` by successive halving on ``items`` (see the module
    docstring).

    Args:
        candidates: The candidates, in tie-break order (a repeated candidate id counts
            once, at its first place).
        items: The selection items, in the fixed order every candidate is scored in.
        score: Scores one candidate on the given items (only those it has not been
            scored on yet); returns item id -> score.
        rungs: ``(n_items, keep)`` per rung; a rung asking for more items than there are
            uses them all.
        direction: ``higher`` or ``lower``: which scores are better.
        progress: Called with one line per candidate scored (rung, candidate, items done
            of the search's total, mean so far, an ETA).
        should_stop: Asked before each call of ``score``, and after a call that left items
            unscored (a budget spent part-way: that candidate is then not ranked); a reason
            stops the search.
        failure: The score of an item the score function did not return, or returned as
            NaN (default: 0.0 when higher is better, else 1.0).

    Returns:
        The winner, every score, the per-rung table and the stop reason.
    """
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    if not rungs or any(n < 1 or keep < 1 for n, keep in rungs):
        raise ValueError(f"rungs must be (n_items >= 1, keep >= 1) pairs, got {rungs!r}")
    unique: dict[str, Candidate] = {}
    for c in candidates:
        unique.setdefault(c.candidate_id, c)
    survivors = list(unique.values())
    result = HalvingResult(winner=None, scores={c: {} for c in unique})
    if not survivors or not items:
        return result
    say = progress or (lambda _line: None)
    # the items the whole search may score, for progress and the ETA
    total, alive = 0, len(survivors)
    for n, keep in rungs:
        total += alive * min(n, len(items))
        alive = min(alive, keep)
    done = 0
    started = time.monotonic()
    fail = _failure_default(direction) if failure is None else failure
    best_so_far: Candidate | None = None
    for r, (n, keep) in enumerate(rungs, 1):
        rung_items = list(items[: min(n, len(items))])
        finished: list[Candidate] = []
        for k, c in enumerate(survivors, 1):
            got = result.scores[c.candidate_id]
            todo = [i for i in rung_items if i not in got]
            if todo:
                reason = should_stop() if should_stop is not None else None
                if reason:
                    result.stop_reason = reason
                    break
                got.update(score(c, todo))
                if should_stop is not None and any(i not in got for i in todo):
                    # the score function stopped part-way (a budget ran out during this
                    # candidate): it is not ranked on items it was never scored on
                    reason = should_stop()
                    if reason:
                        result.stop_reason = reason
                        break
            done += len(rung_items)  # scored now, or reused from an earlier rung
            finished.append(c)
            mean, _ = _stats(got, rung_items, fail, direction)
            elapsed = time.monotonic() - started
            eta = elapsed / done * (total - done) if done else None
            say(
                ProgressLine(
                    f"selection rung {r}/{len(rungs)}: candidate {k}/{len(survivors)} "
                    f"{c.candidate_id} ({c.generator}) mean {mean:.3g} on {len(rung_items)} "
                    f"items ({len(todo)} new); {done}/{total} items, ETA {eta_text(eta)}",
                    stage="selection",
                    candidate=c.candidate_id,
                    generator=c.generator,
                    done=done,
                    total=total,
                    eta_s=eta,
                )
            )
        if result.stop_reason is not None:
            if best_so_far is None and finished:  # stopped in the first rung
                ranked = rank(
                    finished, result.scores, rung_items, direction=direction, failure=failure
                )
                _record(result, r, len(rung_items), ranked, 1)
                best_so_far = ranked[0][0]
            say(f"selection stopped in rung {r}: {result.stop_reason}")
            break
        ranked = rank(survivors, result.scores, rung_items, direction=direction, failure=failure)
        _record(result, r, len(rung_items), ranked, keep)
        survivors = [c for c, _, _ in ranked[:keep]]
        best_so_far = survivors[0]
    result.winner = best_so_far
    return result


def _record(
    result: HalvingResult,
    rung: int,
    n: int,
    ranked: list[tuple[Candidate, float, int]],
    keep: int,
) -> None:
    for place, (c, mean, failures) in enumerate(ranked, 1):
        result.table.append(
            RungRow(rung, c.candidate_id, c.generator, n, mean, failures, place, place <= keep)
        )
    result.ranking = [c.candidate_id for c, _, _ in ranked]

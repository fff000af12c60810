"""Step-level credit (STeCa): the first step of a failed run (or item) that went wrong.

For each failed unit of a minibatch, one of three methods names the step to
blame, in this order of preference:

1. ``step_feedback``: feedback given per step (``genopt.feedback(..., step=...)``)
   that failed: the first such step.
2. ``expected``: the expected answer is known (``genopt.feedback(..., expected=...)``).
   Each step's output is scored by the share of the answer's words it contains
   (its *recall*). An extractive step (most of its output words come from its
   input) whose recall falls below the best seen before it (the pipeline's input
   counts) lost the answer; a step that writes its output (a reasoning) and states
   the wrong final answer without the expected one concluded wrongly. When no step
   did either, the last step failed to produce it.
3. ``ndtw``: no expected answer, but passing units in the minibatch ran the
   same pipeline. The passing units on the most similar inputs (word Jaccard of
   the pipeline inputs, at most :data:`REFERENCES`) are the references. The
   failed unit's trajectory (its task steps, in order) is aligned with each by
   dynamic time warping over step outputs, and the reference with the highest
   normalised DTW score (nDTW, Ilharco et al. 2019) is kept. Along that alignment,
   the first step whose output is further from its reference step's output than
   its input was from the reference step's input, by more than
   :data:`CONTRAST_GAP`, deviated. Retried or skipped steps do not shift the
   comparison: the warping path aligns them.

A unit no method can judge gets no credit. Credits are recorded in the
``step_credit`` table; the optimizer's step-focused problem then shows only the
most blamed step, its params and its examples (see ``OptimizerSettings.step_credit``).

Example:
    >>> from prefect_genopt.optimize.evidence import Step
    >>> steps = [Step("a", "task", "clean", inputs='"Cat, Dog"', output='["cat","dog"]'),
    ...          Step("b", "task", "select", inputs='["cat","dog"]', output='["dog"]'),
    ...          Step("c", "task", "render", inputs='["dog"]', output='"dog"')]
    >>> c = blame_expected(steps, "cat, dog", '"Cat, Dog"')
    >>> (c.step, c.method, round(c.score, 2))
    ('select', 'expected', 0.5)
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import orjson

from prefect_genopt.optimize.evidence import Evidence, Step, Unit
from prefect_genopt.records import row_record
from prefect_genopt.warehouse.schema import utcnow

__all__ = [
    "Credit",
    "assign",
    "blame_expected",
    "blame_contrast",
    "ndtw",
    "focus",
    "credit_rows",
    "CONTRAST_GAP",
]

#: share of a step's output words found in its input for it to count as extractive
EXTRACTIVE_SHARE = 0.5
#: how much less alike (word Jaccard) a step's output may be than its input before it deviates
CONTRAST_GAP = 0.3
#: nDTW's distance threshold: an alignment whose mean step distance is this scores e**-1
NDTW_THRESHOLD = 0.5
#: how many passing units on the most similar inputs serve as references for ``ndtw``
REFERENCES = 3
_WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


@dataclass(frozen=True)
class Credit:
    """The step blamed for one failed unit, and why."""

    run_id: str
    item_key: str | None
    step: str
    index: int
    method: str
    score: float
    reason: str
    span_id: str | None = None
    params_read: tuple[str, ...] = ()


def _words(text: str | None) -> set[str]:
    return set(_WORD.findall((text or "").lower()))


def task_steps(unit: Unit) -> list[Step]:
    """The unit's task steps in execution order (model calls and the flow left out)."""
    return [s for root in unit.steps for _, s in root.walk() if s.kind == "task"]


def _recall(answer: set[str], text: str | None) -> float:
    return len(answer & _words(text)) / len(answer) if answer else 0.0


def _extractive(step: Step) -> bool:
    """Most of the step's output words come from its input (it selects or transforms,
    rather than writes), or it output nothing: only such a step can *lose* words its
    input had."""
    out = _words(step.output)
    if not out:  # nothing came out of what went in: it lost every word
        return True
    return len(out & _words(step.inputs)) / len(out) >= EXTRACTIVE_SHARE


def _credit(s: Step, i: int, method: str, score: float, reason: str) -> Credit:
    """A credit blaming step ``s`` (the ``i``-th); :func:`assign` fills in the unit."""
    return Credit(
        "", None, s.name, i, method, score, reason, s.span_id, tuple(sorted(s.params_read or {}))
    )


def blame_expected(
    steps: list[Step], expected: str, unit_inputs: str | None, got: str | None = None
) -> Credit | None:
    """The first step that went wrong, judged by the expected answer's words:

    * an extractive step (see :func:`_extractive`) whose output has fewer of them than
      the best seen before it (the pipeline's input counts) lost the answer;
    * a step that writes its output (a reasoning) and states the wrong final answer
      ``got`` without the expected one concluded wrongly;
    * otherwise the last step failed to produce the answer.

    ``run_id``/``item_key`` are filled in by :func:`assign`.
    """
    answer = _words(expected)
    if not steps or not answer:
        return None
    wrong = _words(got) - answer
    best = _recall(answer, unit_inputs)
    for i, s in enumerate(steps):
        r = _recall(answer, s.output)
        if _extractive(s):
            if r < best:
                return _credit(
                    s,
                    i,
                    "expected",
                    best - r,
                    f"step {s.name!r} is the first whose output lost the expected answer "
                    f"{expected!r}: {best:.0%} of its words were there before it, {r:.0%} after",
                )
        elif r < 1.0 and wrong and wrong <= _words(s.output) and i < len(steps) - 1:
            return _credit(
                s,
                i,
                "expected",
                1.0 - r,
                f"step {s.name!r} is the first that states the wrong answer {got!r} "
                f"without the expected {expected!r}",
            )
        best = max(best, r)
    last = steps[-1]
    r = _recall(answer, last.output)
    if r >= 1.0:
        return None
    return _credit(
        last,
        len(steps) - 1,
        "expected",
        1.0 - r,
        f"no earlier step lost the expected answer {expected!r} or stated a wrong one; the "
        f"last step {last.name!r} did not produce it",
    )


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _distance(a: Step, b: Step, field: str) -> float:
    """1 - word Jaccard of two steps' ``field`` (``inputs`` or ``output``); 1.0 between
    steps of different names."""
    if a.name != b.name:
        return 1.0
    return 1.0 - _jaccard(_words(getattr(a, field)), _words(getattr(b, field)))


def _dtw(query: list[Step], ref: list[Step]) -> tuple[float, list[tuple[int, int]]]:
    """Dynamic time warping of two trajectories over step outputs: the cost of the best
    alignment and its path of (query index, reference index) pairs, in order."""
    n, m = len(query), len(ref)
    inf = math.inf
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d = _distance(query[i - 1], ref[j - 1], "output")
            cost[i][j] = d + min(cost[i - 1][j], cost[i][j - 1], cost[i - 1][j - 1])
    path, i, j = [], n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        moves = {(i - 1, j - 1): cost[i - 1][j - 1], (i - 1, j): cost[i - 1][j]}
        moves[(i, j - 1)] = cost[i][j - 1]
        i, j = min(moves, key=lambda k: (moves[k], k != (i - 1, j - 1)))
    return cost[n][m], path[::-1]


def ndtw(query: list[Step], ref: list[Step]) -> float:
    """Normalised DTW of two trajectories over step outputs, in [0, 1] (1: the same
    outputs of the same steps): ``exp(-DTW / (len(ref) * NDTW_THRESHOLD))``.

    Example:
        >>> a = [Step("1", "task", "x", output='"a b"'), Step("2", "task", "y", output='"c"')]
        >>> ndtw(a, a), round(ndtw(a, a[:1]), 3)
        (1.0, 0.135)
    """
    if not query or not ref:
        return 0.0
    return _ndtw_score(_dtw(query, ref)[0], ref)


def _ndtw_score(total: float, ref: list[Step]) -> float:
    return math.exp(-total / (len(ref) * NDTW_THRESHOLD))


def blame_contrast(steps: list[Step], good: list[list[Step]]) -> Credit | None:
    """The first step of ``steps`` whose output departs from the best-aligned passing
    trajectory in ``good`` more than its input did (see the module docstring)."""
    best: tuple[float, list[Step], list[tuple[int, int]]] | None = None
    for g in good if steps else []:
        if g:
            total, path = _dtw(steps, g)  # one alignment per reference
            if best is None or _ndtw_score(total, g) > best[0]:
                best = (_ndtw_score(total, g), g, path)
    if best is None:
        return None
    score, ref, path = best
    gaps: dict[int, tuple[float, float, float]] = {}
    for i, j in path:
        s, r = steps[i], ref[j]
        if s.name != r.name:
            continue
        d_in, d_out = _distance(s, r, "inputs"), _distance(s, r, "output")
        if i not in gaps or d_out - d_in < gaps[i][0]:
            gaps[i] = (d_out - d_in, d_in, d_out)
    for i in sorted(gaps):
        gap, d_in, d_out = gaps[i]
        if gap > CONTRAST_GAP:
            return _credit(
                steps[i],
                i,
                "ndtw",
                gap,
                f"step {steps[i].name!r} is the first whose output departs from the "
                f"best-aligned passing example (nDTW {score:.2f}): input distance {d_in:.2f}, "
                f"output distance {d_out:.2f}",
            )
    return None


def _references(unit: Unit, good: list[Unit]) -> list[list[Step]]:
    """The task steps of the passing units whose pipeline inputs are most like ``unit``'s."""
    words = _words(unit.inputs)
    ranked = sorted(good, key=lambda g: -_jaccard(words, _words(g.inputs)))
    return [task_steps(g) for g in ranked[:REFERENCES]]


def _expected_and_step_feedback(
    wh: Any, evidence: Evidence, units: list[Unit]
) -> tuple[dict[tuple[str, str | None], str], dict[tuple[str, str | None], dict[str, float]]]:
    run_ids = sorted({u.run_id for u in units})
    rows = wh.sql(
        "SELECT run_id, item_key, step, value, expected FROM feedback "
        "WHERE run_id IN (SELECT unnest(?::VARCHAR[])) AND kpi = ? ORDER BY created_at",
        [run_ids, evidence.kpi],
    )
    expected: dict[tuple[str, str | None], str] = {}
    per_step: dict[tuple[str, str | None], dict[str, float]] = {}
    for r in rows:
        key = (r["run_id"], r["item_key"])
        if r["expected"] is not None:
            val = orjson.loads(r["expected"])
            expected[key] = val if isinstance(val, str) else orjson.dumps(val).decode()
        if r["step"] is not None and r["value"] is not None:
            per_step.setdefault(key, {})[r["step"]] = float(r["value"])
    return expected, per_step


def assign(wh: Any, evidence: Evidence, batch: list[Unit]) -> list[Credit]:
    """A credit for each failed unit of ``batch`` that some method can judge."""
    failed = [u for u in batch if not _passed(evidence, u)]
    if not failed:
        return []
    expected, per_step = _expected_and_step_feedback(wh, evidence, batch)
    good = [u for u in batch if _passed(evidence, u)]
    out = []
    for u in failed:
        steps = task_steps(u)
        key = (u.run_id, u.item_key)
        credit = None
        bad_steps = {k for k, v in per_step.get(key, {}).items() if not _passed_value(evidence, v)}
        for i, s in enumerate(steps):
            if s.name in bad_steps:
                credit = _credit(
                    s,
                    i,
                    "step_feedback",
                    1.0,
                    f"step {s.name!r} is the first with failing per-step feedback",
                )
                break
        if credit is None and key in expected:
            credit = blame_expected(steps, expected[key], u.inputs, u.output)
        if credit is None and good:
            credit = blame_contrast(steps, _references(u, good))
        if credit is not None:
            out.append(replace(credit, run_id=u.run_id, item_key=u.item_key))
    return out


def _passed_value(evidence: Evidence, value: float) -> bool:
    if evidence.binary:
        return evidence.passed(value)
    mean = evidence.population_mean
    return value >= mean if evidence.direction == "higher" else value <= mean


def _passed(evidence: Evidence, unit: Unit) -> bool:
    return _passed_value(evidence, unit.value)


def focus(credits: list[Credit], editable: list[str]) -> tuple[str, list[str]] | None:
    """The most blamed step (ties: the earliest) and the editable params it read, or None
    when no blamed step reads an editable param."""
    counts = Counter(c.step for c in credits if set(c.params_read) & set(editable))
    if not counts:
        return None
    first = {c.step: c.index for c in reversed(credits)}
    step = min(counts, key=lambda s: (-counts[s], first[s]))
    params = sorted({p for c in credits if c.step == step for p in c.params_read} & set(editable))
    return step, params


def credit_rows(pipeline: str, credits: list[Credit], proposal_id: str | None) -> list[dict]:
    """``step_credit`` spool rows for ``credits`` (keyed by run, item, step and proposal)."""
    now = utcnow().isoformat()
    rows = []
    for c in credits:
        key = f"{c.run_id}\0{c.item_key or ''}\0{c.step}\0{proposal_id or ''}"
        rows.append(
            row_record(
                "step_credit",
                {
                    "credit_id": hashlib.sha256(key.encode()).hexdigest()[:32],
                    "pipeline": pipeline,
                    "run_id": c.run_id,
                    "item_key": c.item_key,
                    "step": c.step,
                    "seq": c.index,
                    "span_id": c.span_id,
                    "method": c.method,
                    "score": c.score,
                    "reason": c.reason,
                    "params_read": list(c.params_read),
                    "proposal_id": proposal_id,
                    "created_at": now,
                },
            )
        )
    return rows

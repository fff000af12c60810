"""Cheap filters: drafts dropped before any evaluation, each with its reason.

Most updates of the single-shot optimizer changed nothing or quoted an example (issue
14: 57 of 93 produced nothing new, 14 of 36 quoted an example). A replay costs a
pipeline run per item; these checks cost nothing. :func:`filter_drafts` drops a draft
(the candidate's new value of the drafted ``field``) that is:

* ``copy``: within :data:`COPY_DISTANCE` normalised edit distance (Levenshtein over the
  longer length, on lowercased whitespace-collapsed text) of the parent's value, of an
  earlier value (the history), or of a draft kept before it;
* ``too_long``: longer than :data:`MAX_GROWTH` times the parent's value (and than
  :data:`MIN_LENGTH_LIMIT` characters, so an empty or one-line parent may still grow);
* ``quotes_evidence``: sharing at least :data:`QUOTE_RUNS` distinct 4-word runs with one
  evidence input (a quoted example). Runs the parent's value already has, and runs found
  in more than half of the evidence inputs (the task's own boilerplate, such as "is the
  following sentence plausible"), do not count;
* ``drops_answer_words``: for a step whose output is parsed (``answer_words`` given),
  a draft with none of the answer words (as whole words, any case) when the parent's
  value has one: a draft cannot drop what the parent never said (a bare "Answer the
  question." parent would otherwise veto every draft that does not name the labels).

Candidates that do not change ``field`` (a demo set, say) pass untouched.

Example:
    >>> from prefect_genopt.optimize.search.core import Candidate
    >>> parent = {"prompt": "Answer yes or no: is the sentence plausible?"}
    >>> drafts = [Candidate(f"c{i}", {"prompt": t}, "drafts", "ps_p", ("prompt",)) for i, t in
    ...           enumerate(["Answer yes or no: is the sentence plausible ?",
    ...                      "Think about the sport each athlete plays, then answer yes or no.",
    ...                      "Decide whether the sentence could happen. Reply with one word."])]
    >>> kept, dropped = filter_drafts(drafts, parent=parent, history=[], evidence_inputs=[],
    ...                               answer_words=["yes", "no"], field="prompt")
    >>> [c.candidate_id for c in kept], [d.reason for d in dropped]
    (['c1'], ['copy', 'drops_answer_words'])
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from prefect_genopt.optimize.search.core import Candidate, Dropped, HistoryEntry

__all__ = [
    "COPY_DISTANCE",
    "MAX_GROWTH",
    "MIN_LENGTH_LIMIT",
    "QUOTE_RUNS",
    "filter_drafts",
    "length_limit",
    "has_word",
    "reasons",
    "normalise",
    "edit_distance",
    "is_copy",
    "word_runs",
    "quoted_runs",
]

#: a draft this close to another value (normalised edit distance) is a copy of it
COPY_DISTANCE = 0.1
#: a draft longer than this many times the parent's value is dropped
MAX_GROWTH = 3.0
#: ... unless it is at most this many characters long
MIN_LENGTH_LIMIT = 200
#: a draft sharing this many distinct 4-word runs with one evidence input quotes it
QUOTE_RUNS = 3
RUN_WORDS = 4

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    """Lowercased, whitespace collapsed, stripped.

    Example:
        >>> normalise("  Answer\\n\\tYES  or no ")
        'answer yes or no'
    """
    return _SPACE.sub(" ", text.lower()).strip()


def edit_distance(a: str, b: str, limit: int | None = None) -> int:
    """Levenshtein distance of ``a`` and ``b``; with ``limit``, any value above it may be
    returned as ``limit + 1`` (a band of width ``2 * limit + 1`` is computed, so the cost
    is ``O(len * limit)``, not ``O(len**2)``).

    Example:
        >>> edit_distance("kitten", "sitting"), edit_distance("abc", "abc")
        (3, 0)
        >>> edit_distance("a" * 50, "b" * 50, limit=3)
        4
    """
    if len(a) < len(b):
        a, b = b, a
    if limit is None:
        limit = len(a)
    if len(a) - len(b) > limit:
        return limit + 1
    big = limit + 1
    prev = [j if j <= limit else big for j in range(len(b) + 1)]
    cur = [big] * (len(b) + 1)
    for i in range(1, len(a) + 1):
        lo, hi = max(1, i - limit), min(len(b), i + limit)
        cur[lo - 1] = i if lo == 1 and i <= limit else big  # the cell left of the band
        if hi < len(b):
            cur[hi + 1] = big  # the cell right of the band, read by the next row
        ca = a[i - 1]
        best = cur[lo - 1]
        for j in range(lo, hi + 1):
            cost = prev[j - 1] + (ca != b[j - 1])
            if prev[j] + 1 < cost:
                cost = prev[j] + 1
            if cur[j - 1] + 1 < cost:
                cost = cur[j - 1] + 1
            if cost > limit:
                cost = big
            cur[j] = cost
            if cost < best:
                best = cost
        if best > limit:
            return big
        prev, cur = cur, prev
    return min(prev[len(b)], big)


def is_copy(a: str, b: str, threshold: float = COPY_DISTANCE) -> bool:
    """Whether two texts are within ``threshold`` normalised edit distance (edits over
    the longer normalised length).

    Example:
        >>> is_copy("Classify the ticket.", "classify  the ticket"), is_copy("yes", "no")
        (True, False)
    """
    x, y = normalise(a), normalise(b)
    longest = max(len(x), len(y))
    if longest == 0 or x == y:
        return True
    # a copy has fewer than threshold * longest edits (rounded against float noise)
    limit = math.ceil(round(threshold * longest, 9)) - 1
    if limit < 0:
        return False
    return edit_distance(x, y, limit) <= limit


def word_runs(text: str, n: int = RUN_WORDS) -> set[tuple[str, ...]]:
    """The distinct runs of ``n`` consecutive words (lowercased, punctuation dropped).

    Example:
        >>> sorted(word_runs("The cat sat on the mat.", 4))[:2]
        [('cat', 'sat', 'on', 'the'), ('sat', 'on', 'the', 'mat')]
    """
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def quoted_runs(
    draft: str, evidence_inputs: Sequence[str], parent_value: str = ""
) -> tuple[int, int]:
    """``(most shared runs, index of that input)``: the distinct 4-word runs a draft
    shares with its most-quoted evidence input, not counting runs the parent's value
    has, nor runs found in more than half of the inputs (boilerplate of the task)."""
    mine = word_runs(draft) - word_runs(parent_value)
    if not mine or not evidence_inputs:
        return 0, -1
    per_input = [word_runs(t) for t in evidence_inputs]
    common: set[tuple[str, ...]] = set()
    if len(per_input) > 1:
        counts = Counter(r for runs in per_input for r in runs)
        common = {r for r, c in counts.items() if c > len(per_input) / 2}
    best, where = 0, -1
    for i, runs in enumerate(per_input):
        shared = len((mine & runs) - common)
        if shared > best:
            best, where = shared, i
    return best, where


def _history_values(history: Iterable[Any], field: str) -> list[str]:
    out = []
    for h in history:
        if isinstance(h, HistoryEntry):
            if h.field not in (None, field):
                continue
            h = h.value
        if isinstance(h, dict):
            h = h.get(field)
        if isinstance(h, str):
            out.append(h)
    return out


def has_word(text: str, words: Sequence[str]) -> bool:
    """Whether ``text`` holds one of ``words`` as a whole word (any case).

    Example:
        >>> has_word("Reply Yes or No.", ["yes"]), has_word("knowing", ["no"])
        (True, False)
    """
    low = text.lower()
    return any(
        re.search(rf"(?<!\w){re.escape(w.lower().strip())}(?!\w)", low) for w in words if w.strip()
    )


def length_limit(current: str) -> int:
    """The most characters a draft of ``current`` may have (``too_long`` above it).

    Example:
        >>> length_limit("Answer the question."), length_limit("x" * 100)
        (200, 300)
    """
    return int(max(MAX_GROWTH * len(current), MIN_LENGTH_LIMIT))


def filter_drafts(
    drafts: Sequence[Candidate],
    *,
    parent: dict[str, Any],
    history: Sequence[Any],
    evidence_inputs: Sequence[str],
    answer_words: Sequence[str] | None,
    field: str,
) -> tuple[list[Candidate], list[Dropped]]:
    """Apply the cheap filters (pure); see the module docstring.

    Args:
        drafts: Candidates, in the order they were drafted (a later copy of an earlier
            kept draft is the one dropped).
        parent: The parent's full values.
        history: Earlier values of ``field``: :class:`HistoryEntry` items (of ``field``
            or of no field), full value dicts, or the values themselves.
        evidence_inputs: The evidence units' inputs as text (what the optimizer was shown).
        answer_words: The words a parsed step's answer must contain (e.g. the labels), or
            None when the step's output is not parsed.
        field: The drafted param.

    Returns:
        ``(kept, dropped)``: the kept candidates in order, and one :class:`Dropped` per
        dropped draft (generator, reason, a short detail, the draft).
    """
    current = parent.get(field)
    current_text = current if isinstance(current, str) else ""
    earlier = ([current_text] if current_text else []) + _history_values(history, field)
    limit = length_limit(current_text)
    parent_names_answers = bool(answer_words) and has_word(current_text, answer_words or [])
    kept: list[Candidate] = []
    kept_texts: list[str] = []
    dropped: list[Dropped] = []

    def drop(c: Candidate, reason: str, detail: str, value: str) -> None:
        dropped.append(Dropped(c.generator, reason, detail, value))

    for c in drafts:
        value = c.values.get(field)
        if field not in c.changed and value == current:
            kept.append(c)  # not a draft of this field: nothing to filter
            continue
        if not isinstance(value, str):
            kept.append(c)
            continue
        copied = next((i for i, old in enumerate(earlier) if is_copy(value, old)), None)
        if copied is not None:
            what = "the current value" if copied == 0 and current_text else "an earlier value"
            drop(c, "copy", f"a copy of {what}", value)
            continue
        if len(value) > limit:
            drop(
                c,
                "too_long",
                f"{len(value)} characters, over {MAX_GROWTH:g}x the parent's {len(current_text)}",
                value,
            )
            continue
        shared, where = quoted_runs(value, evidence_inputs, current_text)
        if shared >= QUOTE_RUNS:
            drop(
                c,
                "quotes_evidence",
                f"shares {shared} 4-word runs with evidence input {where + 1}",
                value,
            )
            continue
        if answer_words and parent_names_answers and not has_word(value, answer_words):
            drop(
                c,
                "drops_answer_words",
                f"none of the answer words {', '.join(map(repr, answer_words))}",
                value,
            )
            continue
        twin = next((i for i, t in enumerate(kept_texts) if is_copy(value, t)), None)
        if twin is not None:
            drop(c, "copy", f"a copy of draft {twin + 1} kept before it", value)
            continue
        kept.append(c)
        kept_texts.append(value)
    return kept, dropped


def reasons(dropped: Iterable[Dropped]) -> Counter[str]:
    """How many drafts each reason dropped.

    Example:
        >>> reasons([Dropped("drafts", "copy"), Dropped("drafts", "copy"),
        ...          Dropped("drafts", "too_long")])
        Counter({'copy': 2, 'too_long': 1})
    """
    return Counter(d.reason for d in dropped)

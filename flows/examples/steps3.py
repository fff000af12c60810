"""A synthetic 3-step pipeline with one wrong param in step 2 (STeCa comparison).

``clean`` lower-cases the words (reads ``case``), ``select`` keeps the words at
least ``min_len`` letters long (reads ``min_len``), ``render`` joins them (reads
``sep``). The right values are ``case='lower'``, ``min_len=3``, ``sep=', '``; the
pipeline starts with ``min_len=6``, so every item holding a 3-5 letter word fails.
Feedback per item: ``correct`` (0/1), a critique and the expected output.

Used by the step-credit tests and ``bench/bench_credit.py``.

Example:
    >>> expected(["Ox", "Cat", "Garden"])
    'cat, garden'
"""

from __future__ import annotations

import random

from prefect import flow

import prefect_genopt as genopt

__all__ = [
    "WORDS",
    "RIGHT",
    "Steps3Params",
    "items",
    "expected",
    "clean",
    "select",
    "render",
    "steps3",
]

WORDS = (
    "ox",
    "go",
    "up",  # too short: dropped by the right pipeline too
    "cat",
    "dog",
    "sun",
    "tree",
    "lamp",
    "river",
    "stone",  # 3-5 letters: lost with min_len 6
    "garden",
    "window",
    "silver",
    "planet",
    "harbour",
    "lantern",  # 6+
)
RIGHT = {"case": "lower", "min_len": 3, "sep": ", "}


class Steps3Params(genopt.Tunables):
    """One param per step."""

    case: str = genopt.choice(
        "lower", options=["lower", "upper", "title"], description="letter case clean() writes"
    )
    min_len: int = genopt.numeric(
        6, ge=1, le=12, description="select() keeps only words at least this many letters long"
    )
    sep: str = genopt.choice(
        ", ", options=[", ", " ", "; "], description="what render() joins with"
    )


def items(n: int, seed: int) -> list[list[str]]:
    """``n`` items of 3-5 words (Title-cased), the same for the same seed."""
    rng = random.Random(seed)
    return [[w.title() for w in rng.sample(WORDS, rng.randint(3, 5))] for _ in range(n)]


def expected(words: list[str]) -> str:
    """What the right pipeline outputs for ``words``."""
    return RIGHT["sep"].join(w.lower() for w in words if len(w) >= RIGHT["min_len"])


@genopt.task
def clean(key: str, words: list[str]) -> list[str]:
    """Normalise the words' letter case."""
    case = genopt.current_params(item_key=key).case
    return [getattr(w, case)() for w in words]


@genopt.task
def select(key: str, words: list[str]) -> list[str]:
    """Keep the words that are long enough to matter."""
    n = genopt.current_params(item_key=key).min_len
    return [w for w in words if len(w) >= n]


@genopt.task
def render(key: str, words: list[str]) -> str:
    """Join the kept words into the output line."""
    return genopt.current_params(item_key=key).sep.join(words)


@flow(name="steps3")
@genopt.pipeline(name="steps3", params=Steps3Params)
def steps3(n: int = 6, seed: int = 0) -> float:
    """Clean, select and render each item; score it against the expected line."""
    right = 0
    for i, words in enumerate(items(n, seed)):
        key = f"s{seed}-{i}"
        out = render(key, select(key, clean(key, words)))
        want = expected(words)
        ok = out == want
        right += ok
        genopt.feedback(
            "correct",
            float(ok),
            item_key=key,
            comment=None if ok else f"expected {want!r}, got {out!r}",
            expected=want,
        )
    return right / n

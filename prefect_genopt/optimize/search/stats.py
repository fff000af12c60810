"""The confirmation's statistics: an exact one-sided sign test, its interval, McNemar.

A candidate is proposed only when it beats its parent on the confirmation items by an
exact one-sided sign test: on the items both scored, a *win* is an item the candidate did
better on, a *loss* one it did worse on, a *tie* the rest; under "no difference" wins
among the ``n = wins + losses`` disagreements are Binomial(n, 1/2), and
``p = P(X >= wins)``. Ties carry no information about which is better and are left out
(as GEPA and McNemar do). Everything here is pure and uses the standard library only.

The interval of the mean per-item difference (positive is better) is:

* for 0/1 scores, Newcombe's hybrid score interval for paired proportions (Newcombe
  1998, method 10: Wilson intervals of each proportion, combined with the correlation of
  the pair): it stays inside [-1, 1] and keeps its coverage at small counts, where the
  normal approximation does not;
* otherwise, the normal approximation on the per-item differences (mean +- 1.96 standard
  errors).

**How many items can confirm anything.** With no disagreement the test cannot reject;
with ``k`` disagreements the smallest p it can give is ``0.5**k``, so at ``p < 0.05`` it
needs at least 5 (:func:`min_disagreements`). Two prompts of one model disagree on a
fifth of the items or so, hence :func:`min_confirmation_items`: 25 items at 0.05, the
floor below which a night proposes nothing. Power is another matter: a candidate right
on 0.75 of the items against a parent's 0.60, independently, is confirmed on 150 items
about 85 times in 100 (:func:`power`), on 100 items 68, on 50 items 40.

Example:
    >>> parent = {f"i{k}": 0.0 for k in range(10)}
    >>> better = {f"i{k}": 1.0 for k in range(10)}
    >>> t = sign_test(parent, better)
    >>> t.wins, t.losses, t.ties, round(t.p_value, 5), t.diff_mean
    (10, 0, 0, 0.00098, 1.0)
    >>> t.accepted(0.05)
    True
    >>> sign_test(parent, parent).p_value
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "SignTest",
    "sign_test",
    "binom_tail",
    "mcnemar_exact",
    "min_disagreements",
    "min_confirmation_items",
    "power",
    "Z95",
]

#: the two-sided 95% normal quantile
Z95 = 1.959963984540054
#: the share of items on which two candidates typically disagree (min_confirmation_items)
DISAGREEMENT_RATE = 0.2


@dataclass(frozen=True)
class SignTest:
    """The paired comparison of a candidate with its parent on the items both scored.

    ``diff_mean`` is the mean per-item difference, signed so that positive is better
    (candidate minus parent when higher is better); ``ci_low``/``ci_high`` its 95%
    interval by ``ci_method`` (``newcombe`` for 0/1 scores, else ``normal``).
    """

    wins: int
    losses: int
    ties: int
    n_items: int
    p_value: float
    diff_mean: float
    ci_low: float
    ci_high: float
    ci_method: str
    direction: str = "higher"

    def accepted(self, alpha: float) -> bool:
        """Whether the candidate is confirmed better at level ``alpha`` (``p < alpha``)."""
        return self.p_value < alpha

    def as_dict(self) -> dict[str, Any]:
        """The numbers as a JSON-ready dict (a proposal's offline evidence)."""
        return asdict(self)

    def summary(self) -> str:
        """One line of numbers.

        Example:
            >>> sign_test({"a": 0.0, "b": 1.0}, {"a": 1.0, "b": 1.0}).summary()
            'wins 1, losses 0, ties 1 on 2 items: p = 0.5; difference +0.5 (95% CI -0.27 to +0.91, newcombe)'
        """  # noqa: E501
        return (
            f"wins {self.wins}, losses {self.losses}, ties {self.ties} on {self.n_items} "
            f"items: p = {self.p_value:.3g}; difference {self.diff_mean:+.3g} (95% CI "
            f"{self.ci_low:+.2f} to {self.ci_high:+.2f}, {self.ci_method})"
        )


def binom_tail(k: int, n: int) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, 1/2)``, exactly (integer sums).

    Example:
        >>> binom_tail(5, 5), binom_tail(0, 7), binom_tail(3, 4)
        (0.03125, 1.0, 0.3125)
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return sum(math.comb(n, i) for i in range(k, n + 1)) / 2**n


def _pairs(a: Mapping[str, float], b: Mapping[str, float]) -> list[tuple[float, float]]:
    """``(a, b)`` values of the items both scored with finite numbers, in item order."""
    out = []
    for key in sorted(set(a) & set(b)):
        x, y = float(a[key]), float(b[key])
        if math.isfinite(x) and math.isfinite(y):
            out.append((x, y))
    return out


def _wilson(x: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval of a proportion ``x / n``."""
    if n == 0:
        return 0.0, 1.0
    p = x / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def _newcombe(both: int, wins: int, losses: int, neither: int) -> tuple[float, float]:
    """Newcombe's method 10 interval of ``p_candidate - p_parent`` for paired 0/1 data
    (``both``: both right; ``wins``: only the candidate; ``losses``: only the parent)."""
    n = both + wins + losses + neither
    p1, p2 = (both + wins) / n, (both + losses) / n
    l1, u1 = _wilson(both + wins, n)
    l2, u2 = _wilson(both + losses, n)
    margins = (both + wins) * (losses + neither) * (both + losses) * (wins + neither)
    phi = (both * neither - wins * losses) / math.sqrt(margins) if margins else 0.0
    delta = p1 - p2
    lo = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    hi = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return max(-1.0, delta - math.sqrt(max(lo, 0.0))), min(1.0, delta + math.sqrt(max(hi, 0.0)))


def _normal(diffs: list[float]) -> tuple[float, float]:
    n = len(diffs)
    mean = math.fsum(diffs) / n
    if n < 2:
        return -math.inf, math.inf
    var = math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)
    half = Z95 * math.sqrt(var / n)
    return mean - half, mean + half


def sign_test(
    parent: Mapping[str, float], candidate: Mapping[str, float], *, direction: str = "higher"
) -> SignTest:
    """The exact one-sided sign test of ``candidate`` against ``parent`` (pure).

    Items scored by one side only, or with a non-finite score on either side, are left
    out (the evaluator scores a crash or NaN as a failure before it gets here).

    Args:
        parent: The parent's per-item scores.
        candidate: The candidate's per-item scores.
        direction: ``higher`` or ``lower`` (which KPI values are better).

    Example:
        >>> p = {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0}
        >>> c = {"a": 1.0, "b": 1.0, "c": 0.0, "d": 1.0}
        >>> t = sign_test(p, c)
        >>> (t.wins, t.losses, t.ties, t.p_value, t.diff_mean)
        (2, 1, 1, 0.5, 0.25)
        >>> sign_test(p, c, direction="lower").wins
        1
    """
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    sign = 1.0 if direction == "higher" else -1.0
    pairs = _pairs(parent, candidate)
    diffs = [sign * (c - p) for p, c in pairs]
    wins = sum(d > 0 for d in diffs)
    losses = sum(d < 0 for d in diffs)
    ties = len(diffs) - wins - losses
    p_value = binom_tail(wins, wins + losses) if wins + losses else 1.0
    if not diffs:
        return SignTest(0, 0, 0, 0, 1.0, 0.0, -math.inf, math.inf, "none", direction)
    mean = math.fsum(diffs) / len(diffs)
    if all(v in (0.0, 1.0) for pair in pairs for v in pair):
        good = [(p == (sign > 0), c == (sign > 0)) for p, c in pairs]  # (parent, candidate)
        both = sum(p and c for p, c in good)
        neither = sum(not p and not c for p, c in good)
        lo, hi = _newcombe(both, wins, losses, neither)
        method = "newcombe"
    else:
        lo, hi = _normal(diffs)
        method = "normal"
    return SignTest(wins, losses, ties, len(diffs), p_value, mean, lo, hi, method, direction)


def mcnemar_exact(a: Mapping[str, float], b: Mapping[str, float]) -> float:
    """Two-sided exact McNemar p of two systems' per-item correctness (pure).

    An item is right when its score is at least 0.5 (a 0/1 KPI); only the items both
    scored count. ``p = min(1, 2 P(X <= min(b01, b10)))`` with ``X ~ Binomial(b01 + b10,
    1/2)``, where ``b01``/``b10`` count the items only one of them got right.

    Example:
        >>> a = {str(i): 1.0 for i in range(12)}
        >>> b = {**a, **{str(i): 0.0 for i in range(8)}}
        >>> round(mcnemar_exact(a, b), 4), mcnemar_exact(a, a)
        (0.0078, 1.0)
    """
    pairs = _pairs(a, b)
    only_a = sum(x >= 0.5 > y for x, y in pairs)
    only_b = sum(y >= 0.5 > x for x, y in pairs)
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    lower = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * lower)


def min_disagreements(alpha: float = 0.05) -> int:
    """The fewest disagreements with which the one-sided sign test can give ``p < alpha``
    (every one a win: ``0.5**k < alpha``).

    Example:
        >>> min_disagreements(0.05), min_disagreements(0.01)
        (5, 7)
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    k = 1
    while 0.5**k >= alpha:
        k += 1
    return k


def min_confirmation_items(
    alpha: float = 0.05, disagreement_rate: float = DISAGREEMENT_RATE
) -> int:
    """The confirmation items below which a night proposes nothing: enough for
    :func:`min_disagreements` disagreements at the typical ``disagreement_rate``.

    Example:
        >>> min_confirmation_items(), min_confirmation_items(0.01, 0.5)
        (25, 14)
    """
    if not 0 < disagreement_rate <= 1:
        raise ValueError(f"disagreement_rate must be in (0, 1], got {disagreement_rate}")
    return math.ceil(min_disagreements(alpha) / disagreement_rate)


def power(n_items: int, p_win: float, p_loss: float, alpha: float = 0.05) -> float:
    """The chance the sign test confirms a candidate that wins an item with probability
    ``p_win`` and loses one with ``p_loss`` (independently per item), on ``n_items``.

    For a parent right with probability ``p0`` and a candidate with ``p1``, independently:
    ``p_win = p1 (1 - p0)``, ``p_loss = p0 (1 - p1)``.

    Example:
        >>> round(power(150, 0.75 * 0.4, 0.6 * 0.25), 2)
        0.85
        >>> power(150, 0.2, 0.2) < 0.05
        True
    """
    p_dis = p_win + p_loss
    if n_items <= 0 or p_dis <= 0:
        return 0.0
    q = p_win / p_dis
    total = 0.0
    for d in range(1, n_items + 1):
        # smallest number of wins among d disagreements that the test accepts
        need = next((w for w in range(d + 1) if binom_tail(w, d) < alpha), None)
        if need is None:
            continue
        p_d = math.comb(n_items, d) * p_dis**d * (1 - p_dis) ** (n_items - d)
        if p_d < 1e-15:
            continue
        accept = sum(math.comb(d, w) * q**w * (1 - q) ** (d - w) for w in range(need, d + 1))
        total += p_d * accept
    return total

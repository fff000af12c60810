"""What redaction costs per value: the patterns of issue 15 against the ones before.

Redaction runs on every stored string (span attributes, task inputs and outputs, feedback),
so its cost is on the per-span path (``bench_tracing`` times ``on_end`` as a whole). This
times :func:`prefect_genopt.redaction.redact` and ``clean`` per value, in one process, for
the patterns in force and for the patterns before issue 15 (copied below, with the same
trigger-scan-then-patterns logic), on:

* ``plain``: ordinary text with no trigger word (one scan, no pattern runs);
* ``triggered``: ordinary text with a trigger word (``key``, ``token``...) but no secret,
  the common case for task inputs that mention keys (every pattern runs);
* ``secrets`` and ``lookalikes``: the test corpus (prefect_genopt/testing/redaction_corpus.py);
* ``clean(dict)``: a task's inputs as a small nested dict (walk, JSON, redact, truncate).

"now" is the patterns' own cost (``_redact_builtin``); ``redact`` also remembers the
result for values of at most 256 characters, which repeat from span to span (names, ids,
states): "cached" is a repeated value's cost.

Usage: ``python -m bench.bench_redaction [--repeats N] [--quick]``
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from typing import Any

import orjson

from prefect_genopt import redaction
from prefect_genopt.testing.redaction_corpus import LOOKALIKES, SECRETS

#: The built-in patterns and trigger before issue 15 (prefect_genopt/redaction.py then).
OLD_PATTERNS: tuple[str, ...] = (
    r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{6,}=*)",
    r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}",
    r"\b(?:ghp|gho|ghs|ghu|github_pat|glpat|xox[abposr])[-_][A-Za-z0-9_\-]{10,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bAIza[0-9A-Za-z_\-]{35}\b",
    r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    r"(?i)\b(?:api[_-]?key|secret|password|passwd|(?:access|auth|refresh|api)?[_-]?token)"
    r"[\"']?\s*[:=]\s*[\"']?([^\s\"',;&]{4,})",
)
OLD_TRIGGER = re.compile(
    r"bearer|sk-|gh[opsu]_|github_pat|glpat|xox[abposr]|akia|aiza|eyj|key|secret|passw|token"
)
OLD = redaction.Patterns(tuple(re.compile(p) for p in OLD_PATTERNS), ())


def old_redact(text: str) -> str:
    """redact() as it was: one trigger scan, then every built-in pattern."""
    if text and OLD_TRIGGER.search(text.lower()):
        text = redaction._apply(OLD.builtin, text)
    return text


def old_scrub(value: Any, depth: int = 0) -> Any:
    """The structure walk as it was (recursive, 8 levels)."""
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {
            k: (
                redaction.REDACTED
                if isinstance(k, str) and OLD_SECRET_KEY.search(k)
                else old_scrub(v, depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [old_scrub(v, depth + 1) for v in value]
    return value


OLD_SECRET_KEY = re.compile(
    r"(?i)(api[_-]?key|secret|password|passwd|authorization|access[_-]?token|auth[_-]?token"
    r"|private[_-]?key|client[_-]?secret|^token$)"
)


def old_clean(value: Any, limit: int = 4096) -> str:
    """clean() as it was."""
    raw = orjson.dumps(old_scrub(value), option=orjson.OPT_NON_STR_KEYS).decode()
    return redaction.truncate(old_redact(raw), limit)


PLAIN = (
    "Customer reports that the invoice for March was charged twice; they would like a "
    "refund of the second charge and a confirmation email. Order 48213, plan Pro."
)
TRIGGERED = (
    "Customer cannot find the key settings page after the update; the token count in the "
    "usage view looks wrong and the sort key of the table changed. Order 48213, plan Pro."
)
INPUTS: dict[str, Any] = {
    "ticket": {"id": "T-48213", "subject": "double charge", "body": PLAIN},
    "history": [{"role": "agent", "text": TRIGGERED}, {"role": "customer", "text": PLAIN}],
    "options": {"max_tokens": 512, "temperature": 0.0},
}


def per_call_us(fn: Callable[[], object], values: int, repeats: int) -> float:
    """Best of ``repeats`` rounds of ``fn`` (which handles ``values`` values), in µs/value."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best / values * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="rounds per case (best is kept)")
    parser.add_argument("--quick", action="store_true", help="a smoke run (2 rounds)")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 2
    pats = redaction.patterns()
    cases: dict[str, list[str]] = {
        "plain": [PLAIN] * 200,
        "triggered": [TRIGGERED] * 200,
        "secrets": [t for t, _ in SECRETS] * 5,
        "lookalikes": LOOKALIKES * 5,
    }
    print(f"{'values':<14}{'before µs':>12}{'now µs':>10}{'ratio':>8}{'cached µs':>12}")
    for name, values in cases.items():
        before = per_call_us(lambda v=values: [old_redact(x) for x in v], len(values), args.repeats)
        now = per_call_us(
            lambda v=values: [redaction._redact_builtin(x, pats) for x in v],
            len(values),
            args.repeats,
        )
        cached = per_call_us(
            lambda v=values: [redaction.redact(x, pats) for x in v], len(values), args.repeats
        )
        print(f"{name:<14}{before:>12.2f}{now:>10.2f}{now / before:>8.2f}{cached:>12.2f}")
    n = 200
    before = per_call_us(lambda: [old_clean(INPUTS) for _ in range(n)], n, args.repeats)
    now = per_call_us(lambda: [redaction.clean(INPUTS) for _ in range(n)], n, args.repeats)
    print(f"{'clean(dict)':<14}{before:>12.2f}{now:>10.2f}{now / before:>8.2f}")
    leaked = sum(s in old_redact(t) for t, s in SECRETS)
    print(
        f"corpus: {len(SECRETS)} secrets, {leaked} leak with the patterns before, "
        f"{sum(s in redaction.redact(t) for t, s in SECRETS)} now"
    )


if __name__ == "__main__":
    main()

"""Check functions: what a recorded step must satisfy to become (and stay) an experience.

A check is user code registered per pipeline (and optionally per step) with
:func:`check`; it receives the step's inputs (a dict of argument name -> value)
and its output, and returns True (pass), False or a string (fail, with the
reason). Built-in checks run first on every step:

* ``exact``: the output was stored exactly (plain JSON values: a replay returns
  what the step returned);
* ``unredacted``: nothing in the inputs or output was redacted (a replay of a
  masked value would be wrong);
* ``completed``: the step returned a value (not None).

Checks run when experiences are harvested and again before each replay, so a
check added later also guards old experiences.

Example:
    >>> @check("triage", step="classify")
    ... def label_in_allowed_set(inputs, output):
    ...     return output in ("billing", "bug", "other") or f"unknown label {output!r}"
    >>> run_checks("triage", "classify", {"text": "hi"}, "bug", exact=True, redacted=False)
    {'exact': True, 'unredacted': True, 'completed': True, 'label_in_allowed_set': True}
    >>> failed(run_checks("triage", "classify", {}, "spam", exact=True, redacted=False))
    ["label_in_allowed_set: unknown label 'spam'"]
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["check", "run_checks", "failed", "registered", "CheckFn"]

logger = logging.getLogger("prefect_genopt.replay")

#: ``fn(inputs, output) -> bool | str`` (a string is a failure and says why)
CheckFn = Callable[[dict[str, Any], Any], "bool | str"]

F = Callable[..., Any]

_lock = threading.Lock()
#: pipeline -> [(step or None for every step, name, fn)]
_registry: dict[str, list[tuple[str | None, str, CheckFn]]] = {}


def check(pipeline: str, *, step: str | None = None, name: str | None = None) -> Callable[[F], F]:
    """Register a check function for ``pipeline`` (all its steps, or only ``step``).

    Args:
        pipeline: The pipeline name (as in ``@genopt.pipeline(name=...)``).
        step: A task name (its function's ``__qualname__``); default: every step.
        name: The check's name in the records (default: the function's name).

    Registering the same name again replaces the earlier function (module reloads).
    """

    def register(fn: F) -> F:
        label = name or getattr(fn, "__name__", "check")
        with _lock:
            entries = [e for e in _registry.get(pipeline, []) if e[1] != label]
            entries.append((step, label, fn))
            _registry[pipeline] = entries
        return fn

    return register


def registered(pipeline: str, step: str | None = None) -> list[tuple[str, CheckFn]]:
    """The user checks that apply to ``step`` of ``pipeline`` (every step's, if None)."""
    with _lock:
        entries = list(_registry.get(pipeline, []))
    return [(n, fn) for s, n, fn in entries if s is None or step is None or s == step]


def run_checks(
    pipeline: str,
    step: str,
    inputs: dict[str, Any],
    output: Any,
    *,
    exact: bool,
    redacted: bool,
) -> dict[str, bool | str]:
    """Run the built-in and the registered checks; name -> True or the failure reason.

    A check that raises fails with the exception as its reason.
    """
    results: dict[str, bool | str] = {
        "exact": True if exact else "the output is not plain JSON, so it cannot be replayed",
        "unredacted": "a value was redacted" if redacted else True,
        "completed": True if output is not None else "the step returned None",
    }
    for label, fn in registered(pipeline, step):
        try:
            verdict = fn(inputs, output)
        except Exception as exc:  # noqa: BLE001 - a broken check fails, it never passes
            verdict = f"raised {type(exc).__name__}: {exc}"
        if verdict is True:
            results[label] = True
        else:
            results[label] = str(verdict) if isinstance(verdict, str) else "returned False"
    return results


def failed(results: dict[str, bool | str]) -> list[str]:
    """The failed checks of :func:`run_checks`' results, as ``name: reason``."""
    return [f"{k}: {v}" for k, v in results.items() if v is not True]

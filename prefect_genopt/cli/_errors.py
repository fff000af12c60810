"""The one place that turns an error into ``genopt``'s exit status and message.

Exit statuses: 0 done; 1 ``genopt instruction tune`` got an unusable answer (nothing
stored), or an unexpected error (a traceback, as Python prints it); 2 an error the
command explains in one line (nothing changed); 3 ``genopt rollout start``: the replay
gate found the candidate worse than stable, so no item saw it; 4 ``genopt rollout start``:
the replay gate could not run (the message says why), so nothing started (``--no-gate``
starts without it).

Example:
    >>> from prefect_genopt.errors import BusyError, GateStoppedError
    >>> exit_status(GateStoppedError("worse")), exit_status(BusyError("locked"))
    ((3, 'stopped'), (2, 'error'))
    >>> exit_status(KeyError("a bug")) is None
    True
"""

from __future__ import annotations

import sys

from prefect_genopt import errors

__all__ = ["EXIT_CODES", "EXIT_GATE_STOPPED", "EXIT_GATE_SKIPPED", "exit_status", "known_error"]

#: `genopt rollout start`: the replay gate found the candidate worse; nothing was rolled out
EXIT_GATE_STOPPED = 3
#: `genopt rollout start`: the replay gate could not run; nothing was rolled out
EXIT_GATE_SKIPPED = 4

#: Error kind -> (exit status, word after the command in the message), first match wins.
#: A kind is a class, or "module:Class" for a library's class that is looked up only if
#: that library was imported (so the table loads nothing). Errors not listed propagate
#: (a traceback, exit status 1), as before the tree.
EXIT_CODES: tuple[tuple[type[BaseException] | str, int, str], ...] = (
    (errors.GateStoppedError, EXIT_GATE_STOPPED, "stopped"),
    (errors.GateSkippedError, EXIT_GATE_SKIPPED, "gate not run"),
    (errors.BadInputError, 2, "error"),
    (errors.NotFoundError, 2, "error"),
    (errors.ConflictError, 2, "error"),
    (errors.BusyError, 2, "error"),
    (errors.UnavailableError, 2, "error"),
    (errors.BudgetError, 2, "error"),
    (errors.GenoptError, 2, "error"),
    ("duckdb:Error", 2, "SQL error"),
)


def _resolve(kind: type[BaseException] | str) -> type[BaseException] | None:
    if not isinstance(kind, str):
        return kind
    module, _, name = kind.partition(":")
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def _prefect_down(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps) says the Prefect API could not be reached:
    Prefect's own "Failed to reach API at ..." or a failed request to its address."""
    from prefect_genopt.rollout import store

    url = store.api_url().rstrip("/")
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, RuntimeError) and "Failed to reach API at" in str(err):
            return True
        try:
            target = str(err.request.url)  # type: ignore[attr-defined]  # httpx errors
        except (AttributeError, RuntimeError):
            target = ""
        if target.startswith(url) and store.is_unreachable(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def known_error(exc: BaseException) -> BaseException:
    """``exc``, or the error of the tree it stands for: an error that says the Prefect API
    is down becomes a ``PrefectUnavailable`` ("Prefect API unreachable at URL", exit 2).

    Example:
        >>> err = KeyError("a bug")
        >>> known_error(err) is err
        True
    """
    if isinstance(exc, errors.GenoptError) or "prefect" not in sys.modules:
        return exc
    if not _prefect_down(exc):
        return exc
    from prefect_genopt.rollout import store

    return store.unreachable_error(exc)


def exit_status(exc: BaseException) -> tuple[int, str] | None:
    """``(exit status, label)`` for an error the CLI reports in one line, else None."""
    for kind, code, label in EXIT_CODES:
        cls = _resolve(kind)
        if cls is not None and isinstance(exc, cls):
            return code, label
    return None

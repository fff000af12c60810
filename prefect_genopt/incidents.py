"""genopt's own failures inside a pipeline run: logged once per cause per run, counted.

Observability must never take production down. When genopt cannot record something
during a pipeline run (the spool's disk is full or read-only, an exporter fails, the
code passed a NaN KPI to :func:`prefect_genopt.feedback`), the run goes on: the first
failure of each cause in a run logs one warning line (no traceback), the later ones are
only counted, and the counts travel on the run's end record to ``runs.genopt_errors``
(shown by ``genopt status``).

``GENOPT_STRICT=1`` restores raising where genopt is called from the flow's own code
(:func:`prefect_genopt.feedback`, the pipeline's run records), for tests; spans dropped
on the background exporter thread are then logged with their traceback. Outside a
pipeline run the Python API raises, whatever the setting.

Example:
    >>> import errno
    >>> cause_of(OSError(errno.ENOSPC, "No space left on device"))
    'spool_full'
    >>> note("spool_full", run_id="run-doc", count=3, detail="disk full")
    >>> note("bad_feedback", run_id="run-doc")
    >>> counts("run-doc")
    {'spool_full': 3, 'bad_feedback': 1}
    >>> forget("run-doc")
"""

from __future__ import annotations

import errno
import logging
import threading
from collections import Counter, OrderedDict

from prefect_genopt.records import FeedbackError
from prefect_genopt.settings import get_settings

__all__ = ["CAUSES", "cause_of", "note", "counts", "forget", "strict", "recovered"]

logger = logging.getLogger("prefect_genopt.incidents")

#: cause -> what it means (the warning line says it)
CAUSES: dict[str, str] = {
    "spool_full": "the spool's disk is full",
    "spool_read_only": "the spool cannot be written (read-only file system or permissions)",
    "spool_error": "the spool cannot be written",
    "export_failed": "spans could not be exported",
    "queue_full": "spans were dropped: genopt's span queue was full",
    "bad_feedback": "feedback was refused",
    "internal": "genopt failed while recording the run",
}

#: runs whose counts are kept in this process (the oldest are forgotten past it)
MAX_RUNS = 1024

_lock = threading.Lock()
_counts: OrderedDict[str | None, Counter[str]] = OrderedDict()
_warned: set[tuple[str | None, str]] = set()


def cause_of(exc: BaseException | None) -> str:
    """The cause a failure is counted under.

    Example:
        >>> import errno
        >>> cause_of(PermissionError(errno.EACCES, "Permission denied"))
        'spool_read_only'
        >>> cause_of(None)
        'export_failed'
    """
    if exc is None:
        return "export_failed"
    if isinstance(exc, FeedbackError):
        return "bad_feedback"
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return "spool_full"
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "spool_read_only"
        return "spool_error"
    return "internal"


def strict() -> bool:
    """Whether genopt raises its own failures inside a run (``GENOPT_STRICT``)."""
    return get_settings().strict


def note(
    cause: str,
    *,
    run_id: str | None,
    count: int = 1,
    detail: str = "",
    exc: BaseException | None = None,
) -> None:
    """Count ``count`` failures of ``cause`` for a run (None: outside any run).

    The first one of each cause in a run logs one warning line; the others are only
    counted. In strict mode each one is logged, with its traceback.
    """
    with _lock:
        per_run = _counts.get(run_id)
        if per_run is None:
            per_run = _counts[run_id] = Counter()
            while len(_counts) > MAX_RUNS:
                old, _ = _counts.popitem(last=False)
                _warned.difference_update({w for w in _warned if w[0] == old})
        else:
            _counts.move_to_end(run_id)
        per_run[cause] += count
        first = (run_id, cause) not in _warned
        _warned.add((run_id, cause))
    where = f"in run {run_id}" if run_id else "outside a pipeline run"
    what = CAUSES.get(cause, cause)
    if not detail:
        detail = type(exc).__name__ if exc is not None else cause
    if strict():
        logger.warning("genopt: %s %s: %s", what, where, detail, exc_info=exc)
    elif first:
        logger.warning(
            "genopt: %s %s (%s); the flow goes on. Further failures of this kind %s are "
            "counted without a log line (runs.genopt_errors, genopt status).",
            what,
            where,
            detail,
            "in this run" if run_id else "in this process",
        )


def counts(run_id: str | None) -> dict[str, int]:
    """Failures counted for a run so far, by cause (empty when none)."""
    with _lock:
        return dict(_counts.get(run_id) or {})


def forget(run_id: str | None) -> None:
    """Drop a run's counts and its once-per-cause memory."""
    with _lock:
        _counts.pop(run_id, None)
        _warned.difference_update({w for w in _warned if w[0] == run_id})


def recovered() -> None:
    """Writing works again: the next failure outside a run warns again."""
    with _lock:
        if any(run is None for run, _ in _warned):
            logger.info("genopt can write again after earlier failures")
            _warned.difference_update({w for w in _warned if w[0] is None})

"""The append-only spool: how every process writes without opening the warehouse.

DuckDB lets one process write a file and locks readers out meanwhile, while
Prefect runs flows in many processes. So pipeline processes, the OTLP receiver
and CLI commands never open the warehouse for writing: each process appends
JSON lines to its own spool file (``<host>__<pid>__<id>.open``), one
``write(2)`` per batch of records, unbuffered, so what was written survives the
process being killed. A closed file is renamed to ``.jsonl`` (sealed). The
ingester (:mod:`prefect_genopt.warehouse.ingest`) is the only writer of the
warehouse; it loads complete lines and remembers how far it got in each file.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> w = SpoolWriter(d)
    >>> w.append([{"k": "feedback", "kpi": "accuracy", "value": 1.0}])
    >>> w.close()
    >>> [f.state for f in list_files(d)]
    ['sealed']
"""

from __future__ import annotations

import atexit
import errno
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from prefect_genopt.errors import UnavailableError
from prefect_genopt.records import HOST
from prefect_genopt.redaction import _dumps_deep

__all__ = [
    "SpoolWriter",
    "SpoolError",
    "SpoolFile",
    "writer_for",
    "append",
    "list_files",
    "close_all",
    "pid_alive",
    "add_flush_hook",
    "remove_flush_hook",
    "flush_pending",
    "free_bytes",
    "check_reserve",
    "seal",
    "staging_files",
    "STAGING_PREFIX",
]

logger = logging.getLogger("prefect_genopt.spool")

OPEN_SUFFIX = ".open"
SEALED_SUFFIX = ".jsonl"
#: A writer seals its file and starts a new one past this size (read at each new writer).
DEFAULT_ROTATE_BYTES = 64 * 1024 * 1024
#: Copies older ingesters made of the lines they loaded (``.staging-<pid>-<id>.jsonl``).
#: Ingest reads in place now; a leftover (a killed ingest) holds nothing the spool files
#: do not, and the next ingest removes it.
STAGING_PREFIX = ".staging-"

#: errno -> how the spool's failure reads in messages
_WHY = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "the file is too large",
}


class SpoolError(UnavailableError, OSError):
    """The spool could not be written (disk full, permissions, ...)."""


def _spool_error(directory: Path, exc: OSError, what: str = "write") -> SpoolError:
    """A :class:`SpoolError` that says where, why (the errno in words) and what was lost."""
    code = exc.errno or errno.EIO
    why = _WHY.get(code) or exc.strerror or str(exc)
    name = errno.errorcode.get(code, str(code))
    return SpoolError(
        code, f"cannot {what} the spool {directory}: {why} ({name}); the records were not stored"
    )


#: ``os.write``, looked up at each call: tests replace it to inject a full disk
_write = os.write


_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _encode(records: list[dict[str, Any]]) -> bytes:
    try:
        return b"".join(orjson.dumps(r, option=_OPTIONS) + b"\n" for r in records)
    except orjson.JSONEncodeError:  # a value nested deeper than orjson goes: one by one
        return b"".join(_encode_one(r) + b"\n" for r in records)


def _encode_one(record: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(record, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return _dumps_deep(record).encode()


class SpoolWriter:
    """Appends records to this process's own spool file in ``directory``.

    Thread-safe. Each :meth:`append` is one unbuffered ``write(2)`` of whole
    lines, so a killed process leaves at most one partial line, which the
    ingester sets aside (never loads, never loses: it keeps the bytes).
    """

    def __init__(self, directory: Path, rotate_bytes: int | None = None) -> None:
        self.directory = Path(directory)
        self.rotate_bytes = DEFAULT_ROTATE_BYTES if rotate_bytes is None else rotate_bytes
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._written = 0

    def _open(self) -> int:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{HOST}__{self.pid}__{uuid.uuid4().hex[:12]}{OPEN_SUFFIX}"
            self._path = self.directory / name
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            self._fd = self._path = None
            raise _spool_error(self.directory, exc, "open") from exc
        self._written = 0
        return self._fd

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records (dicts with a ``k`` kind) as JSON lines.

        All or nothing: when the write fails, the file is cut back to its last complete
        line (see :meth:`_undo_partial`) and :class:`SpoolError` says why.
        """
        if not records:
            return
        data = _encode(records)
        with self._lock:
            fd = self._fd if self._fd is not None else self._open()
            view = memoryview(data)
            try:
                while view:
                    n = _write(fd, view)
                    view = view[n:]
            except OSError as exc:
                self._undo_partial()
                raise _spool_error(self.directory, exc) from exc
            self._written += len(data)
            if self._written >= self.rotate_bytes:
                self._seal()

    def _undo_partial(self) -> None:
        """After a failed write: cut the file back to its last complete line, so the next
        record stands on its own line; seal a file that holds records (the ingester can
        then load and delete it, freeing its space); a file that cannot be cut is sealed
        as it is (the ingester sets its unfinished line aside, never glues onto it)."""
        fd = self._fd
        if fd is None:
            return
        try:
            os.ftruncate(fd, self._written)
        except OSError as exc:
            logger.warning(
                "cannot cut spool file %s back to its last complete line (%s): sealing it",
                self._path,
                exc,
            )
            self._seal()
            return
        if self._written:
            self._seal()

    def _seal(self) -> None:
        if self._fd is None or self._path is None:
            return
        try:
            os.close(self._fd)
        except OSError:  # a close that reports a failed flush: nothing more to do here
            pass
        self._fd = None
        try:
            os.rename(self._path, self._path.with_suffix(SEALED_SUFFIX))
        except FileNotFoundError:  # already ingested and removed as a dead writer's file
            pass
        self._path = None

    def close(self) -> None:
        """Seal the current file (it can be deleted once fully ingested)."""
        with self._lock:
            self._seal()


_writers: dict[tuple[int, Path], SpoolWriter] = {}
_writers_lock = threading.Lock()


def writer_for(directory: Path) -> SpoolWriter:
    """This process's writer for ``directory`` (a new one after ``fork``)."""
    key = (os.getpid(), Path(directory))
    w = _writers.get(key)
    if w is None:
        with _writers_lock:
            w = _writers.get(key)
            if w is None:
                w = _writers[key] = SpoolWriter(directory)
    return w


def append(records: list[dict[str, Any]], directory: Path | None = None) -> None:
    """Append records to this process's spool file under the configured spool dir."""
    if directory is None:
        from prefect_genopt.settings import get_settings

        directory = get_settings().spool_dir
    writer_for(directory).append(records)


def close_all() -> None:
    """Seal every spool file this process has open (called at exit)."""
    pid = os.getpid()
    for (wpid, _), w in list(_writers.items()):
        if wpid == pid:
            w.close()


def seal(directory: Path) -> None:
    """Seal this process's open file in ``directory``, if any (the next append starts a
    new one); the ingester deletes a sealed file once it has loaded it."""
    w = _writers.get((os.getpid(), Path(directory)))
    if w is not None:
        w.close()


def free_bytes(directory: Path) -> int | None:
    """Free bytes on the file system holding ``directory`` (or its nearest existing
    parent), or None when it cannot be told.

    Example:
        >>> free_bytes(Path(".")) > 0
        True
    """
    path = Path(directory)
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None


def check_reserve(directory: Path, reserve_bytes: int) -> None:
    """Refuse to write while the spool's disk has less than ``reserve_bytes`` free.

    The reserve keeps room for the warehouse (by default on the same disk) to load the
    backlog; once the ingester has loaded and deleted spool files, writes are accepted
    again. Before refusing, this process's open file in ``directory`` is sealed, so the
    ingester can delete it too once it is loaded (the receiver's own file would otherwise
    stay open, and its space taken, until it grew to its rotation size).

    Raises:
        SpoolError: Below the reserve (``ENOSPC``), saying how much is free.

    Example:
        >>> check_reserve(Path("."), 0)  # no reserve: never refuses
    """
    if reserve_bytes <= 0:
        return
    free = free_bytes(directory)
    if free is None or free >= reserve_bytes:
        return
    seal(directory)
    raise SpoolError(
        errno.ENOSPC,
        f"the spool {directory} has {free / 2**20:.1f} MB free, below its reserve of "
        f"{reserve_bytes / 2**20:.1f} MB (GENOPT_SPOOL_RESERVE_MB): records are refused "
        "until an ingest has loaded and deleted spool files",
    )


def staging_files(directory: Path) -> list[Path]:
    """Staging copies older ingesters left in ``directory`` (see :data:`STAGING_PREFIX`)."""
    try:
        return sorted(
            Path(e.path)
            for e in os.scandir(directory)
            if e.name.startswith(STAGING_PREFIX) and e.name.endswith(SEALED_SUFFIX)
        )
    except FileNotFoundError:
        return []


atexit.register(close_all)

_flush_hooks: list[Callable[[], object]] = []


def add_flush_hook(hook: Callable[[], object]) -> None:
    """Call ``hook`` before the spool is read: a writer that holds records back (the
    span processor's queue) hands them to the spool then. Adding a hook twice adds it once.

    The warehouse runs the hooks (:func:`flush_pending`) before it ingests and before a
    reader's first query, so what this process wrote is in the answer; tracing adds its
    processor's flush (:func:`prefect_genopt.tracing.setup_tracing`). Hooks keep the
    warehouse from importing the writers above it.
    """
    if hook not in _flush_hooks:
        _flush_hooks.append(hook)


def remove_flush_hook(hook: Callable[[], object]) -> None:
    """Stop calling ``hook`` (no error if it was not added)."""
    if hook in _flush_hooks:
        _flush_hooks.remove(hook)


def flush_pending() -> None:
    """Run the flush hooks (records held back in this process reach their spool files).

    A failing hook is logged and the others still run: reading goes on.

    Example:
        >>> calls = []
        >>> def hook() -> None:
        ...     calls.append("flushed")
        >>> add_flush_hook(hook)
        >>> add_flush_hook(hook)
        >>> flush_pending()
        >>> calls
        ['flushed']
        >>> remove_flush_hook(hook)
    """
    for hook in list(_flush_hooks):
        try:
            hook()
        except Exception:  # noqa: BLE001 - a writer's failure must not stop the reader
            logger.exception("spool flush hook %r failed", hook)


@dataclass(frozen=True)
class SpoolFile:
    """A spool file as the ingester sees it."""

    path: Path
    stem: str
    host: str
    pid: int
    state: str  # "open" or "sealed"

    @property
    def writer_alive(self) -> bool:
        """False when the writer is known to be gone (same host, no such process)."""
        if self.state == "sealed":
            return False
        if self.host != HOST:
            return True
        return pid_alive(self.pid)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped) has exited: it will never write again
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ", 1)[1][:1] != b"Z"
    except (OSError, IndexError):
        return True


def list_files(directory: Path) -> list[SpoolFile]:
    """Spool files in ``directory``, oldest first (by modification time)."""
    out = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for e in entries:
        name = e.name
        if name.endswith(OPEN_SUFFIX):
            state, stem = "open", name[: -len(OPEN_SUFFIX)]
        elif name.endswith(SEALED_SUFFIX):
            state, stem = "sealed", name[: -len(SEALED_SUFFIX)]
        else:
            continue
        parts = stem.split("__")
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        try:
            mtime = e.stat().st_mtime
        except FileNotFoundError:
            continue
        out.append((mtime, SpoolFile(Path(e.path), stem, parts[0], int(parts[1]), state)))
    out.sort(key=lambda t: (t[0], t[1].stem))
    return [f for _, f in out]

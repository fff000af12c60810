"""Opening the warehouse file: briefly, and waiting instead of failing on a lock.

DuckDB lets one process hold a file for writing, and while it does, other
processes cannot even read it ("Could not set lock on file"). Every opener here
retries with a capped, jittered backoff until ``GENOPT_LOCK_TIMEOUT`` and then
raises :class:`WarehouseBusyError`, which names the holder.

A *restricted* read (``restricted=True``, what ``genopt sql`` without ``--write``
uses) is read-only and also cannot touch other files or change settings:
:data:`RESTRICTED_CONFIG` is passed at connect time (docs/architecture.md, decision 12),
so ``COPY ... TO``, ``EXPORT DATABASE``, ``read_csv``/``read_text``, ``glob``,
``ATTACH``, ``INSTALL``/``LOAD``, ``SET`` and ``PRAGMA`` settings are refused while
``SELECT`` works. DuckDB refuses a second connection to one file, in one process,
with another configuration; openers here hold :data:`process_lock`, so a restricted
read never overlaps genopt's own ingest or read-write connection in this process.

A file that is not a DuckDB database, or whose blocks fail their checksums, raises
:class:`WarehouseCorruptError` naming the file.

Example:
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.duckdb"
    >>> with connect(path, read_only=False) as con:
    ...     _ = con.execute("CREATE TABLE t AS SELECT 1 AS a")
    >>> with connect(path, restricted=True) as con:
    ...     con.execute("SELECT a FROM t").fetchall()
    [(1,)]
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from prefect_genopt.errors import BusyError, NotFoundError, UnavailableError
from prefect_genopt.settings import get_settings

__all__ = [
    "connect",
    "open_connection",
    "WarehouseBusyError",
    "WarehouseMissingError",
    "WarehouseCorruptError",
    "RESTRICTED_CONFIG",
    "corrupt_error",
    "run_exists",
]

#: DuckDB settings of a restricted read, passed at connect time: no file system access
#: besides the database itself (no COPY TO, EXPORT, read_csv, glob, ATTACH, extensions),
#: and the configuration locked (no SET, RESET or PRAGMA that changes a setting).
RESTRICTED_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "enable_external_access": False,
    "lock_configuration": True,
}

# One DuckDB file must not be opened twice with different modes in one process;
# this lock serialises genopt's own short-lived connections within a process.
process_lock = threading.RLock()


class WarehouseBusyError(BusyError, TimeoutError):
    """The warehouse stayed locked by another process for longer than the timeout."""


class WarehouseMissingError(NotFoundError, FileNotFoundError):
    """A read-only open of a warehouse file that does not exist yet."""


class WarehouseCorruptError(UnavailableError, duckdb.IOException):
    """The warehouse file is not a DuckDB database, is cut short, or fails its checksums.

    Still a ``duckdb.IOException`` (a ``duckdb.Error``), as DuckDB raised it before."""


#: Phrases of DuckDB's errors about a damaged or foreign file (not a lock, not SQL).
_CORRUPT_PHRASES = (
    "not a valid duckdb database file",
    "corrupt database file",
    "could not read enough bytes from file",
    "does not match stored checksum",
)


def corrupt_error(path: Path, exc: BaseException) -> WarehouseCorruptError | None:
    """A :class:`WarehouseCorruptError` for ``exc`` if it says the file is damaged, else None.

    Example:
        >>> corrupt_error(Path("w.duckdb"), OSError("Corrupt database file: checksum")) is None
        False
        >>> corrupt_error(Path("w.duckdb"), OSError("Table t does not exist")) is None
        True
    """
    msg = str(exc)
    if not any(p in msg.lower() for p in _CORRUPT_PHRASES):
        return None
    return WarehouseCorruptError(
        f"warehouse {path} is damaged or not a DuckDB file ({msg.strip()}); move it aside "
        "(and restore a backup if there is one): data not yet ingested is still in the "
        "spool, and the next `genopt ingest` starts a new file with it"
    )


def _is_lock_error(exc: Exception) -> bool:
    msg = str(exc).lower()
    return "lock" in msg and ("could not set" in msg or "conflicting" in msg)


def open_connection(
    path: Path, read_only: bool = True, timeout: float | None = None, *, restricted: bool = False
) -> duckdb.DuckDBPyConnection:
    """Open ``path``, retrying while another process holds its lock.

    Args:
        path: The DuckDB file.
        read_only: Open read-only (the file must exist).
        timeout: Seconds to wait for another process's lock (default ``GENOPT_LOCK_TIMEOUT``).
        restricted: Read-only with :data:`RESTRICTED_CONFIG` (no files, no settings).

    Raises:
        WarehouseMissingError: A read-only open of a file that does not exist.
        WarehouseBusyError: Another process kept the file locked past ``timeout``.
        WarehouseCorruptError: The file is damaged or not a DuckDB database.
    """
    if restricted:
        read_only = True
    if timeout is None:
        timeout = get_settings().lock_timeout
    if read_only and not path.exists():
        raise WarehouseMissingError(
            f"no warehouse at {path} yet: run a pipeline, then `genopt ingest` (or set "
            "GENOPT_WAREHOUSE / --warehouse to the right file)"
        )
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            if restricted:
                return duckdb.connect(str(path), read_only=True, config=dict(RESTRICTED_CONFIG))
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:
            lock = isinstance(exc, duckdb.IOException | duckdb.ConnectionException)
            if not (lock and _is_lock_error(exc)):
                damaged = corrupt_error(path, exc)
                if damaged is not None:
                    raise damaged from exc
                raise
            if time.monotonic() >= deadline:
                raise WarehouseBusyError(
                    f"warehouse {path} stayed locked for {timeout:.0f}s "
                    f"(GENOPT_LOCK_TIMEOUT): {exc}"
                ) from exc
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.25)


@contextmanager
def connect(
    path: Path | None = None,
    read_only: bool = True,
    timeout: float | None = None,
    *,
    restricted: bool = False,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection, closed (and the file lock released) on exit.

    ``restricted=True`` opens a restricted read (see :func:`open_connection`)."""
    path = Path(path) if path is not None else get_settings().warehouse_path
    with process_lock:
        con = open_connection(path, read_only=read_only, timeout=timeout, restricted=restricted)
        try:
            yield con
        finally:
            con.close()


def run_exists(run_id: str, path: Path | None = None) -> bool:
    """Whether the warehouse already holds the run (False if it cannot be read now)."""
    try:
        with connect(path, read_only=True, timeout=2.0) as con:
            row = con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()
            return bool(row and row[0])
    except (WarehouseBusyError, WarehouseMissingError, duckdb.Error):
        return False

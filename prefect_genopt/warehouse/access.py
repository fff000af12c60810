"""Opening the warehouse file: briefly, and waiting instead of failing on a lock.

DuckDB lets one process hold a file for writing, and while it does, other
processes cannot even read it ("Could not set lock on file"). Every opener here
retries with a capped, jittered backoff until ``GENOPT_LOCK_TIMEOUT`` and then
raises :class:`WarehouseBusyError`, which names the holder.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from prefect_genopt.errors import BusyError, NotFoundError
from prefect_genopt.settings import get_settings

__all__ = [
    "connect",
    "open_connection",
    "WarehouseBusyError",
    "WarehouseMissingError",
    "run_exists",
]

# One DuckDB file must not be opened twice with different modes in one process;
# this lock serialises genopt's own short-lived connections within a process.
process_lock = threading.RLock()


class WarehouseBusyError(BusyError, TimeoutError):
    """The warehouse stayed locked by another process for longer than the timeout."""


class WarehouseMissingError(NotFoundError, FileNotFoundError):
    """A read-only open of a warehouse file that does not exist yet."""


def _is_lock_error(exc: Exception) -> bool:
    msg = str(exc).lower()
    return "lock" in msg and ("could not set" in msg or "conflicting" in msg)


def open_connection(
    path: Path, read_only: bool = True, timeout: float | None = None
) -> duckdb.DuckDBPyConnection:
    """Open ``path``, retrying while another process holds its lock."""
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
            return duckdb.connect(str(path), read_only=read_only)
        except (duckdb.IOException, duckdb.ConnectionException) as exc:
            if not _is_lock_error(exc):
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
    path: Path | None = None, read_only: bool = True, timeout: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection, closed (and the file lock released) on exit."""
    path = Path(path) if path is not None else get_settings().warehouse_path
    with process_lock:
        con = open_connection(path, read_only=read_only, timeout=timeout)
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

"""The warehouse's health at a glance: spool backlog, last ingest, row counts, drops.

What ``genopt status`` prints, as data; and :func:`check_warehouse`, which reads every
block of every table so that a damaged file is found (DuckDB checks a block's checksum
when it reads it; counts alone read few blocks).

Example:
    >>> import tempfile, pathlib
    >>> wh = Warehouse(pathlib.Path(tempfile.mkdtemp()) / "w.duckdb", ingest=False)
    >>> s = warehouse_status(wh)
    >>> s.exists, s.backlog_files, s.backlog_bytes, s.last_ingest
    (False, 0, 0, None)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from prefect_genopt import spool
from prefect_genopt.warehouse.access import WarehouseMissingError, corrupt_error
from prefect_genopt.warehouse.schema import SchemaTooNewError
from prefect_genopt.warehouse.warehouse import Warehouse

__all__ = [
    "WarehouseStatus",
    "warehouse_status",
    "spool_backlog",
    "staging_leftovers",
    "feedback_pending",
    "check_warehouse",
]


@dataclass
class WarehouseStatus:
    """The state of one warehouse and its spool."""

    warehouse: Path
    spool_dir: Path
    #: whether the warehouse file exists (before the first ingest it does not)
    exists: bool
    #: spool files with bytes not ingested yet, and those bytes
    backlog_files: int
    backlog_bytes: int
    #: the newest ``ingest_log`` row (finished_at, records, seconds...), or None
    last_ingest: dict[str, Any] | None = None
    #: runs, spans, feedback, pending_feedback, dropped_spans, rejected_lines, and (from
    #: schema version 8) pending_feedback_expired (deleted after
    #: GENOPT_PENDING_FEEDBACK_TTL_DAYS) and receiver_ignored_fields (feedback field values
    #: a request body sent that the receiver ignored: arm, param set, pipeline, verified, id)
    counts: dict[str, int] = field(default_factory=dict)
    #: (status, runs) by count, most first
    runs_by_status: list[tuple[str, int]] = field(default_factory=list)
    #: genopt's own failures counted in runs (``runs.genopt_errors``), by cause, and how
    #: many runs had any (the flows went on: prefect_genopt.incidents)
    genopt_errors: dict[str, int] = field(default_factory=dict)
    runs_with_genopt_errors: int = 0
    #: staging copies left in the spool by older versions or killed ingests, and their
    #: bytes (the next ingest removes them)
    staging_files: int = 0
    staging_bytes: int = 0


def spool_backlog(spool_dir: Path, offsets: dict[str, int]) -> tuple[int, int]:
    """Spool files with bytes past the ingested ``offsets`` (by file stem), and those bytes."""
    files = nbytes = 0
    for f in spool.list_files(spool_dir):
        try:
            left = f.path.stat().st_size - offsets.get(f.stem, 0)
        except FileNotFoundError:
            continue
        if left > 0:
            files += 1
            nbytes += left
    return files, nbytes


def staging_leftovers(spool_dir: Path) -> tuple[int, int]:
    """Staging copies left in the spool (older versions, killed ingests), and their bytes."""
    files = nbytes = 0
    for path in spool.staging_files(spool_dir):
        try:
            nbytes += path.stat().st_size
        except FileNotFoundError:
            continue
        files += 1
    return files, nbytes


def _genopt_errors(wh: Warehouse) -> tuple[dict[str, int], int]:
    """Failures counted in runs by cause, and the runs with any (none before migration 9)."""
    has_column = wh.execute(
        "SELECT count(*) FROM information_schema.columns "
        "WHERE table_name = 'runs' AND column_name = 'genopt_errors'"
    )[1][0][0]
    if not has_column:
        return {}, 0
    by_cause = wh.execute(
        "SELECT key, sum(TRY_CAST(value AS BIGINT)) FROM runs, json_each(genopt_errors) "
        "WHERE genopt_errors IS NOT NULL GROUP BY key ORDER BY 2 DESC, 1"
    )[1]
    runs = wh.execute("SELECT count(*) FROM runs WHERE genopt_errors IS NOT NULL")[1][0][0]
    return {str(k): int(v or 0) for k, v in by_cause}, int(runs)


def _has(wh: Warehouse, table: str, column: str | None = None) -> bool:
    """Whether the table (and column) exists: older schema versions lack newer ones."""
    if column is None:
        sql, params = "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    else:
        sql = (
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = ? AND column_name = ?"
        )
        params = [table, column]
    return bool(wh.execute(sql, params)[1][0][0])


def _receiver_counts(wh: Warehouse) -> dict[str, int]:
    """Expired pending feedback and ignored feedback fields (schema version 8 and later)."""
    out: dict[str, int] = {}
    if _has(wh, "ingest_log", "pending_expired"):
        out["pending_feedback_expired"] = int(
            wh.execute("SELECT coalesce(sum(pending_expired), 0) FROM ingest_log")[1][0][0]
        )
    if _has(wh, "receiver_ignored_fields"):
        out["receiver_ignored_fields"] = int(
            wh.execute("SELECT coalesce(sum(ignored), 0) FROM receiver_ignored_fields")[1][0][0]
        )
    return out


def _schema_version(wh: Warehouse) -> int:
    """The warehouse's schema version; a newer one than this genopt's is an error.

    Raises:
        SchemaTooNewError: A newer prefect-genopt wrote the file.
    """
    if not _has(wh, "schema_version"):
        return 0
    version = int(wh.execute("SELECT coalesce(max(version), 0) FROM schema_version")[1][0][0])
    SchemaTooNewError.check(version, f"warehouse {wh.path}")
    return version


def check_warehouse(wh: Warehouse) -> int:
    """Read every block of every table of ``wh`` (each column of each row); returns the rows
    read. Takes about as long as reading the file once, holding a read-only connection.

    Raises:
        WarehouseCorruptError: A block fails its checksum, or the file is not DuckDB's.
        WarehouseMissingError: There is no warehouse file.

    Example:
        >>> import tempfile, pathlib
        >>> wh = Warehouse(pathlib.Path(tempfile.mkdtemp()) / "w.duckdb")
        >>> check_warehouse(wh) >= 0
        True
    """
    rows = 0
    try:
        with wh.reading():
            tables = wh.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' AND table_schema = 'main' ORDER BY 1"
            )[1]
            for (table,) in tables:
                name = str(table).replace('"', '""')
                _, found = wh.execute(f'SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM "{name}"')
                rows += int(found[0][0])
    except duckdb.Error as exc:
        damaged = corrupt_error(wh.path, exc)
        if damaged is not None:
            raise damaged from exc
        raise
    return rows


def warehouse_status(wh: Warehouse) -> WarehouseStatus:
    """Read the status of ``wh`` and its spool (read-only; ingests only if ``wh`` does).

    Raises:
        SchemaTooNewError: A newer prefect-genopt wrote the warehouse.
        WarehouseCorruptError: The file is damaged or not a DuckDB database.
    """
    staging = staging_leftovers(wh.spool_dir)
    try:
        offsets = dict(wh.execute("SELECT stem, byte_offset FROM ingest_files")[1])
    except WarehouseMissingError:
        files, nbytes = spool_backlog(wh.spool_dir, {})
        return WarehouseStatus(
            wh.path,
            wh.spool_dir,
            False,
            files,
            nbytes,
            staging_files=staging[0],
            staging_bytes=staging[1],
        )
    files, nbytes = spool_backlog(wh.spool_dir, offsets)
    try:
        return _read_status(wh, files, nbytes, staging)
    except duckdb.Error as exc:
        damaged = corrupt_error(wh.path, exc)
        if damaged is not None:
            raise damaged from exc
        raise


def _read_status(
    wh: Warehouse, files: int, nbytes: int, staging: tuple[int, int]
) -> WarehouseStatus:
    with wh.reading():
        _schema_version(wh)
        last = wh.sql("SELECT * FROM ingest_log ORDER BY finished_at DESC LIMIT 1")
        counts = wh.sql(
            """SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM spans) AS spans,
                      (SELECT count(*) FROM feedback) AS feedback,
                      (SELECT count(*) FROM pending_feedback) AS pending_feedback,
                      (SELECT coalesce(sum(dropped), 0) FROM span_drops) AS dropped_spans,
                      (SELECT count(*) FROM spool_rejects) AS rejected_lines"""
        )[0]
        counts.update(_receiver_counts(wh))
        by_status = wh.execute("SELECT status, count(*) FROM runs GROUP BY 1 ORDER BY 2 DESC")[1]
        errors, error_runs = _genopt_errors(wh)
    return WarehouseStatus(
        wh.path,
        wh.spool_dir,
        True,
        files,
        nbytes,
        last[0] if last else None,
        {k: int(v) for k, v in counts.items()},
        [(str(s), int(n)) for s, n in by_status],
        genopt_errors=errors,
        runs_with_genopt_errors=error_runs,
        staging_files=staging[0],
        staging_bytes=staging[1],
    )


def feedback_pending(wh: Warehouse, feedback_id: str) -> bool:
    """Whether the feedback waits for its run (in ``pending_feedback``, not yet attached)."""
    return bool(wh.sql("SELECT 1 FROM pending_feedback WHERE feedback_id = ?", [feedback_id]))

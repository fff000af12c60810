"""``genopt.Warehouse``: SQL over runs, spans, feedback and param sets.

Example:
    >>> import tempfile, pathlib
    >>> wh = Warehouse(pathlib.Path(tempfile.mkdtemp()) / "w.duckdb")
    >>> wh.sql("SELECT count(*) AS n FROM runs")
    [{'n': 0}]
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb

from prefect_genopt import spool
from prefect_genopt.settings import get_settings
from prefect_genopt.warehouse.access import WarehouseBusyError, connect, open_connection
from prefect_genopt.warehouse.ingest import Ingester, IngestResult
from prefect_genopt.warehouse.schema import migrate

__all__ = ["Warehouse", "as_warehouse"]

logger = logging.getLogger("prefect_genopt.warehouse")
Params = Sequence[Any] | dict[str, Any] | None


class Warehouse:
    """The trace warehouse, a DuckDB file.

    Read-only by default: each query opens the file briefly and waits (up to
    ``GENOPT_LOCK_TIMEOUT``) while the ingester holds it, so it never blocks
    pipelines or the receiver for long. Pending spool data is ingested before
    the first query, so what a pipeline just did is visible.

    Args:
        path: The DuckDB file (default: ``GENOPT_WAREHOUSE``, else
            ``$PREFECT_HOME/genopt/warehouse.duckdb``).
        read_only: ``False`` keeps one writable connection open until
            :meth:`close`, for maintenance SQL; pipelines never need it.
        ingest: Ingest the spool before the first query (default True).
        spool_dir: The spool feeding it (default: ``GENOPT_SPOOL`` for the configured
            warehouse, else the path with ``.spool`` appended).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        read_only: bool = True,
        *,
        ingest: bool = True,
        spool_dir: str | Path | None = None,
    ) -> None:
        settings = get_settings()
        self.path = Path(path).expanduser().resolve() if path else settings.warehouse_path
        self.spool_dir = (
            Path(spool_dir).expanduser().resolve()
            if spool_dir
            else settings.spool_dir_for(self.path)
        )
        self.read_only = read_only
        self._pending_ingest = ingest
        self._con: duckdb.DuckDBPyConnection | None = None
        self._read_con: duckdb.DuckDBPyConnection | None = None

    def ingest(self) -> IngestResult:
        """Load pending spool data now (see :class:`~prefect_genopt.warehouse.ingest.Ingester`)."""
        if self._con is not None:
            raise RuntimeError("close() the writable connection before ingesting")
        self._pending_ingest = False  # the first query need not ingest again
        return Ingester(self.path, self.spool_dir).ingest()

    def ingest_if_free(self) -> IngestResult | None:
        """:meth:`ingest` unless the warehouse is busy (then the spool keeps the data for
        the next reader or ``genopt ingest``, and None is returned)."""
        try:
            return self.ingest()
        except WarehouseBusyError:
            return None

    @contextlib.contextmanager
    def reading(self) -> Iterator[Warehouse]:
        """Keep one read-only connection open for the queries inside the block.

        Several small queries then open the file once; the ingester waits for the
        block to end, so keep it short.

        Example:
            >>> import tempfile, pathlib
            >>> wh = Warehouse(pathlib.Path(tempfile.mkdtemp()) / "w.duckdb")
            >>> with wh.reading():
            ...     wh.sql("SELECT 1 AS a") + wh.sql("SELECT 2 AS a")
            [{'a': 1}, {'a': 2}]
        """
        self._before_query()
        if not self.read_only or self._read_con is not None:
            yield self
            return
        with connect(self.path, read_only=True) as con:
            self._read_con = con
            try:
                yield self
            finally:
                self._read_con = None

    def _before_query(self) -> None:
        if not self._pending_ingest:
            return
        self._pending_ingest = False
        spool.flush_pending()  # spans this process has queued go to the spool first
        if self.path.exists() and not spool.list_files(self.spool_dir):
            return
        try:
            self.ingest()
        except WarehouseBusyError as exc:
            logger.warning("skipped ingest, warehouse busy: %s", exc)

    def execute(self, query: str, params: Params = None) -> tuple[list[str], list[tuple]]:
        """Run SQL and return ``(column names, rows as tuples)``."""
        self._before_query()
        if self._read_con is not None:
            return _fetch(self._read_con.execute(query, params))
        if self.read_only:
            with connect(self.path, read_only=True) as con:
                return _fetch(con.execute(query, params))
        if self._con is None:
            self._con = open_connection(self.path, read_only=False)
            migrate(self._con)
        return _fetch(self._con.execute(query, params))

    def sql(self, query: str, params: Params = None) -> list[dict[str, Any]]:
        """Run SQL and return the rows as dicts.

        Args:
            query: Any DuckDB SQL, with ``?`` or ``$name`` placeholders.
            params: Values for the placeholders.
        """
        columns, rows = self.execute(query, params)
        return [dict(zip(columns, r, strict=True)) for r in rows]

    def df(self, query: str, params: Params = None) -> Any:
        """Run SQL and return a pandas DataFrame (needs pandas)."""
        import pandas as pd

        columns, rows = self.execute(query, params)
        return pd.DataFrame.from_records(rows, columns=columns)

    def close(self) -> None:
        """Close the writable connection, if any (read-only use holds none)."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"Warehouse({str(self.path)!r}, {mode})"


def as_warehouse(warehouse: Warehouse | str | Path | None) -> Warehouse:
    """``warehouse`` itself, or a :class:`Warehouse` opened on that path (None: the default)."""
    return warehouse if isinstance(warehouse, Warehouse) else Warehouse(warehouse)


def _fetch(cur: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple]]:
    if cur.description is None:
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()

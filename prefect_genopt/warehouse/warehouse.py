"""``genopt.Warehouse``: SQL over runs, spans, feedback and param sets.

Example:
    >>> import tempfile, pathlib
    >>> wh = Warehouse(pathlib.Path(tempfile.mkdtemp()) / "w.duckdb")
    >>> wh.sql("SELECT count(*) AS n FROM runs")
    [{'n': 0}]
    >>> wh.sql("SELECT json_object('a', [1, 2]) AS j")  # a JSON column: its text by default
    [{'j': '{"a":[1,2]}'}]
    >>> wh.sql("SELECT json_object('a', [1, 2]) AS j", json=True)  # or parsed
    [{'j': {'a': [1, 2]}}]
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import orjson

from prefect_genopt import spool
from prefect_genopt.errors import UnavailableError
from prefect_genopt.records import HOST
from prefect_genopt.settings import get_settings
from prefect_genopt.warehouse.access import WarehouseBusyError, connect, open_connection
from prefect_genopt.warehouse.ingest import Ingester, IngestResult
from prefect_genopt.warehouse.schema import migrate, utcnow

__all__ = ["Warehouse", "as_warehouse", "parse_json_columns", "PandasMissingError"]

#: What :meth:`Warehouse.df` says when pandas is not installed.
PANDAS_MISSING = (
    "Warehouse.df() needs pandas, which is not installed: pip install pandas "
    "(Warehouse.sql() returns the rows as dicts without it)"
)


class PandasMissingError(UnavailableError, ImportError):
    """:meth:`Warehouse.df` was called where pandas is not installed (the message says how
    to install it)."""


logger = logging.getLogger("prefect_genopt.warehouse")
Params = Sequence[Any] | dict[str, Any] | None


class Warehouse:
    """The trace warehouse, a DuckDB file.

    Read-only by default: each query opens the file briefly and waits (up to
    ``GENOPT_LOCK_TIMEOUT``) while the ingester holds it, so it never blocks
    pipelines or the receiver for long.

    Before a query it loads spool data (unless ``ingest=False``), but not on every
    query, so readers do not queue behind each other for the write lock under load:

    * what **this process** wrote to the spool is always loaded first (waiting for the
      lock if need be), so reads follow this process's own writes: a pipeline it ran,
      feedback it gave, the replay gate's replayed runs, the optimizer's rows;
    * **other processes'** backlog is loaded only when the warehouse's last ingest is
      older than ``GENOPT_INGEST_BACKLOG_AGE`` seconds (default 5, counted from the end of
      that ingest: what it did not load arrived after it started) and the write lock is
      free right now (one try, no wait). ``genopt serve`` ingests on its own schedule
      (``GENOPT_INGEST_INTERVAL``), and ``genopt ingest`` or :meth:`ingest` load
      everything now.

    Args:
        path: The DuckDB file (default: ``GENOPT_WAREHOUSE``, else
            ``$PREFECT_HOME/genopt/warehouse.duckdb``).
        read_only: ``False`` keeps one writable connection open until
            :meth:`close`, for maintenance SQL; pipelines never need it.
        ingest: Load spool data before queries, as above (default True); False never
            does (``genopt sql --no-ingest``).
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
        self.auto_ingest = ingest
        self._pending_ingest = ingest  # the writable connection ingests once, before it opens
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

    def _ingest_now_or_never(self) -> IngestResult | None:
        """One try at the write lock, no wait: ingest, or None when it is taken."""
        if self._con is not None:
            return None
        ingester = Ingester(self.path, self.spool_dir)
        ingester.timeout = 0.0
        try:
            return ingester.ingest()
        except WarehouseBusyError:
            return None

    def _plan(self, con: duckdb.DuckDBPyConnection, files: list[spool.SpoolFile]) -> str | None:
        """What to load before a query (see the class): ``own`` (this process's writes,
        waiting for the lock), ``backlog`` (others', if the lock is free) or None."""
        stems = [f.stem for f in files]
        offsets = dict(
            con.execute(
                "SELECT stem, byte_offset FROM ingest_files WHERE list_contains(?, stem)",
                [stems],
            ).fetchall()
        )
        pid = os.getpid()
        others = False
        for f in files:
            if not _unloaded(f, offsets.get(f.stem, 0)):
                continue
            if f.host == HOST and f.pid == pid:
                return "own"
            others = True
        if not others:
            return None
        age = get_settings().ingest_backlog_age
        # when the last ingest ended (a row holds its start and its duration): everything
        # still pending arrived after it started
        (last,) = con.execute(
            "SELECT max(finished_at + to_microseconds(CAST(coalesce(seconds, 0) * 1e6 AS BIGINT)))"
            " FROM ingest_log"
        ).fetchone()
        if last is not None and (utcnow() - last).total_seconds() < age:
            return None
        return "backlog"

    @contextlib.contextmanager
    def _reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection, after loading what :meth:`_plan` says to."""
        if self.auto_ingest:
            spool.flush_pending()  # spans this process has queued go to the spool first
            if not self.path.exists():
                self._ingest_or_warn()  # creates the warehouse
        plan = None
        with connect(self.path, read_only=True) as con:
            files = spool.list_files(self.spool_dir) if self.auto_ingest else []
            if files:
                plan = self._plan(con, files)
            if plan is None:
                yield con
                return
        if plan == "own":
            self._ingest_or_warn()
        else:
            self._ingest_now_or_never()
        with connect(self.path, read_only=True) as con:
            yield con

    def _ingest_or_warn(self) -> None:
        try:
            self.ingest()
        except WarehouseBusyError as exc:
            logger.warning("skipped ingest, warehouse busy: %s", exc)

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
        if not self.read_only or self._read_con is not None:
            yield self
            return
        with self._reader() as con:
            self._read_con = con
            try:
                yield self
            finally:
                self._read_con = None

    def catch_up(self) -> None:
        """Load now what a query would load first (see the class: this process's own
        writes; others' backlog when old enough and the lock is free), leaving no
        connection open: for code that then queries on a connection of its own."""
        if not self.read_only:
            self._before_query()
            return
        if self.auto_ingest:
            with self._reader():
                pass

    def _before_query(self) -> None:
        """Before a query on a connection opened elsewhere: :meth:`catch_up` for a reader;
        for the writable connection, its one ingest before it opens (it holds the file)."""
        if self.read_only:
            if self.auto_ingest:
                with self._reader():
                    pass
            return
        if not self._pending_ingest:
            return
        self._pending_ingest = False
        spool.flush_pending()  # spans this process has queued go to the spool first
        if self.path.exists() and not spool.list_files(self.spool_dir):
            return
        self._ingest_or_warn()

    def execute(
        self, query: str, params: Params = None, *, json: bool = False
    ) -> tuple[list[str], list[tuple]]:
        """Run SQL and return ``(column names, rows as tuples)``.

        Args:
            query: Any DuckDB SQL, with ``?`` or ``$name`` placeholders.
            params: Values for the placeholders.
            json: Return JSON-typed columns parsed (dicts, lists, numbers...) instead of
                their JSON text (the default).
        """
        if self._read_con is not None:
            return _fetch(self._read_con.execute(query, params), json)
        if self.read_only:
            with self._reader() as con:
                return _fetch(con.execute(query, params), json)
        self._before_query()
        if self._con is None:
            self._con = open_connection(self.path, read_only=False)
            migrate(self._con)
        return _fetch(self._con.execute(query, params), json)

    def sql(self, query: str, params: Params = None, *, json: bool = False) -> list[dict[str, Any]]:
        """Run SQL and return the rows as dicts.

        Args:
            query: Any DuckDB SQL, with ``?`` or ``$name`` placeholders.
            params: Values for the placeholders.
            json: Return JSON-typed columns (``spans.attributes``, ``param_sets.values``,
                ``proposals.diff``...) as Python objects. By default they are their JSON
                text, as callers that parse them expect.
        """
        columns, rows = self.execute(query, params, json=json)
        return [dict(zip(columns, r, strict=True)) for r in rows]

    def df(self, query: str, params: Params = None, *, json: bool = False) -> Any:
        """Run SQL and return a pandas DataFrame.

        pandas is not a dependency of prefect-genopt: install it (``pip install pandas``)
        to use this; :meth:`sql` needs nothing more.

        Raises:
            PandasMissingError: pandas is not installed (an ``ImportError`` whose message
                says how to install it).
        """
        try:
            import pandas as pd
        except ImportError:
            raise PandasMissingError(PANDAS_MISSING) from None

        columns, rows = self.execute(query, params, json=json)
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


def _unloaded(f: spool.SpoolFile, offset: int) -> bool:
    """Whether spool file ``f`` holds bytes the warehouse has not loaded (``offset``: how
    far it got). A sealed file is deleted once loaded: one still here is not loaded yet."""
    if f.state == "sealed":
        return True
    try:
        return f.path.stat().st_size > offset
    except FileNotFoundError:  # sealed (renamed) or loaded and removed meanwhile
        return False


def parse_json_columns(
    description: Sequence[Sequence[Any]], rows: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """``rows`` with their JSON-typed columns (``JSON``, and ``JSON[]`` item by item) parsed;
    ``description`` is the cursor's (each entry's second item is the column's DuckDB type).

    Example:
        >>> parse_json_columns([("j", "JSON"), ("s", "VARCHAR")], [('{"a": 1}', "x"), (None, None)])
        [({'a': 1}, 'x'), (None, None)]
    """
    kinds = [str(d[1]) for d in description]
    if not any(k in ("JSON", "JSON[]") for k in kinds):
        return rows

    def parse(kind: str, value: Any) -> Any:
        if value is None:
            return None
        if kind == "JSON":
            return orjson.loads(value)
        if kind == "JSON[]":
            return [None if v is None else orjson.loads(v) for v in value]
        return value

    return [tuple(parse(k, v) for k, v in zip(kinds, row, strict=True)) for row in rows]


def _fetch(
    cur: duckdb.DuckDBPyConnection | None, json: bool = False
) -> tuple[list[str], list[tuple]]:
    if cur is None or cur.description is None:  # None: a query of comments or semicolons only
        return [], []
    rows = cur.fetchall()
    if json:
        rows = parse_json_columns(cur.description, rows)
    return [d[0] for d in cur.description], rows

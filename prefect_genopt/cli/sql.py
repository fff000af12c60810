"""``genopt sql``: run SQL on the warehouse and print the result.

Without ``--write`` the query runs on a *restricted* read-only connection
(:func:`prefect_genopt.warehouse.access.connect` with ``restricted=True``): it cannot
read or write other files (``COPY ... TO``, ``EXPORT DATABASE``, ``read_csv``,
``read_text``, ``glob``, ``ATTACH``), load extensions, or change settings (``SET``,
``PRAGMA``). Pending spool data is ingested first, on the warehouse's own connection,
which is closed before the restricted one opens (DuckDB refuses two configurations
of one file in one process). ``--write`` is the explicit way out, for maintenance.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from prefect_genopt.cli import CLIError
from prefect_genopt.cli._checks import require_warehouse
from prefect_genopt.cli._output import print_rows

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context

#: DuckDB's words when a restricted read refuses a statement -> what it was refused
_REFUSALS = (
    ("file system operations are disabled", "read or write files"),
    ("loading external extensions is disabled", "load extensions"),
    ("configuration has been locked", "change settings"),
    ("attached in read-only mode", "change the warehouse"),
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt sql``."""
    s = sub.add_parser(
        "sql",
        help="run SQL on the warehouse and print the result",
        description="Run SQL on the warehouse. Without --write it only reads the warehouse: "
        "no writes, no other files (COPY TO, EXPORT, read_csv, glob, ATTACH), no settings "
        "(SET, PRAGMA). Pending spool data is ingested first.",
        epilog='example: genopt sql "select * from run_summary order by start_time desc limit 5"',
    )
    s.add_argument("query", help="the SQL to run ('-' reads it from stdin)")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print rows as a JSON list")
    fmt.add_argument("--csv", action="store_true", help="print rows as CSV")
    s.add_argument(
        "--write",
        action="store_true",
        help="open read-write, with file access and settings (maintenance only)",
    )
    s.add_argument("--no-ingest", action="store_true", help="do not ingest the spool first")
    s.add_argument("--max-width", type=int, default=60, help="widest table cell (default 60)")
    s.set_defaults(func=run)


#: What ``genopt sql`` says of a query with no statement in it.
EMPTY_QUERY = (
    'no SQL statement given; for example: genopt sql "select * from run_summary limit 5" '
    "(tables: genopt --help)"
)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run the query; print a table, JSON or CSV (``OK`` for a statement without rows).

    JSON-typed columns are nested objects in ``--json`` and their JSON text otherwise.
    """
    query = args.query if args.query != "-" else sys.stdin.read()
    if not query.strip():
        raise CLIError(EMPTY_QUERY)
    if args.write:
        wh = ctx.warehouse(read_only=False, ingest=not args.no_ingest)
        try:
            columns, rows = wh.execute(query, json=args.json)
        finally:
            wh.close()
    else:
        require_warehouse(ctx)
        columns, rows = read_only_query(ctx, query, ingest=not args.no_ingest, json=args.json)
    if not columns and not (args.json or args.csv):
        print("OK")
        return 0
    print_rows(
        columns, rows, "json" if args.json else "csv" if args.csv else "table", args.max_width
    )
    return 0


def read_only_query(
    ctx: Context, query: str, *, ingest: bool = True, json: bool = False
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ``query`` on a restricted read-only connection; ``(columns, rows)``, with
    JSON-typed columns parsed when ``json`` is true.

    Raises:
        CLIError: The statement writes, touches another file or changes a setting
            (the message says which, and that ``--write`` allows it), or there is no
            statement (only blanks, comments or semicolons).
        SchemaTooNewError: A newer prefect-genopt wrote the warehouse.
    """
    import duckdb

    from prefect_genopt.warehouse.access import connect
    from prefect_genopt.warehouse.schema import SchemaTooNewError, current_version
    from prefect_genopt.warehouse.warehouse import parse_json_columns

    wh = ctx.warehouse(ingest=ingest)
    # The reader's catch-up ingest, on the warehouse's own connections, all closed when it
    # returns: never open at the same time as the restricted one below.
    wh.catch_up()
    with connect(wh.path, restricted=True) as con:
        # a newer genopt's tables may mean what this one does not know
        SchemaTooNewError.check(current_version(con), f"warehouse {wh.path}")
        try:
            cur = con.execute(query)
            if cur is None:  # DuckDB's answer to a query of comments or semicolons only
                raise CLIError(EMPTY_QUERY)
            if cur.description is None:
                return [], []
            rows = cur.fetchall()
            if json:
                rows = parse_json_columns(cur.description, rows)
            return [d[0] for d in cur.description], rows
        except duckdb.Error as exc:
            msg = str(exc)
            for phrase, what in _REFUSALS:
                if phrase in msg.lower():
                    first = msg.strip().splitlines()[0]
                    raise CLIError(
                        f"refused: without --write, genopt sql cannot {what} ({first}); "
                        "run it with --write if you mean to"
                    ) from None
            raise

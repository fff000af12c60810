"""``genopt sql``: run SQL on the warehouse and print the result."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from prefect_genopt.cli._output import print_rows

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt sql``."""
    s = sub.add_parser(
        "sql",
        help="run SQL on the warehouse and print the result",
        description="Run SQL on the warehouse (read-only unless --write). Pending spool data "
        "is ingested first.",
        epilog='example: genopt sql "select * from run_summary order by start_time desc limit 5"',
    )
    s.add_argument("query", help="the SQL to run ('-' reads it from stdin)")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print rows as a JSON list")
    fmt.add_argument("--csv", action="store_true", help="print rows as CSV")
    s.add_argument("--write", action="store_true", help="open read-write (maintenance only)")
    s.add_argument("--no-ingest", action="store_true", help="do not ingest the spool first")
    s.add_argument("--max-width", type=int, default=60, help="widest table cell (default 60)")
    s.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Run the query; print a table, JSON or CSV (``OK`` for a statement without rows)."""
    query = args.query if args.query != "-" else sys.stdin.read()
    wh = ctx.warehouse(read_only=not args.write, ingest=not args.no_ingest)
    try:
        columns, rows = wh.execute(query)
    finally:
        wh.close()
    if not columns and not (args.json or args.csv):
        print("OK")
        return 0
    print_rows(
        columns, rows, "json" if args.json else "csv" if args.csv else "table", args.max_width
    )
    return 0

"""``genopt ingest``: load the spool into the warehouse now."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt ingest``."""
    i = sub.add_parser(
        "ingest",
        help="load the spool into the warehouse now",
        description="Load everything waiting in the spool into the warehouse (atomic, "
        "idempotent; safe to run any time, from any process).",
    )
    i.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Ingest and print what was loaded (exit 2 on a damaged warehouse, or one written by a
    newer prefect-genopt)."""
    import duckdb

    from prefect_genopt.warehouse.access import corrupt_error

    try:
        print(ctx.warehouse(ingest=False).ingest())
    except duckdb.Error as exc:
        damaged = corrupt_error(ctx.warehouse_path, exc)
        if damaged is not None:
            raise damaged from exc
        raise
    return 0

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
    """Ingest and print what was loaded."""
    print(ctx.warehouse(ingest=False).ingest())
    return 0

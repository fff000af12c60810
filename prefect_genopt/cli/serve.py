"""``genopt serve``: the OTLP/HTTP receiver, in the foreground."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt serve``."""
    sv = sub.add_parser(
        "serve",
        help="run the OTLP/HTTP receiver",
        description="Receive OTLP/HTTP traces (POST /v1/traces, protobuf or JSON) and feedback "
        "(POST /v1/genopt/feedback) from workers on other machines, and ingest them "
        "periodically. Loopback only unless --host says otherwise.",
    )
    sv.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=None, help="port (default 4318)")
    sv.add_argument("--ingest-interval", type=float, default=None, help="seconds between ingests")
    sv.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Serve until SIGINT or SIGTERM."""
    from prefect_genopt.warehouse.receiver import serve

    serve(
        host=args.host,
        port=args.port,
        warehouse=ctx.warehouse_path,
        ingest_interval=args.ingest_interval,
        spool_dir=ctx.settings.spool_dir,
    )
    return 0

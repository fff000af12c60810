"""``genopt serve``: the OTLP/HTTP receiver, in the foreground."""

from __future__ import annotations

import argparse
from pathlib import Path
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
        "periodically. With a token (--token-file, or GENOPT_SERVE_TOKEN) every request must "
        "carry 'Authorization: Bearer <token>' (workers: GENOPT_OTLP_TOKEN); without one it "
        "binds loopback only, unless --insecure-no-auth. --tls-cert/--tls-key serve HTTPS.",
        epilog="example: genopt serve --host 0.0.0.0 --port 4319 --token-file /etc/genopt/token "
        "--tls-cert cert.pem --tls-key key.pem",
    )
    sv.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=None, help="port (default 4318)")
    sv.add_argument("--ingest-interval", type=float, default=None, help="seconds between ingests")
    sv.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help="file whose first line is the bearer token requests must carry "
        "(default GENOPT_SERVE_TOKEN, GENOPT_SERVE_TOKEN_FILE)",
    )
    sv.add_argument(
        "--tls-cert", type=Path, metavar="PATH", help="PEM certificate chain: serve HTTPS"
    )
    sv.add_argument("--tls-key", type=Path, metavar="PATH", help="PEM private key of --tls-cert")
    sv.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback --host without a token (only behind a network or proxy "
        "that authenticates)",
    )
    sv.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Serve until SIGINT or SIGTERM (exit 2, before binding, on a refused setup)."""
    from prefect_genopt.warehouse.receiver import serve

    serve(
        host=args.host,
        port=args.port,
        warehouse=ctx.warehouse_path,
        ingest_interval=args.ingest_interval,
        spool_dir=ctx.settings.spool_dir,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        insecure_no_auth=args.insecure_no_auth,
    )
    return 0

"""``genopt status``: spool backlog, last ingest, row counts, dropped spans."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt status``."""
    st = sub.add_parser(
        "status",
        help="spool backlog, last ingest, dropped spans",
        description="Show the spool backlog, the last ingest, row counts, pending feedback "
        "(and how much expired), dropped spans, rejected spool lines and feedback fields the "
        "receiver ignored; then read every table through, so that a damaged warehouse file "
        "exits 2 (--quick skips that read). A warehouse of a newer prefect-genopt exits 2.",
    )
    st.add_argument(
        "--quick",
        action="store_true",
        help="skip reading every table (a damaged block may then go unnoticed)",
    )
    st.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Print the warehouse's status (:func:`~prefect_genopt.warehouse.status.warehouse_status`)."""
    from prefect_genopt.warehouse.status import check_warehouse, warehouse_status

    print(f"warehouse: {ctx.warehouse_path}")
    print(f"spool:     {ctx.settings.spool_dir}")
    wh = ctx.warehouse(ingest=False)
    s = warehouse_status(wh)
    print(f"backlog:   {s.backlog_files} spool file(s), {s.backlog_bytes} bytes not ingested")
    if s.staging_files:
        print(
            f"staging:   {s.staging_files} leftover staging file(s), {s.staging_bytes} bytes "
            "(from an older version or a killed ingest; the next ingest removes them)"
        )
    if not s.exists:
        print("warehouse not created yet: run `genopt ingest`")
        return 0
    if s.last_ingest:
        r = s.last_ingest
        print(
            f"last ingest: {r['finished_at']:%Y-%m-%d %H:%M:%S} UTC, {r['records']} records "
            f"in {r['seconds']:.2f}s"
        )
    else:
        print("last ingest: never")
    print("  ".join(f"{k}: {v}" for k, v in s.counts.items()))
    if s.runs_by_status:
        print("runs by status: " + ", ".join(f"{st} {n}" for st, n in s.runs_by_status))
    if s.genopt_errors:
        print(
            f"genopt errors in {s.runs_with_genopt_errors} run(s) (the flows went on): "
            + ", ".join(f"{cause} {n}" for cause, n in s.genopt_errors.items())
        )
    if not getattr(args, "quick", False):
        print(f"checked: {check_warehouse(wh)} rows, every table read through")
    return 0

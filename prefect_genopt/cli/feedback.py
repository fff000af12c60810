"""``genopt feedback``: attach a KPI value and/or a comment to a run."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from prefect_genopt.cli._utilities import number

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt feedback``."""
    f = sub.add_parser(
        "feedback",
        help="attach a KPI value and/or a comment to a run",
        description="Attach a KPI value and/or text feedback to a pipeline run. RUN_ID is the "
        "Prefect flow-run id (as in runs.run_id). A run not yet in the warehouse is checked "
        "against the Prefect API and the feedback waits until the run arrives.",
        epilog="example: genopt feedback 8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10 csat 4 "
        '--comment "slow"',
    )
    f.add_argument("run_id", metavar="RUN_ID")
    f.add_argument("kpi", metavar="KPI")
    f.add_argument("value", metavar="VALUE", nargs="?", type=number, help="a finite number")
    f.add_argument("--comment", help="text feedback")
    f.add_argument("--item-key", help="the work item the feedback is about")
    f.add_argument("--source", default="cli", help="who gives it (default: cli)")
    f.add_argument("--idempotency-key", help="the same key for the same run is stored once")
    f.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Record the feedback, ingest it, and say whether it is attached or waits for its run."""
    from prefect_genopt.feedback import build_record, deliver
    from prefect_genopt.warehouse import WarehouseBusyError
    from prefect_genopt.warehouse.status import feedback_pending

    record = build_record(
        args.kpi,
        args.value,
        comment=args.comment,
        run_id=args.run_id,
        item_key=args.item_key,
        source=args.source,
        idempotency_key=args.idempotency_key,
        settings=ctx.settings,
    )
    deliver(record, ctx.settings)
    state = "recorded"
    try:
        wh = ctx.warehouse(ingest=False)
        wh.ingest()
        if feedback_pending(wh, record["feedback_id"]):
            state = "pending (the run is not in the warehouse yet; it is attached when it arrives)"
    except WarehouseBusyError:
        state = "spooled (warehouse busy; the next ingest loads it)"
    print(f"feedback {record['feedback_id']} for run {record['run_id']}: {state}")
    if not record["verified"]:
        print("warning: the run could not be checked against the Prefect API", file=sys.stderr)
    return 0

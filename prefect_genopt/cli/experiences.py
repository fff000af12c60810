"""``genopt experiences``: harvest verified experiences from recorded steps, or list them."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING

from prefect_genopt.cli._checks import require_pipeline
from prefect_genopt.cli._output import print_json
from prefect_genopt.cli._utilities import Arg, Verb, add_group, number

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context

PIPELINE = Arg("pipeline", help="the pipeline")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt experiences`` and its verbs."""
    add_group(
        sub,
        "experiences",
        help="harvest verified experiences from recorded steps, or list them",
        description="harvest: turn recorded steps (@genopt.task(record=True) or replay=True) of "
        "runs or items whose feedback on --kpi is good and whose check functions pass into "
        "experiences (replayed instead of recomputing, offered as few-shot demos). list: the "
        "pipeline's experiences with their status and how often each was replayed.",
        epilog="examples:\n  genopt experiences harvest triage --kpi correct\n"
        "  genopt experiences harvest triage --kpi csat --threshold 4 --expires-days 30\n"
        "  genopt experiences list triage",
        verbs=[
            Verb(
                "harvest",
                run_harvest,
                "store the good, checked runs or items of a pipeline as experiences",
                (
                    PIPELINE,
                    Arg("--kpi", help="the KPI whose feedback says an item was good"),
                    Arg(
                        "--threshold",
                        type=number,
                        help="worst good value (default 1 for a 0/1 KPI)",
                    ),
                    Arg(
                        "--direction",
                        choices=("higher", "lower"),
                        default="higher",
                        help="which way is better",
                    ),
                    Arg(
                        "--expires-days",
                        type=float,
                        help="stop replaying them after this many days",
                    ),
                ),
            ),
            Verb(
                "list",
                run_list,
                "a pipeline's experiences, their status and how often each was replayed",
                (
                    PIPELINE,
                    Arg("--limit", type=int, default=50, help="most rows (default 50)"),
                    Arg("--json", action="store_true", help="print JSON"),
                ),
            ),
        ],
    )


def run_harvest(args: argparse.Namespace, ctx: Context) -> int:
    """Harvest and print what was stored."""
    from prefect_genopt.cli import CLIError
    from prefect_genopt.replay.experiences import harvest

    require_pipeline(ctx, args.pipeline)
    if not args.kpi:
        raise CLIError("harvest needs --kpi (the KPI whose feedback says an item was good)")
    expires = dt.timedelta(days=args.expires_days) if args.expires_days else None
    from prefect_genopt.cli._progress import Progress

    with Progress() as progress:  # a bar with an ETA on a terminal, plain lines otherwise
        result = harvest(
            args.pipeline,
            args.kpi,
            threshold=args.threshold,
            direction=args.direction,
            expires_in=expires,
            warehouse=ctx.warehouse(),
            progress=lambda done, total: progress.update("checking runs", done, total),
        )
    print(result)
    return 0


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    """List the pipeline's experiences, one line each (or JSON)."""
    from prefect_genopt.replay.experiences import list_experiences

    require_pipeline(ctx, args.pipeline)
    rows = list_experiences(args.pipeline, limit=args.limit, warehouse=ctx.warehouse())
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print(f"no experiences for {args.pipeline!r} yet: `genopt experiences harvest`")
        return 0
    for r in rows:
        why = f"  ({r['reason']})" if r["reason"] else ""
        print(
            f"{r['experience_id']}  {r['status']:8}  item {r['item_key'] or '-'}  "
            f"{r['n_steps']} step(s), {r['size_bytes']} B, replayed {r['replays']}x{why}"
        )
    return 0

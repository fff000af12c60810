"""``genopt export``: export rated reflections as JSONL."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from prefect_genopt.cli._checks import require_pipeline
from prefect_genopt.cli._utilities import Arg, Verb, add_group

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt export`` and its verb."""
    add_group(
        sub,
        "export",
        help="export rated reflections as JSONL (for fine-tuning a retrospective model)",
        description="Write one JSON object per rated proposal: the evidence it was shown "
        "(KPI, runs, items), its reflection (the optimizer's reasoning) and suggestion, and its "
        "rating (the KPI delta against stable when its replay gate or canary ended).",
        epilog="examples:\n  genopt export reflections --out reflections.jsonl\n"
        "  genopt export reflections --pipeline triage | head -1",
        verbs=[
            Verb(
                "reflections",
                run_reflections,
                "rated reflections, one JSON object per line",
                (
                    Arg("--pipeline", help="only this pipeline's proposals"),
                    Arg("--out", help="write to this file (default: stdout)"),
                ),
            )
        ],
    )


def run_reflections(args: argparse.Namespace, ctx: Context) -> int:
    """Write the rated reflections to --out or stdout."""
    import orjson

    from prefect_genopt.proposals.ratings import reflections

    require_pipeline(ctx, args.pipeline)
    records = list(reflections(ctx.warehouse(), args.pipeline))
    lines = b"".join(orjson.dumps(r) + b"\n" for r in records)
    if args.out:
        Path(args.out).expanduser().write_bytes(lines)
        print(f"{len(records)} rated reflection(s) written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(lines.decode())
    return 0

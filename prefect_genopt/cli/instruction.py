"""``genopt instruction``: show or tune the optimizer's own instruction for a pipeline."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from prefect_genopt.cli._checks import require_pipeline
from prefect_genopt.cli._utilities import Arg, Verb, add_group

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context

PIPELINE = Arg("pipeline", help="the pipeline")

#: tune's outcomes that exit 0 (`rejected`: the model's answer was unusable, exit 1)
TUNE_OK = ("tuned", "not_due", "no_ratings")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt instruction`` and its verbs."""
    add_group(
        sub,
        "instruction",
        help="show or tune the optimizer's own instruction for a pipeline",
        description="show: the instruction OptoPrime follows for the pipeline. tune: rewrite it "
        "with one LLM call from the pipeline's rated proposals (best and worst reflections), "
        "when --every new ratings arrived since the last tuning (or now with --force). Exit "
        "status 1 when the model's answer was unusable (nothing is stored).",
        epilog="examples:\n  genopt instruction show triage\n"
        "  genopt instruction tune triage --every 5\n  genopt instruction tune triage --force",
        verbs=[
            Verb("show", run_show, "print the instruction in use", (PIPELINE,)),
            Verb(
                "tune",
                run_tune,
                "rewrite it from the rated proposals, when due",
                (
                    PIPELINE,
                    Arg("--every", type=int, default=5, help="new ratings needed (default 5)"),
                    Arg("--force", action="store_true", help="now, if any rating exists"),
                    Arg("--model", help="litellm model (default: GENOPT_MODEL)"),
                ),
                epilog="exit status 1 when the model's answer was unusable (nothing is stored)",
            ),
        ],
    )


def run_show(args: argparse.Namespace, ctx: Context) -> int:
    """Print the instruction in use and its id."""
    from prefect_genopt.optimize.instruction import current_instruction

    require_pipeline(ctx, args.pipeline)
    iid, text = current_instruction(ctx.warehouse(), args.pipeline)
    print(f"# {iid or 'default instruction (never tuned)'}\n{text}")
    return 0


def run_tune(args: argparse.Namespace, ctx: Context) -> int:
    """Tune when due; exit 1 if the model's answer was unusable."""
    from prefect_genopt.optimize.instruction import tune_instruction

    require_pipeline(ctx, args.pipeline)
    result = tune_instruction(
        args.pipeline,
        every=args.every,
        force=args.force,
        model=args.model,
        warehouse=ctx.warehouse(),
        progress=lambda line: print(line, file=sys.stderr),
    )
    print(f"{result.status}: {result.reason}")
    return 0 if result.status in TUNE_OK else 1

"""``genopt report PIPELINE``: one self-contained HTML file of the pipeline's loop."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context

DESCRIPTION = """\
Write one self-contained HTML file (open it in any browser; it needs no network: its
data, styles, script and chart library are inline) with:

  KPI over time   daily mean per param set with its 95% interval, marked where a
                  proposal was made, a rollout started, was promoted or rolled back,
                  and where a param set was pinned
  rollouts        both arms' KPI per check with intervals, the weight steps, each
                  check's decision
  proposals       status, diff, offline evidence, replay gate, rating, lineage
  optimizer       each night's candidates: selection and confirmation scores,
  nights          tokens and cost
  traces          the last runs; click one for its span tree (flow -> tasks -> LLM
                  calls) with inputs, outputs, params read, arm, timing, tokens, errors
  LLM usage       calls, tokens and cost per day and model

Everything is read from the warehouse (no Prefect API needed). An unknown PIPELINE
exits 2 and lists the known ones.

examples:
  genopt report triage
  genopt report triage --out /tmp/triage.html --days 7 --traces 50
"""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more: {value}")
    return value


def _count(text: str) -> int:
    return 0 if text.strip() == "0" else _positive(text)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt report``."""
    p = sub.add_parser(
        "report",
        help="write a self-contained HTML report: KPI charts, rollouts, proposals, traces",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pipeline", metavar="PIPELINE", help="the pipeline's name (genopt.pipeline)")
    p.add_argument(
        "--out",
        metavar="FILE",
        default="report.html",
        help="where to write the HTML file (default: report.html in the current directory)",
    )
    p.add_argument(
        "--days",
        metavar="N",
        type=_positive,
        default=30,
        help="the window: the last N days (default: 30)",
    )
    p.add_argument(
        "--traces",
        metavar="N",
        type=_count,
        default=25,
        help="how many of the last runs the trace view holds (default: 25; 0 for none)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Write the report; print where, its size and what it holds."""
    from prefect_genopt.cli._checks import require_pipeline
    from prefect_genopt.cli._progress import Progress
    from prefect_genopt.report import report_data, write_report

    require_pipeline(ctx, args.pipeline)  # a typo: "unknown pipeline 'triag'; known: triage"
    wh = ctx.warehouse()
    with Progress() as progress:  # a bar with an ETA on a terminal, plain lines otherwise
        data = report_data(
            wh,
            args.pipeline,
            days=args.days,
            traces=args.traces,
            progress=lambda name, done, total: progress.update(
                "reading the warehouse", done, total, f"read {name}: {done}/{total} sections"
            ),
        )
        path = write_report(data, args.out)
    size = path.stat().st_size
    print(
        f"wrote {path} ({size / 1e6:.2f} MB): {len(data['kpis'])} KPI chart(s), "
        f"{len(data['rollouts'])} rollout(s), {len(data['proposals'])} proposal(s), "
        f"{len(data['nights'])} night(s), {len(data['traces'])} run trace(s), "
        f"last {args.days} days"
    )
    return 0

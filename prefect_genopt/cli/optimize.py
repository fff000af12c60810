"""``genopt optimize``: run the optimizer flow for a pipeline now."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prefect_genopt.cli._output import print_json
from prefect_genopt.cli._utilities import RAW, json_arg

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context

#: options that are OptimizerSettings fields of the same name
SETTINGS_OPTIONS = (
    "kpi",
    "direction",
    "window_days",
    "minibatch_size",
    "memory_size",
    "max_updates",
    "proposals_per_run",
    "budget_tokens",
    "budget_usd",
    "model",
    "response_format",
    "timeout_s",
    "seed",
    "focus",
    # the nightly search
    "evidence_items",
    "selection_items",
    "confirmation_items",
    "n_drafts",
    "n_demo_sets",
    "confirm_alpha",
    "task_call_budget",
    "optimizer_call_budget",
)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number no smaller than ``low``.

    Example:
        >>> at_least(1)("48")
        48
        >>> at_least(1)("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be a whole number >= 1, got '0'
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {low}, got {text!r}")
        return value

    parse.__name__ = f"whole number >= {low}"
    return parse


def probability(text: str) -> float:
    """An argparse ``type``: a number strictly between 0 and 1.

    Example:
        >>> probability("0.05")
        0.05
        >>> probability("1")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be a number between 0 and 1 (exclusive), got '1'
    """
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"must be a number between 0 and 1 (exclusive), got {text!r}"
        )
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt optimize``."""
    o = sub.add_parser(
        "optimize",
        help="run the optimizer flow for a pipeline now",
        description="Run the genopt-optimize Prefect flow now: read the pipeline's runs and "
        "feedback from the warehouse, ask an LLM (GENOPT_MODEL, else the embedded local model) "
        "for better param values, check them against the pipeline's Tunables and record "
        "proposals. By default this is a search: candidates are scored by replaying recorded "
        "runs and one is proposed only when a paired test confirms it (else the night is "
        "recorded as a not_better proposal); --no-search makes one LLM update per minibatch "
        "instead. Options override the optimizer settings; --settings takes them all as JSON.",
        epilog="examples:\n  genopt optimize triage\n"
        "  genopt optimize triage --selection-items 24 --confirmation-items 80 --drafts 6\n"
        "  genopt optimize triage --no-search --minibatch-size 3 "
        "--max-updates 2 --budget-usd 0.05 --model openai/gpt-4o-mini\n"
        '  genopt optimize triage --settings \'{"credit_horizon": {"max_value_chars": 200}}\'',
        formatter_class=RAW,
    )
    o.add_argument("pipeline", metavar="PIPELINE")
    o.add_argument("--kpi", help="feedback KPI to improve (default: chosen from the feedback)")
    o.add_argument("--direction", choices=["higher", "lower"], help="which KPI values are better")
    o.add_argument("--window-days", type=float, help="evidence window in days (default 7)")
    o.add_argument("--minibatch-size", type=int, help="units of evidence per update (default 4)")
    o.add_argument("--memory-size", type=int, help="past proposals shown (default 3)")
    o.add_argument("--max-updates", type=int, help="most LLM updates in this run (default 3)")
    o.add_argument("--proposals-per-run", type=int, help="stop after this many (default 1)")
    o.add_argument("--budget-tokens", type=int, help="most LLM tokens (default 200000)")
    o.add_argument("--budget-usd", type=float, help="most USD where priced (default 1.0)")
    o.add_argument("--model", help="litellm model string (default: GENOPT_MODEL or embedded)")
    o.add_argument(
        "--response-format", choices=["auto", "json_schema", "json_object", "none"], default=None
    )
    o.add_argument("--timeout-s", type=float, help="seconds per LLM call")
    o.add_argument("--seed", type=int, help="minibatch sampling seed")
    o.add_argument("--focus", choices=["failures", "random"], help="minibatch selection")
    o.add_argument("--editable", help="comma-separated params the optimizer may change")
    search = o.add_argument_group(
        "the search",
        "On by default: draft candidates, choose one by successive halving on replayed\n"
        "items, propose it only when a paired sign test on the confirmation items confirms it.",
    )
    search.add_argument(
        "--no-search",
        dest="search",
        action="store_false",
        default=None,
        help="today's single-shot path instead of the search (one LLM update per minibatch, "
        "proposed when valid; default: the search)",
    )
    search.add_argument(
        "--evidence-items",
        type=at_least(1),
        metavar="N",
        help="labelled items the optimizer reads and draws demos from (default 30)",
    )
    search.add_argument(
        "--selection-items",
        type=at_least(2),
        metavar="N",
        help="labelled items candidates are chosen on by replay (default 48)",
    )
    search.add_argument(
        "--confirmation-items",
        type=at_least(2),
        metavar="N",
        help="labelled items the winner is confirmed on against its parent (default 150)",
    )
    search.add_argument(
        "--drafts",
        dest="n_drafts",
        type=at_least(0),
        metavar="N",
        help="instruction drafts asked of the optimizer model (default 4)",
    )
    search.add_argument(
        "--demo-sets",
        dest="n_demo_sets",
        type=at_least(0),
        metavar="N",
        help="balanced demo sets drawn per demos param (default 6)",
    )
    search.add_argument(
        "--confirm-alpha",
        type=probability,
        metavar="P",
        help="propose only when the one-sided sign test gives p below this (default 0.05)",
    )
    search.add_argument(
        "--task-call-budget",
        type=at_least(1),
        metavar="N",
        help="most task-model calls the night's replays may make, cached ones counted "
        "(default 2000)",
    )
    search.add_argument(
        "--optimizer-call-budget",
        type=at_least(1),
        metavar="N",
        help="most optimizer-model calls of the night (default 12)",
    )
    o.add_argument("--settings", help="optimizer settings as a JSON object or a JSON file")
    o.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for a running optimizer (30)"
    )
    o.add_argument(
        "--harvest",
        metavar="KPI",
        help="first store the runs good on KPI (0/1) as experiences, as `genopt experiences "
        "harvest` does",
    )
    o.add_argument("--json", action="store_true", help="print the flow's result as JSON")
    o.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The optimizer settings given: ``--settings``, then the options over it."""
    from prefect_genopt.cli import CLIError

    settings: dict[str, Any] = {}
    if args.settings:
        loaded = json_arg(args.settings, "--settings")
        if not isinstance(loaded, dict):
            raise CLIError("--settings must be a JSON object")
        settings.update(loaded)
    for name in SETTINGS_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    if getattr(args, "search", None) is False:
        settings["search"] = False
    if args.editable:
        start = dict(settings.get("starting_artifact") or {})
        start["editable"] = [e.strip() for e in args.editable.split(",") if e.strip()]
        settings["starting_artifact"] = start
    return settings


@contextlib.contextmanager
def progress_to_stderr(quiet: bool = False) -> Iterator[None]:
    """Show the optimizer flow's progress on stderr, whatever Prefect's log level: a bar
    with an ETA on a terminal, plain lines otherwise (:mod:`prefect_genopt.cli._progress`)."""
    from prefect_genopt.cli._progress import Progress

    logger = logging.getLogger("prefect.flow_runs")
    old_level, old_propagate = logger.level, logger.propagate
    with contextlib.ExitStack() as stack:
        if not quiet:
            progress = stack.enter_context(Progress(sys.stderr))
            handler = _ProgressHandler(progress)
            logger.addHandler(handler)
            stack.callback(logger.removeHandler, handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False
        try:
            yield
        finally:
            logger.setLevel(old_level)
            logger.propagate = old_propagate


class _ProgressHandler(logging.Handler):
    """Log records of the flow run (INFO and up) as lines of a :class:`Progress`."""

    def __init__(self, progress: Any) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.say(record.getMessage())
        except Exception:  # noqa: BLE001 - progress never breaks the command
            self.handleError(record)


def run(args: argparse.Namespace, ctx: Context) -> int:
    """Check the settings, run the flow, print its proposals (or its result as JSON)."""
    from pydantic import ValidationError

    from prefect_genopt.cli import CLIError
    from prefect_genopt.optimize import OptimizerSettings

    settings = settings_from_args(args)
    try:
        OptimizerSettings(pipeline=args.pipeline, **settings)  # fail fast, before Prefect starts
    except ValidationError as exc:
        raise CLIError(f"invalid optimizer settings:\n{exc}") from None
    from prefect_genopt.cli._checks import require_pipeline
    from prefect_genopt.optimize.flow import optimize_flow

    require_pipeline(ctx, args.pipeline)  # a typo: one line, exit 2 (not the flow's traceback)

    from prefect import tags

    from prefect_genopt.optimize.flow import run_tags

    with (  # the run carries the tags of the nightly deployment's runs
        ctx.running_pipelines(),
        progress_to_stderr(quiet=args.json),
        tags(*run_tags(args.pipeline)),
    ):
        out = optimize_flow(
            args.pipeline,
            settings=settings,
            wait_seconds=args.wait,
            warehouse=str(ctx.warehouse_path),
            harvest={"kpi": args.harvest} if args.harvest else None,
        )
    if args.json:
        print_json(out)
        return 0
    if out.get("skipped"):
        print(out["reason"])
        return 0
    if out.get("harvest"):
        h = out["harvest"]
        print(
            f"harvested {h['verified']} verified, {h['rejected']} rejected, {h['refused']} "
            "refused experience(s)"
        )
    for u in out["updates"]:
        print(f"{u['proposal_id']}: {u['status']}" + (f" ({u['reason']})" if u["reason"] else ""))
    cost = "unpriced" if out["cost_usd"] is None else f"${out['cost_usd']:.4f}"
    print(
        f"{len(out['proposals'])} proposal(s) from {out['model']} in {out['seconds']:.1f}s "
        f"({out['llm_seconds']:.1f}s in the LLM), {out['tokens']} tokens, {cost}; "
        f"stopped: {out['stop_reason']}"
    )
    if out["proposals"]:
        print(f"see: genopt proposals {args.pipeline}")
    return 0

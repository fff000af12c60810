"""``genopt rollout``: canary rollouts, one verb each.

Every verb ends by printing the rollout's status (``--json``: as JSON), except
``analyze --json``, which prints the check's decision.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from prefect_genopt.cli._checks import require_pipeline
from prefect_genopt.cli._errors import EXIT_GATE_SKIPPED, EXIT_GATE_STOPPED
from prefect_genopt.cli._output import print_json
from prefect_genopt.cli._utilities import Arg, Verb, add_group, json_arg

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context

DEFAULTS = (
    "defaults (the safe plan): steps 10,25,50 then 100% = promote; tolerance 5% (relative);\n"
    "alpha 0.01 (false rollbacks); beta 0.05 (promoting a candidate worse by the tolerance);\n"
    "100 values per arm before any verdict and 100 new ones per step; abort on the 2nd\n"
    "failed check; pause after 50 checks in a row without a verdict (one counted per 100\n"
    "new canary values). Arms are compared within steps. --fast: a small plan for demos\n"
    "(30%, 50%; 8 values per arm; tolerance 20%, alpha 0.05): it misses small regressions."
)
EXIT_CODES_HELP = (
    'exit codes: 0 done; 2 an error (nothing changed; "Prefect API unreachable at URL" when\n'
    f"the API is down); {EXIT_GATE_STOPPED} `start` only: the replay gate found the candidate "
    "worse than\nstable, so no item saw it (a proposal is rejected); "
    f"{EXIT_GATE_SKIPPED} `start` only: the replay gate\ncould not run (the message says why), "
    "so nothing started and a proposal stays\n'proposed' (--no-gate starts without it)."
)
KPI_HELP = (
    "the KPI must have values in the pipeline's recent runs (--allow-new-kpi: it will from\n"
    "now on), and per item (feedback with item_key) when items are routed one by one\n"
    "(--allow-run-kpi: a run-level KPI then counts only runs whose items all went to one\n"
    "arm, which at a 10% canary weight is almost none). `abort` before any canary value\n"
    "ends the rollout 'withdrawn' and returns its proposal to 'proposed'."
)

#: start's options that are RolloutPlan fields of the same name
PLAN_OPTIONS = (
    "kpi",
    "direction",
    "steps",
    "tolerance",
    "tolerance_mode",
    "alpha",
    "beta",
    "min_sample_per_arm",
    "step_min_samples",
    "failure_limit",
    "inconclusive_limit",
)

PIPELINE = Arg("pipeline", help="the pipeline")
JSON = Arg("--json", action="store_true", help="print the status as JSON")
ACTOR = Arg("--actor", help="who (default: your login name)")
REASON = Arg("--reason", help="why (recorded; required)")
START_ARGS = (
    PIPELINE,
    Arg("--proposal", help="the proposal whose candidate to roll out"),
    Arg("--params", help="a hand-written param set: a JSON object or file"),
    Arg("--kpi", help="the feedback KPI that judges the arms"),
    Arg("--direction", choices=("higher", "lower"), help="which KPI values are better"),
    Arg("--steps", help="canary weights in %%, e.g. 10,25,50,100 (default 10,25,50)"),
    Arg("--tolerance", type=float, help="regression to catch (default 0.05 = 5%%)"),
    Arg(
        "--tolerance-mode",
        choices=("relative", "absolute"),
        help="tolerance as a fraction of stable's mean (relative, default) or in KPI units",
    ),
    Arg("--alpha", type=float, help="false-rollback bound (0.01)"),
    Arg("--beta", type=float, help="bound on promoting a candidate worse by the tolerance (0.05)"),
    Arg(
        "--min-sample",
        dest="min_sample_per_arm",
        type=int,
        help="KPI values each arm needs before any verdict (100)",
    ),
    Arg("--step-min-samples", type=int, help="new values per arm per step (100)"),
    Arg("--failure-limit", type=int, help="abort on the N-th failed check (2)"),
    Arg(
        "--inconclusive-limit",
        type=int,
        help="pause after N checks in a row without a verdict (50)",
    ),
    Arg("--plan", help="plan fields as a JSON object or file"),
    Arg("--fast", action="store_true", help="the small demo plan"),
    Arg(
        "--no-gate",
        action="store_true",
        help="skip the replay gate (replaying recorded runs with the candidate first); "
        "without it, a gate that cannot run stops the start (exit 4)",
    ),
    Arg(
        "--allow-new-kpi",
        action="store_true",
        help="accept a KPI the pipeline has not emitted in its recent runs",
    ),
    Arg(
        "--allow-run-kpi",
        action="store_true",
        help="accept a KPI with only run-level values while items are routed one by one",
    ),
    Arg("--gate-runs", type=int, default=1, help="recorded runs the gate replays (1)"),
    Arg("--reason", help="why (recorded)"),
    ACTOR,
    JSON,
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt rollout`` and its verbs."""

    def by_hand(verb: str, help: str) -> Verb:  # noqa: A002 - argparse's word
        return Verb(verb, run_by_hand, help, (PIPELINE, REASON, ACTOR, JSON))

    add_group(
        sub,
        "rollout",
        help="canary rollouts: start, status, analyze, promote, abort, pause, resume, pin, unpin",
        description="Roll a candidate param set out behind a canary. `start` sends a share of "
        "the items (or runs) to the candidate, growing by steps; `analyze` runs one check now "
        "(the genopt-canary flow does it on a schedule) and continues, advances, promotes, "
        "aborts or pauses; `status` shows the arms, the last decision and the history; "
        "`promote`, `abort`, `pause`, `resume` act by hand (recorded with --actor and "
        "--reason); `pin PIPELINE PARAM_SET_ID` sends every item to one param set whatever "
        "else happens (the kill switch), `unpin` undoes it. `genopt rollout VERB --help` "
        "shows a verb's options.",
        epilog="examples:\n"
        "  genopt rollout start triage --proposal pr_20261122051500_ab12cd\n"
        "  genopt rollout start triage --params candidate.json --kpi correct --steps 10,25,50,100\n"
        "  genopt rollout status triage\n"
        "  genopt rollout --json status triage\n"
        "  genopt rollout analyze triage\n"
        '  genopt rollout abort triage --reason "complaints from support"\n'
        '  genopt rollout pin triage ps_0123456789abcdef --reason "incident 42"\n\n'
        f"{DEFAULTS}\n\n{KPI_HELP}\n\n{EXIT_CODES_HELP}",
        verbs=[
            Verb(
                "start",
                run_start,
                "start a canary: a proposal's candidate (--proposal) or a param set (--params)",
                START_ARGS,
                description="Start a canary rollout of a candidate param set: a proposal's "
                "(--proposal) or a hand-written one (--params). Unless --no-gate, the replay "
                "gate first replays recorded runs with the candidate and stops it if it is "
                "worse than stable (exit 3); a gate that cannot run stops the start (exit 4).",
                epilog=f"{DEFAULTS}\n\n{KPI_HELP}\n\n{EXIT_CODES_HELP}",
            ),
            Verb(
                "status",
                run_status,
                "show the arms, the last decision and the history",
                (PIPELINE, JSON),
            ),
            Verb(
                "analyze",
                run_analyze,
                "run one check now; continue, advance, promote, abort or pause",
                (
                    PIPELINE,
                    ACTOR,
                    Arg("--json", action="store_true", help="print the check as JSON"),
                ),
            ),
            by_hand("promote", "promote the canary now (it becomes stable)"),
            by_hand(
                "abort",
                "roll back now: every item goes to stable (before any canary value: "
                "'withdrawn', the proposal is 'proposed' again)",
            ),
            by_hand("pause", "stop automatic decisions; traffic stays as it is"),
            by_hand("resume", "let checks decide again"),
            Verb(
                "pin",
                run_pin,
                "send every item to one param set whatever else happens (the kill switch)",
                (
                    PIPELINE,
                    Arg(
                        "param_set_id",
                        nargs="?",
                        metavar="PARAM_SET_ID",
                        help="the param set every item will use",
                    ),
                    REASON,
                    ACTOR,
                    JSON,
                ),
            ),
            by_hand("unpin", "undo pin: route normally again"),
        ],
    )


def plan_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The rollout plan given: --fast, then --plan, then the options over them."""
    from prefect_genopt.cli import CLIError
    from prefect_genopt.rollout import FAST_PLAN

    plan: dict[str, Any] = dict(FAST_PLAN) if args.fast else {}
    if args.plan:
        given = json_arg(args.plan, "--plan")
        if not isinstance(given, dict):
            raise CLIError("--plan must be a JSON object of rollout plan fields")
        plan.update(given)
    for name in PLAN_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            plan[name] = value
    return plan


def run_start(args: argparse.Namespace, ctx: Context) -> int:
    """Start the rollout (after the replay gate, unless --no-gate)."""
    from prefect_genopt.cli import CLIError
    from prefect_genopt.rollout import controller

    require_pipeline(ctx, args.pipeline)
    if (args.proposal is None) == (args.params is None):
        raise CLIError("give exactly one of --proposal ID or --params FILE|JSON")
    values = json_arg(args.params, "--params") if args.params else None
    with ctx.running_pipelines():  # the gate replays recorded runs in this process
        controller.start_rollout(
            args.pipeline,
            proposal_id=args.proposal,
            values=values,
            plan=plan_from_args(args),
            actor=args.actor,
            reason=args.reason,
            gate=not args.no_gate,
            gate_runs=args.gate_runs,
            allow_new_kpi=args.allow_new_kpi,
            allow_run_kpi=args.allow_run_kpi,
            warehouse=ctx.warehouse(),
        )
    return run_status(args, ctx)


def run_status(args: argparse.Namespace, ctx: Context) -> int:
    """Print the rollout's status."""
    from prefect_genopt.rollout.report import rollout_status, text

    require_pipeline(ctx, args.pipeline)
    status = rollout_status(args.pipeline, ctx.warehouse())
    if args.json:
        print_json(status)
    else:
        print(text(status))
    return 0


def run_analyze(args: argparse.Namespace, ctx: Context) -> int:
    """Run one check now and act on it."""
    from prefect_genopt.rollout import controller

    require_pipeline(ctx, args.pipeline)
    result = controller.analyze(
        args.pipeline, actor=args.actor or "genopt rollout analyze", warehouse=ctx.warehouse()
    )
    if not args.json:
        print(result.summary())
        return run_status(args, ctx)
    a = result.assessment
    print_json(
        {
            "decision": result.decision.kind,
            "reason": result.decision.reason,
            "applied": result.applied,
            "assessment": a.as_dict() if a else None,
            "state": result.state.model_dump(mode="json"),
        }
    )
    return 0


def run_by_hand(args: argparse.Namespace, ctx: Context) -> int:
    """promote, abort, pause, resume, unpin: act by hand, recorded with who and why."""
    from prefect_genopt.rollout import controller

    act = getattr(controller, args.verb)
    require_pipeline(ctx, args.pipeline)
    act(args.pipeline, args.reason or "", actor=args.actor, warehouse=ctx.warehouse())
    return run_status(args, ctx)


def run_pin(args: argparse.Namespace, ctx: Context) -> int:
    """Pin every item to one param set."""
    from prefect_genopt.cli import CLIError
    from prefect_genopt.rollout import controller

    require_pipeline(ctx, args.pipeline)
    if not args.param_set_id:
        raise CLIError("usage: genopt rollout pin PIPELINE PARAM_SET_ID --reason TEXT")
    controller.pin(
        args.pipeline,
        args.param_set_id,
        args.reason or "",
        actor=args.actor,
        warehouse=ctx.warehouse(),
    )
    return run_status(args, ctx)

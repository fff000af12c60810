"""``genopt proposals``: list, show or reject the optimizer's proposals.

``genopt proposals [list] [PIPELINE]`` lists (``list`` is the default verb, so
``genopt proposals triage`` lists triage's), ``show ID`` shows one in full,
``reject ID --reason TEXT`` rejects one by hand.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import orjson

from prefect_genopt.cli._checks import require_pipeline, require_warehouse
from prefect_genopt.cli._output import cell, format_table, nest_json, print_json
from prefect_genopt.cli._utilities import Arg, Verb, add_group

if TYPE_CHECKING:
    from prefect_genopt.cli._app import Context

COLUMNS = (
    "proposal_id",
    "created_at",
    "pipeline",
    "status",
    "changes",
    "candidate_param_set_id",
    "model",
    "tokens",
    "cost_usd",
    "reason",
)

JSON = Arg("--json", action="store_true", help="print rows as JSON")
MARKDOWN = Arg("--markdown", action="store_true", help="print the Markdown report")
PROPOSAL_ID = Arg("proposal_id", metavar="ID", help="the proposal (a unique prefix will do)")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``genopt proposals`` and its verbs."""
    add_group(
        sub,
        "proposals",
        help="list, show or reject the optimizer's proposals",
        description="List proposals (newest first), show one in full (reasoning, per-parameter "
        "diff, evidence runs, model, tokens, cost), or reject one by hand. Forms: "
        "genopt proposals [list] [PIPELINE] | show ID | reject ID --reason TEXT",
        epilog="examples:\n  genopt proposals triage\n  genopt proposals triage --status proposed\n"
        "  genopt proposals show pr_20261122051500_ab12cd\n"
        '  genopt proposals reject pr_20261122051500_ab12cd --reason "drops the refund rule"',
        default_verb="list",
        verbs=[
            Verb(
                "list",
                run_list,
                "list proposals, newest first (the default verb)",
                (
                    Arg("pipeline", nargs="?", metavar="PIPELINE", help="only this pipeline's"),
                    Arg("--status", help="only proposals with this status"),
                    Arg("--limit", type=int, default=20, help="most rows listed (default 20)"),
                    JSON,
                    MARKDOWN,
                    Arg("--max-width", type=int, default=50, help="widest table cell (default 50)"),
                ),
            ),
            Verb(
                "show",
                run_show,
                "show one proposal: reasoning, diff, offline evidence (the search's scores "
                "and paired test), evidence runs, tokens, cost",
                (PROPOSAL_ID, JSON, MARKDOWN),
            ),
            Verb(
                "reject",
                run_reject,
                "reject a proposal by hand (recorded with --actor and --reason)",
                (
                    PROPOSAL_ID,
                    Arg("--reason", help="why (required)"),
                    Arg("--actor", help="who rejects (default: your login name)"),
                ),
            ),
        ],
    )


def run_list(args: argparse.Namespace, ctx: Context) -> int:
    """List proposals as a table, JSON or the Markdown report."""
    from prefect_genopt.proposals.proposals import list_proposals, markdown

    require_pipeline(ctx, args.pipeline)
    rows = list_proposals(
        ctx.warehouse(), pipeline=args.pipeline, status=args.status, limit=args.limit
    )
    if args.json:
        print_json(_nested(ctx, rows))
    elif args.markdown:
        print(markdown(rows))
    else:
        print(format_table(list(COLUMNS), [_row(r) for r in rows], args.max_width))
        if rows:
            print("details: genopt proposals show ID   (reasoning, diff, evidence runs)")
    return 0


def run_show(args: argparse.Namespace, ctx: Context) -> int:
    """Print one proposal's Markdown report (or its row as JSON)."""
    from prefect_genopt.proposals.proposals import get_proposal, markdown

    require_warehouse(ctx)
    rows = [get_proposal(ctx.warehouse(), args.proposal_id)]
    if args.json:
        print_json(_nested(ctx, rows))
    else:
        print(markdown(rows))
    return 0


def run_reject(args: argparse.Namespace, ctx: Context) -> int:
    """Reject a proposal; print its new status."""
    from prefect_genopt.proposals.proposals import reject_proposal

    require_warehouse(ctx)
    row = reject_proposal(ctx.warehouse(), args.proposal_id, args.reason or "", actor=args.actor)
    print(f"{row['proposal_id']}: {row['status']} ({row['status_reason']})")
    return 0


#: The JSON-typed columns of the proposals table (nested in --json output).
JSON_COLUMNS_SQL = (
    "SELECT column_name FROM duckdb_columns() "
    "WHERE table_name = 'proposals' AND data_type = 'JSON' AND NOT internal"
)


def _nested(ctx: Context, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with their JSON-typed columns (diff, suggestion, settings, offline
    evidence...) as JSON values, not their text."""
    if not rows:
        return rows
    columns = [r["column_name"] for r in ctx.warehouse().sql(JSON_COLUMNS_SQL)]
    return [nest_json(r, columns) for r in rows]


def _row(r: dict[str, Any]) -> tuple[Any, ...]:
    diff = (orjson.loads(r["diff"]) if r["diff"] else None) or {}
    changes = "; ".join(f"{k}: {cell(v.get('to'), 40)}" for k, v in diff.items())
    return (
        r["proposal_id"],
        r["created_at"],
        r["pipeline"],
        r["status"],
        changes or "-",
        r["candidate_param_set_id"],
        r["model"],
        (r["input_tokens"] or 0) + (r["output_tokens"] or 0),
        r["cost_usd"],
        r["status_reason"],
    )

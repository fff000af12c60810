"""Proposals: what the optimizer suggests, stored with everything needed to judge it.

A proposal row holds the pipeline, the parent and candidate param sets, the
per-parameter diff, the LLM's reasoning, the evidence runs, the optimizer's
settings, the model, tokens and cost. Its status is the latest of its
append-only events in ``proposal_events``: ``proposed``; ``rejected`` (an invalid
suggestion, or a person said no) and ``no_change`` never become candidates;
later ``canary``, ``promoted``, ``rolled_back``. ``not_better`` records a night of the
search (``OptimizerSettings(search=True)``) whose best candidate the paired test did not
confirm: the row carries its numbers (``offline_evidence``) and nothing becomes live.
Recording a proposal, and rejecting one, emits a Prefect event
(``genopt.proposal.created|rejected|not_better|no_change``, see
:mod:`prefect_genopt.proposals.events`).

Like every writer but the ingester, this module appends to the spool; the rows
are in SQL after the next ingest (done at once by the functions here).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from prefect_genopt import spool
from prefect_genopt.errors import BadInputError
from prefect_genopt.proposals.events import emit_proposal_event
from prefect_genopt.records import current_user, row_record
from prefect_genopt.redaction import clean
from prefect_genopt.warehouse import Warehouse
from prefect_genopt.warehouse.schema import utcnow

__all__ = [
    "STATUSES",
    "FINAL_STATUSES",
    "ProposalError",
    "new_proposal_id",
    "record_proposal",
    "set_status",
    "reject_proposal",
    "list_proposals",
    "get_proposal",
    "markdown",
    "offline_markdown",
]

STATUSES = (
    "proposed",
    "rejected",
    "no_change",
    "canary",
    "promoted",
    "rolled_back",
    "not_better",
)
#: statuses from which a proposal never moves again
FINAL_STATUSES = frozenset({"rejected", "no_change", "promoted", "rolled_back", "not_better"})
#: allowed status changes after the proposal is written
TRANSITIONS: dict[str, frozenset[str]] = {
    "proposed": frozenset({"rejected", "canary", "promoted"}),
    # back to proposed: its rollout was withdrawn before any canary value (never judged)
    "canary": frozenset({"promoted", "rolled_back", "proposed"}),
}


class ProposalError(BadInputError, ValueError):
    """An unknown proposal, or a status change its current status does not allow."""


def new_proposal_id() -> str:
    """A fresh, time-ordered proposal id (``pr_YYYYmmddHHMMSS_xxxxxx``)."""
    return f"pr_{utcnow():%Y%m%d%H%M%S}_{uuid.uuid4().hex[:6]}"


def _iso(ts: datetime) -> str:
    return ts.isoformat()


def _event(proposal_id: str, status: str, actor: str | None, reason: str | None) -> dict[str, Any]:
    return row_record(
        "proposal_events",
        {
            "event_id": uuid.uuid4().hex,
            "proposal_id": proposal_id,
            "created_at": _iso(utcnow()),
            "status": status,
            "actor": actor,
            "reason": clean(reason, 4000) if reason else None,
        },
    )


def record_proposal(
    wh: Warehouse,
    row: Mapping[str, Any],
    candidate_values: dict[str, Any] | None,
    schema_version: int | None,
    extra_param_sets: list[tuple[str, dict[str, Any], str]] | None = None,
) -> None:
    """Append one proposal (and its candidate param set) to the warehouse's spool.

    Args:
        wh: The warehouse whose spool receives the rows.
        row: The ``proposals`` columns (``proposal_id``, ``pipeline``, ``status``...).
        candidate_values: The candidate's full values (None for a non-candidate).
        schema_version: The pipeline schema version the candidate was checked against.
        extra_param_sets: Other param sets to register: ``(id, values, source)``.
    """
    now = _iso(utcnow())
    body = dict(row)
    body.setdefault("created_at", now)
    records = []
    sets = list(extra_param_sets or [])
    if candidate_values is not None and body.get("candidate_param_set_id"):
        sets.append((body["candidate_param_set_id"], candidate_values, "proposal"))
    for ps_id, values, source in sets:
        records.append(
            row_record(
                "param_sets",
                {
                    "pipeline": body["pipeline"],
                    "param_set_id": ps_id,
                    "values": values,
                    "schema_version": schema_version,
                    "source": source,
                    "created_at": now,
                },
            )
        )
    records.append(row_record("proposals", body))
    records.append(
        _event(body["proposal_id"], body["status"], "optimizer", body.get("status_reason"))
    )
    spool.append(records, wh.spool_dir)
    emit_proposal_event(body, body["status"], actor="optimizer")


def get_proposal(wh: Warehouse, proposal_id: str) -> dict[str, Any]:
    """One proposal by id (a unique prefix is enough).

    Raises:
        ProposalError: No proposal, or several, match.
    """
    rows = wh.sql(
        "SELECT * FROM proposals WHERE proposal_id LIKE ? || '%' ORDER BY created_at LIMIT 2",
        [proposal_id],
    )
    if not rows:
        raise ProposalError(f"no proposal {proposal_id!r} (see `genopt proposals PIPELINE`)")
    if len(rows) > 1:
        raise ProposalError(f"{proposal_id!r} matches several proposals; give more of the id")
    return rows[0]


def set_status(
    wh: Warehouse,
    proposal_id: str,
    status: str,
    *,
    reason: str | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Move a proposal to ``status`` (recorded as an event with who and why).

    Raises:
        ProposalError: Unknown proposal, unknown status, or a change its current
            status does not allow (e.g. rejecting a promoted proposal).
    """
    if status not in STATUSES:
        raise ProposalError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
    row = get_proposal(wh, proposal_id)
    current = row["status"]
    if status not in TRANSITIONS.get(current, frozenset()):
        raise ProposalError(
            f"proposal {row['proposal_id']} is {current!r}: it cannot become {status!r}"
        )
    who = actor or current_user()
    event = _event(row["proposal_id"], status, who, reason)
    spool.append([event], wh.spool_dir)
    emit_proposal_event(row, status, reason=reason, actor=who)
    wh.ingest_if_free()
    return get_proposal(wh, row["proposal_id"])


def reject_proposal(
    wh: Warehouse, proposal_id: str, reason: str, actor: str | None = None
) -> dict[str, Any]:
    """Reject a proposal by hand: it will never become a candidate.

    Raises:
        ProposalError: See :func:`set_status`; an empty reason is refused too.
    """
    if not reason or not reason.strip():
        raise ProposalError("give a reason for the rejection (--reason TEXT)")
    return set_status(wh, proposal_id, "rejected", reason=reason, actor=actor)


def list_proposals(
    wh: Warehouse, pipeline: str | None = None, status: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Proposals, newest first, optionally for one pipeline and one status."""
    where, params = [], []
    if pipeline:
        where.append("pipeline = ?")
        params.append(pipeline)
    if status:
        where.append("status = ?")
        params.append(status)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return wh.sql(
        f"SELECT * FROM proposals {clause} ORDER BY created_at DESC, proposal_id DESC LIMIT ?",
        [*params, limit],
    )


def _value(v: Any, limit: int = 300) -> str:
    s = v if isinstance(v, str) else orjson.dumps(v).decode()
    s = s if len(s) <= limit else s[:limit] + "…"
    return s.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict[str, Any]], title: str = "Proposals") -> str:
    """A Markdown report of proposals (the optimizer flow's artifact)."""
    lines = [f"# {title}", ""]
    if not rows:
        lines.append("No proposals.")
        return "\n".join(lines)
    for r in rows:
        cost = "unpriced" if r.get("cost_usd") is None else f"${r['cost_usd']:.4f}"
        lines += [
            f"## `{r['proposal_id']}`: **{r['status']}**"
            + (f" ({r['status_reason']})" if r.get("status_reason") else ""),
            "",
            f"- pipeline **{r['pipeline']}**, parent `{r.get('parent_param_set_id')}` → "
            f"candidate `{r.get('candidate_param_set_id') or '-'}`",
            f"- KPI `{r.get('kpi')}` ({r.get('direction')} is better): evidence mean "
            f"{r['evidence_kpi_mean']:.3g} over {r.get('evidence_units')} units"
            if r.get("evidence_kpi_mean") is not None
            else f"- KPI `{r.get('kpi')}`",
            f"- model `{r.get('model')}` ({r.get('response_format')}), {r.get('attempts')} "
            f"call(s), {r.get('input_tokens')} + {r.get('output_tokens')} tokens, {cost}",
            "",
        ]
        diff = r.get("diff")
        diff = orjson.loads(diff) if isinstance(diff, str) else diff
        if diff:
            lines += ["| parameter | from | to |", "|---|---|---|"]
            for name, d in diff.items():
                lines.append(f"| `{name}` | {_value(d.get('from'))} | {_value(d.get('to'))} |")
            lines.append("")
        if r.get("reasoning"):
            lines += ["**Reasoning.** " + _value(r["reasoning"], 2000), ""]
        offline = r.get("offline_evidence")
        offline = orjson.loads(offline) if isinstance(offline, str) else offline
        if offline:
            lines += offline_markdown(offline)
        runs = r.get("evidence_run_ids")
        runs = orjson.loads(runs) if isinstance(runs, str) else runs
        if runs:
            lines += [f"Evidence runs: {', '.join(f'`{x}`' for x in runs[:20])}", ""]
    return "\n".join(lines)


def _num(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def offline_markdown(ev: Mapping[str, Any]) -> list[str]:
    """The lines of a proposal's offline evidence (a night of the search), for people.

    Example:
        >>> ev = {"confirmation": {"n": 150, "parent_mean": 0.6, "candidate_mean": 0.7,
        ...       "wins": 20, "losses": 5, "ties": 125, "p_value": 0.002, "diff_mean": 0.1,
        ...       "ci_low": 0.04, "ci_high": 0.16, "alpha": 0.05}}
        >>> line = offline_markdown(ev)[2]
        >>> line[:60]
        '- confirmation: candidate 0.700 vs parent 0.600 on 150 items'
        >>> line[60:120]
        '; 20 wins, 5 losses, 125 ties; one-sided sign test p = 0.002'
        >>> line[120:]
        ' (alpha 0.05); difference +0.100, 95% CI [+0.040, +0.160]'
    """
    lines = ["**Offline evidence** (replayed items)", ""]
    c = ev.get("confirmation") or {}
    if c:
        lines.append(
            f"- confirmation: candidate {_num(c.get('candidate_mean'))} vs parent "
            f"{_num(c.get('parent_mean'))} on {c.get('n', 0)} items; {c.get('wins', 0)} wins, "
            f"{c.get('losses', 0)} losses, {c.get('ties', 0)} ties; one-sided sign test "
            f"p = {_num(c.get('p_value'), '.3g')} (alpha {_num(c.get('alpha'), 'g')}); "
            f"difference {_num(c.get('diff_mean'), '+.3f')}, 95% CI "
            f"[{_num(c.get('ci_low'), '+.3f')}, {_num(c.get('ci_high'), '+.3f')}]"
        )
    s = ev.get("selection") or {}
    if s:
        lines.append(
            f"- selection: winner {_num(s.get('winner_mean'))} vs parent "
            f"{_num(s.get('parent_mean'))} on {s.get('n', 0)} items"
        )
    pools = ev.get("pools") or {}
    if pools:
        lines.append(
            "- pools (items got of wanted): "
            + ", ".join(
                f"{name} {p.get('got')}/{p.get('wanted')} in {p.get('runs')} run(s)"
                for name, p in pools.items()
            )
        )
    budgets = ev.get("budgets") or {}
    if budgets:
        lines.append(
            f"- budgets used: {budgets.get('task_calls', 0)} task-model call(s) of "
            f"{budgets.get('task_call_budget') or 'unlimited'}, "
            f"{budgets.get('optimizer_calls', 0)} optimizer call(s) of "
            f"{budgets.get('optimizer_call_budget') or 'unlimited'}"
            + (f", ${budgets['usd']:.4f}" if budgets.get("usd") else "")
        )
    dropped = ev.get("dropped") or {}
    if dropped:
        lines.append(
            "- dropped before evaluation: "
            + ", ".join(f"{n} {why}" for why, n in sorted(dropped.items()))
        )
    if ev.get("stop_reason"):
        lines.append(f"- stopped: {ev['stop_reason']}")
    cands = ev.get("candidates") or []
    if cands:
        lines += ["", "| candidate | generator | selection score | items |", "|---|---|---|---|"]
        for cand in cands:
            lines.append(
                f"| `{cand.get('candidate_id')}` | {cand.get('generator')} | "
                f"{_num(cand.get('selection_score'))} | {cand.get('n_items', '-')} |"
            )
    return [*lines, ""]

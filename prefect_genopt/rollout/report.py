"""What ``genopt rollout status`` and the canary flow's artifact show.

:func:`rollout_status` gathers the pointer, a fresh measurement of both arms
(read-only: nothing is decided), the last decision and the recent history;
:func:`text` and :func:`markdown` render it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prefect_genopt.rollout.analysis import ArmStats
from prefect_genopt.rollout.controller import get_state, measure
from prefect_genopt.warehouse import Warehouse, as_warehouse

__all__ = ["rollout_status", "text", "markdown"]


def _arm(stats: ArmStats) -> dict[str, Any]:
    lo, hi = stats.interval()
    ok = stats.n > 0
    return {
        "n": stats.n,
        "mean": stats.mean if ok else None,
        "ci95": [lo, hi] if ok and math.isfinite(hi) else None,
    }


def rollout_status(
    pipeline: str, warehouse: Warehouse | str | Path | None = None
) -> dict[str, Any]:
    """The pipeline's rollout as plain data (JSON-ready)."""
    state = get_state(pipeline)
    wh = as_warehouse(warehouse)
    out: dict[str, Any] = {"pipeline": pipeline, "state": state.model_dump(mode="json")}
    if state.active:
        plan = state.get_plan()
        a = measure(wh, state).assess(plan)
        out["plan"] = plan.describe()
        out["kpi"] = plan.kpi
        out["arms"] = {"stable": _arm(a.stable), "canary": _arm(a.canary)}
        out["verdict_now"] = a.verdict
        out["verdict_reason"] = a.reason
        out["step_of"] = f"{state.step + 1} of {len(plan.steps)}"
    rollout_id = state.rollout_id or state.last_rollout_id
    out["events"] = (
        wh.sql(
            "SELECT created_at, kind, status, weight, actor, reason FROM rollout_events "
            "WHERE rollout_id = ? OR (rollout_id IS NULL AND pipeline = ?) "
            "ORDER BY created_at DESC LIMIT 10",
            [rollout_id, pipeline],
        )
        if rollout_id
        else []
    )
    return out


def _num(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def text(status: dict[str, Any]) -> str:
    """Plain text for the terminal."""
    s = status["state"]
    lines = [f"pipeline {status['pipeline']}: {s['status']} (revision {s['revision']})"]
    lines.append(f"  stable  {s['stable'] or '(code defaults)'}")
    if s["pinned"]:
        lines.append(f"  PINNED  every item uses {s['pinned']} (`genopt rollout unpin` to undo)")
    if s["status"] != "idle":
        lines.append(f"  canary  {s['canary']}  weight {s['weight']:.0%}  step {status['step_of']}")
        lines.append(f"  rollout {s['rollout_id']}  plan: {status['plan']}")
        for arm in ("stable", "canary"):
            a = status["arms"][arm]
            ci = a["ci95"]
            ci_txt = f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""
            lines.append(
                f"  {status['kpi']} {arm:7s} n={a['n']:<6d} mean {_num(a['mean'])}{ci_txt}"
            )
        lines.append(f"  now: {status['verdict_now']}: {status['verdict_reason']}")
        lines.append(
            f"  checks {s['checks']}, failed {s['failed_checks']}, "
            f"without a verdict {s['inconclusive_checks']}"
        )
    elif s.get("last_rollout_id"):
        lines.append(f"  last rollout {s['last_rollout_id']}: {s['last_outcome']}")
    if s.get("last_decision"):
        lines.append(f"  last decision: {s['last_decision']}: {s['last_reason']}")
    if status["events"]:
        lines.append("  history:")
        for e in status["events"]:
            lines.append(
                f"    {e['created_at']:%Y-%m-%d %H:%M:%S}  {e['kind']:8s} {e['actor'] or ''}"
            )
    return "\n".join(lines)


def markdown(status: dict[str, Any]) -> str:
    """Markdown for the canary flow's artifact in the Prefect UI."""
    s = status["state"]
    md = [f"# Rollout of `{status['pipeline']}`: {s['status']}", ""]
    md.append(f"- stable: `{s['stable'] or 'code defaults'}`")
    if s["pinned"]:
        md.append(f"- **pinned**: every item uses `{s['pinned']}`")
    if s["status"] != "idle":
        md.append(f"- canary: `{s['canary']}` at **{s['weight']:.0%}** (step {status['step_of']})")
        md.append(f"- plan: {status['plan']}")
        md += ["", f"| arm | n | {status['kpi']} | 95% interval |", "|---|---:|---:|---|"]
        for arm in ("stable", "canary"):
            a = status["arms"][arm]
            ci = a["ci95"]
            ci_txt = f"{ci[0]:.4g} .. {ci[1]:.4g}" if ci else "-"
            md.append(f"| {arm} | {a['n']} | {_num(a['mean'])} | {ci_txt} |")
        md += ["", f"Now: **{status['verdict_now']}**: {status['verdict_reason']}"]
    if s.get("last_decision"):
        md += ["", f"Last decision: **{s['last_decision']}**: {s['last_reason']}"]
    if status["events"]:
        md += ["", "| when | event | by | why |", "|---|---|---|---|"]
        for e in status["events"]:
            why = (e["reason"] or "").replace("|", "/")[:300]
            when = f"{e['created_at']:%Y-%m-%d %H:%M:%S}"
            md.append(f"| {when} | {e['kind']} | {e['actor'] or ''} | {why} |")
    return "\n".join(md) + "\n"

"""What ``genopt report`` shows, read from the warehouse as plain, JSON-ready data.

One function per section; :func:`report_data` gathers them for one pipeline and a window
of days. Everything comes from the warehouse's tables and views (``kpi_by_param_set_day``,
``run_summary``) and :func:`~prefect_genopt.proposals.list_proposals`; lineage follows each
param set's first proposal (not the ``param_set_lineage`` view: see :func:`_lineage`);
the span trees of the trace view are in :mod:`prefect_genopt.report.traces`. Nothing here
calls the Prefect API: the report shows what the warehouse recorded.

The command checks the pipeline name first (``cli._checks.require_pipeline``); here an
unknown one only gives empty sections.

Example:
    >>> import tempfile, pathlib
    >>> from prefect_genopt.warehouse import Warehouse
    >>> wh = Warehouse(pathlib.Path(tempfile.mkdtemp()) / "w.duckdb")
    >>> data = report_data(wh, "triage", days=7)
    >>> data["days"], data["kpis"], data["traces"]
    (7, [], [])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson

from prefect_genopt.proposals import list_proposals
from prefect_genopt.warehouse import Warehouse
from prefect_genopt.warehouse.schema import utcnow

__all__ = [
    "interval",
    "kpi_series",
    "marks",
    "rollouts",
    "proposals",
    "nights",
    "usage",
    "report_data",
    "MAX_KPIS",
    "MAX_PROPOSALS",
    "MAX_ROLLOUTS",
    "MAX_NIGHTS",
]

#: At most this many KPIs get a chart (the most measured first).
MAX_KPIS = 4
#: Proposals listed (newest first).
MAX_PROPOSALS = 100
#: Rollouts shown (newest first).
MAX_ROLLOUTS = 10
#: Optimizer nights shown (newest first).
MAX_NIGHTS = 10
#: z of a two-sided 95% normal interval.
Z95 = 1.959964
#: Rollout events that mark the KPI chart (the checks that only continue do not).
MARK_KINDS = ("started", "promote", "abort", "withdraw", "pin", "unpin", "pause", "resume")


def _parsed(v: Any) -> Any:
    """A JSON column of :func:`~prefect_genopt.proposals.list_proposals`'s rows (text)."""
    return orjson.loads(v) if isinstance(v, str) else v


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else (str(v) if v is not None else None)


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def interval(
    mean: float | None,
    sd: float | None,
    n: int,
    bounds: tuple[float | None, float | None] = (None, None),
) -> list[float] | None:
    """The normal 95% interval of a mean, ``None`` below two values; kept within
    ``bounds`` (the smallest and largest value seen: a mean cannot leave them).

    Example:
        >>> interval(0.5, 0.1, 100)
        [0.48040036, 0.51959964]
        >>> interval(0.75, 0.5, 4, bounds=(0.0, 1.0))
        [0.260009, 1.0]
        >>> interval(0.5, None, 1) is None
        True
    """
    if mean is None or sd is None or n < 2 or not math.isfinite(sd):
        return None
    half = Z95 * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if bounds[0] is not None:
        lo = max(lo, bounds[0])
    if bounds[1] is not None:
        hi = min(hi, bounds[1])
    return [round(lo, 8), round(hi, 8)]


def kpi_series(wh: Warehouse, pipeline: str, since: datetime) -> list[dict[str, Any]]:
    """Per KPI, the daily mean of each param set with its 95% interval.

    Both arms of a param set are pooled (the view ``kpi_by_param_set_day`` splits them):
    the pooled variance is rebuilt from each group's ``n``, ``mean`` and ``stddev``.
    """
    rows = wh.sql(
        """
        SELECT kpi, param_set_id, day, n, mean, lo, hi,
               CASE WHEN n > 1 THEN sqrt(greatest(ss - n * mean * mean, 0) / (n - 1)) END AS sd
        FROM (
            SELECT kpi, param_set_id, day, sum(n) AS n, min(min) AS lo, max(max) AS hi,
                   sum(n * mean) / sum(n) AS mean,
                   sum((n - 1) * coalesce(stddev, 0) * coalesce(stddev, 0) + n * mean * mean)
                       AS ss
            FROM kpi_by_param_set_day
            WHERE pipeline = ? AND day >= CAST(? AS DATE)
            GROUP BY kpi, param_set_id, day
        )
        ORDER BY kpi, param_set_id, day
        """,
        [pipeline, since],
    )
    by_kpi: dict[str, dict[str, list[dict[str, Any]]]] = {}
    totals: dict[str, int] = {}
    for r in rows:
        n = int(r["n"])
        totals[r["kpi"]] = totals.get(r["kpi"], 0) + n
        mean = _finite(r["mean"])
        by_kpi.setdefault(r["kpi"], {}).setdefault(r["param_set_id"] or "unknown", []).append(
            {
                "day": _iso(r["day"]),
                "n": n,
                "mean": mean,
                "ci": interval(mean, r["sd"], n, bounds=(r["lo"], r["hi"])),
            }
        )
    chosen = sorted(totals, key=lambda k: (-totals[k], k))[:MAX_KPIS]
    return [
        {
            "kpi": k,
            "n": totals[k],
            "param_sets": [{"param_set_id": p, "days": d} for p, d in by_kpi[k].items()],
        }
        for k in chosen
    ]


def marks(wh: Warehouse, pipeline: str, since: datetime) -> list[dict[str, Any]]:
    """The moments the KPI chart marks: proposals made, rollouts started, promoted,
    rolled back, paused, pinned (oldest first)."""
    rows = wh.sql(
        f"""
        SELECT created_at, 'proposal' AS kind, proposal_id AS ref, status AS detail
        FROM proposals WHERE pipeline = ? AND created_at >= ?
        UNION ALL
        SELECT created_at, kind, coalesce(rollout_id, pinned_param_set_id),
               coalesce(pinned_param_set_id, canary_param_set_id)
        FROM rollout_events
        WHERE pipeline = ? AND created_at >= ?
          AND kind IN ({", ".join(f"'{k}'" for k in MARK_KINDS)})
        ORDER BY created_at
        """,
        [pipeline, since, pipeline, since],
    )
    return [
        {"at": _iso(r["created_at"]), "kind": r["kind"], "ref": r["ref"], "detail": r["detail"]}
        for r in rows
    ]


def rollouts(wh: Warehouse, pipeline: str, since: datetime) -> list[dict[str, Any]]:
    """Each rollout of the window (newest first): its checks (both arms' KPI with
    intervals, the weight, the decision) and its events."""
    heads = wh.sql(
        "SELECT rollout_id, created_at, proposal_id, stable_param_set_id, canary_param_set_id, "
        "plan, actor, reason, status, status_reason, status_at FROM rollouts "
        "WHERE pipeline = ? AND (created_at >= ? OR status_at >= ?) "
        "ORDER BY created_at DESC LIMIT ?",
        [pipeline, since, since, MAX_ROLLOUTS],
        json=True,
    )
    if not heads:
        return []
    ids = [h["rollout_id"] for h in heads]
    checks = wh.sql(
        "SELECT rollout_id, created_at, step, weight, kpi, direction, verdict, decision, reason, "
        "applied, n_stable, n_canary, mean_stable, mean_canary, ci_stable, ci_canary, effect, "
        "relative_effect, failed_checks FROM rollout_analyses "
        "WHERE rollout_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY created_at",
        [ids],
        json=True,
    )
    events = wh.sql(
        "SELECT rollout_id, created_at, kind, status, step, weight, actor, reason "
        "FROM rollout_events WHERE rollout_id IN (SELECT unnest(?::VARCHAR[])) "
        "ORDER BY created_at",
        [ids],
    )
    # the rollout's status is its latest event's, as `genopt rollout status` says
    out = []
    for h in heads:
        rid = h["rollout_id"]
        evs = [{**e, "created_at": _iso(e["created_at"])} for e in events if e["rollout_id"] == rid]
        latest = evs[-1]["status"] if evs else None
        out.append(
            {
                **h,
                "created_at": _iso(h["created_at"]),
                "status_at": _iso(h["status_at"]),
                "status": latest or h["status"],
                "plan": h["plan"],
                "checks": [
                    {
                        **{k: c[k] for k in c if k not in ("ci_stable", "ci_canary")},
                        "created_at": _iso(c["created_at"]),
                        "mean_stable": _finite(c["mean_stable"]),
                        "mean_canary": _finite(c["mean_canary"]),
                        "ci_stable": c["ci_stable"],
                        "ci_canary": c["ci_canary"],
                        "effect": _finite(c["effect"]),
                        "relative_effect": _finite(c["relative_effect"]),
                    }
                    for c in checks
                    if c["rollout_id"] == rid
                ],
                "events": evs,
            }
        )
    return out


def proposals(wh: Warehouse, pipeline: str, since: datetime) -> list[dict[str, Any]]:
    """Proposals of the window (newest first) with their diff, offline evidence, replay
    gate, latest rating and lineage (the param sets they descend from)."""
    rows = [
        p
        for p in list_proposals(wh, pipeline, limit=MAX_PROPOSALS)
        if p["created_at"] is None or p["created_at"] >= since
    ]
    if not rows:
        return []
    ids = [p["proposal_id"] for p in rows]
    ratings = {
        r["proposal_id"]: r
        for r in wh.sql(
            "SELECT proposal_id, source, outcome, effect, relative_effect, n_stable, "
            "n_candidate, created_at FROM proposal_ratings "
            "WHERE proposal_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY created_at",
            [ids],
        )
    }
    gates = {
        g["proposal_id"]: g
        for g in wh.sql(
            "SELECT proposal_id, outcome, reason, n_items, stable_mean, candidate_mean, effect "
            "FROM replay_gates WHERE proposal_id IN (SELECT unnest(?::VARCHAR[])) "
            "ORDER BY created_at",
            [ids],
        )
    }
    origins = _origins(wh, pipeline)
    out = []
    for p in rows:
        cand = p["candidate_param_set_id"]
        rating, gate = ratings.get(p["proposal_id"]), gates.get(p["proposal_id"])
        out.append(
            {
                "proposal_id": p["proposal_id"],
                "created_at": _iso(p["created_at"]),
                "status": p["status"],
                "status_reason": p["status_reason"],
                "optimizer": p["optimizer"],
                "night_id": p.get("night_id"),
                "parent_param_set_id": p["parent_param_set_id"],
                "candidate_param_set_id": cand,
                "diff": _parsed(p["diff"]),
                "reasoning": p["reasoning"],
                "kpi": p["kpi"],
                "direction": p["direction"],
                "evidence_kpi_mean": _finite(p["evidence_kpi_mean"]),
                "evidence_units": p["evidence_units"],
                "offline_evidence": _offline(_parsed(p.get("offline_evidence"))),
                "gate": gate,
                "rating": {**rating, "created_at": _iso(rating["created_at"])} if rating else None,
                "lineage": _lineage(p, origins),
                "model": p["model"],
                "input_tokens": p["input_tokens"],
                "output_tokens": p["output_tokens"],
                "cost_usd": _finite(p["cost_usd"]),
            }
        )
    return out


def _origins(wh: Warehouse, pipeline: str) -> dict[str, tuple[str, str]]:
    """Each proposed param set's origin: ``candidate -> (parent, proposal_id)`` of the
    first proposal that made it."""
    rows = wh.sql(
        "SELECT candidate_param_set_id AS cand, "
        "arg_min(parent_param_set_id, created_at) AS parent, "
        "arg_min(proposal_id, created_at) AS proposal_id FROM proposals "
        "WHERE pipeline = ? AND candidate_param_set_id IS NOT NULL GROUP BY 1",
        [pipeline],
    )
    return {r["cand"]: (r["parent"], r["proposal_id"]) for r in rows}


def _lineage(
    p: dict[str, Any], origins: dict[str, tuple[str, str]], limit: int = 20
) -> list[dict[str, Any]]:
    """A proposal's line of ancestors, nearest first: its parent (depth 1), then the
    parent's origin, and so on.

    It starts at the proposal itself (its own parent, depth 1), then follows each
    ancestor's origin (its first proposal), visiting a param set once, as the
    ``param_set_lineage`` view does since schema v11 (the view starts at a param set's
    origin, not at one proposal of it).

    Example:
        >>> origins = {"b": ("a", "p1"), "a": ("b", "p0")}  # a cycle
        >>> p = {"proposal_id": "p2", "parent_param_set_id": "b", "candidate_param_set_id": "c"}
        >>> [(x["depth"], x["ancestor_param_set_id"], x["proposal_id"])
        ...  for x in _lineage(p, origins)]
        [(1, 'b', 'p2'), (2, 'a', 'p1')]
    """
    out: list[dict[str, Any]] = []
    current, via = p["parent_param_set_id"], p["proposal_id"]
    seen = {p["candidate_param_set_id"]}
    while current and current not in seen and len(out) < limit:
        out.append({"depth": len(out) + 1, "ancestor_param_set_id": current, "proposal_id": via})
        seen.add(current)
        current, via = origins.get(current, (None, None))
    return out


def _offline(ev: Any) -> dict[str, Any] | None:
    """The parts of a night's offline evidence a reader compares (not the budgets' detail)."""
    if not isinstance(ev, dict):
        return None
    keep = ("night_id", "kpi", "direction", "winner", "selection", "confirmation", "stop_reason")
    return {k: ev.get(k) for k in keep if ev.get(k) is not None}


def nights(wh: Warehouse, pipeline: str, since: datetime) -> list[dict[str, Any]]:
    """The optimizer's nights (newest first): each candidate's mean score per pool
    (``selection``, ``confirmation``) from ``candidate_scores``, and the night's
    tokens and cost from its proposal row."""
    heads = wh.sql(
        "SELECT night_id, min(created_at) AS first_at, any_value(kpi) AS kpi, "
        "any_value(proposal_id) AS proposal_id FROM candidate_scores "
        "WHERE pipeline = ? AND created_at >= ? GROUP BY night_id ORDER BY first_at DESC LIMIT ?",
        [pipeline, since, MAX_NIGHTS],
    )
    if not heads:
        return []
    ids = [h["night_id"] for h in heads]
    scores = wh.sql(
        "SELECT night_id, candidate_id, any_value(parent_id) AS parent_id, "
        "any_value(generator) AS generator, pool, count(score) AS n, avg(score) AS mean "
        "FROM candidate_scores WHERE night_id IN (SELECT unnest(?::VARCHAR[])) "
        "GROUP BY night_id, candidate_id, pool ORDER BY night_id, candidate_id, pool",
        [ids],
    )
    props = {
        p["night_id"]: p
        for p in wh.sql(
            "SELECT night_id, proposal_id, status, input_tokens, output_tokens, cost_usd, "
            "llm_seconds, offline_evidence FROM proposals "
            "WHERE night_id IN (SELECT unnest(?::VARCHAR[]))",
            [ids],
            json=True,
        )
    }
    out = []
    for h in heads:
        cands: dict[str, dict[str, Any]] = {}
        for s in scores:
            if s["night_id"] != h["night_id"]:
                continue
            c = cands.setdefault(
                s["candidate_id"],
                {
                    "candidate_id": s["candidate_id"],
                    "generator": s["generator"],
                    "parent": s["candidate_id"] == s["parent_id"],
                    "selection": None,
                    "confirmation": None,
                },
            )
            c[s["pool"]] = {"n": s["n"], "mean": _finite(s["mean"])}
        p = props.get(h["night_id"]) or {}
        budgets = (p.get("offline_evidence") or {}).get("budgets") or {}
        out.append(
            {
                "night_id": h["night_id"],
                "at": _iso(h["first_at"]),
                "kpi": h["kpi"],
                "proposal_id": p.get("proposal_id") or h["proposal_id"],
                "status": p.get("status"),
                "input_tokens": p.get("input_tokens"),
                "output_tokens": p.get("output_tokens"),
                "optimizer_tokens": budgets.get("optimizer_tokens"),
                "cost_usd": _finite(p.get("cost_usd")),
                "task_calls": budgets.get("task_calls"),
                "candidates": list(cands.values()),
            }
        )
    return out


def usage(wh: Warehouse, pipeline: str, since: datetime) -> list[dict[str, Any]]:
    """LLM calls, tokens, cost and errors per day and model (the pipeline's own calls;
    the optimizer's are in its proposals). The view ``llm_usage`` has no day, so this
    groups the same columns by day."""
    rows = wh.sql(
        """
        SELECT CAST(date_trunc('day', start_time) AS DATE) AS day,
               coalesce(llm_model, 'unknown') AS model, count(*) AS calls,
               sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
               sum(cost_usd) AS cost_usd,
               count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls,
               count(*) FILTER (WHERE status = 'ERROR') AS errors
        FROM spans WHERE run_type = 'llm' AND pipeline = ? AND start_time >= ?
        GROUP BY ALL ORDER BY day, model
        """,
        [pipeline, since],
    )
    return [{**r, "day": _iso(r["day"]), "cost_usd": _finite(r["cost_usd"])} for r in rows]


def report_data(
    wh: Warehouse,
    pipeline: str,
    *,
    days: int = 30,
    traces: int = 25,
    now: datetime | None = None,
    progress: Callable[[str, int, int], object] | None = None,
) -> dict[str, Any]:
    """Every section of the report of ``pipeline`` over the last ``days`` days, with the
    last ``traces`` runs in the trace view.

    Args:
        wh: The warehouse.
        pipeline: The pipeline's name.
        days: The window.
        traces: Runs in the trace view.
        now: The window's end (default: now, UTC).
        progress: Called with ``(section, sections done, sections)`` as each section is read.
    """
    from prefect_genopt.report.traces import recent_traces

    end = now or utcnow()
    since = end - timedelta(days=days)
    readers: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "kpis": lambda: kpi_series(wh, pipeline, since),
        "marks": lambda: marks(wh, pipeline, since),
        "rollouts": lambda: rollouts(wh, pipeline, since),
        "proposals": lambda: proposals(wh, pipeline, since),
        "nights": lambda: nights(wh, pipeline, since),
        "traces": lambda: recent_traces(wh, pipeline, since, traces),
        "usage": lambda: usage(wh, pipeline, since),
    }
    out: dict[str, Any] = {
        "pipeline": pipeline,
        "generated_at": _iso(end),
        "since": _iso(since),
        "days": days,
    }
    for i, (name, read) in enumerate(readers.items()):
        out[name] = read()
        if progress is not None:
            progress(name, i + 1, len(readers))
    return out

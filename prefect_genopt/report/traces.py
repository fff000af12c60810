"""The trace view's data: the last runs of a pipeline with their spans.

A run (from ``run_summary``: status, param set, arm, tasks, LLM calls, tokens, cost,
KPIs) carries its spans as a flat list with parent ids; the page builds the tree
(flow -> tasks -> LLM calls). Each span keeps what a Langfuse or Phoenix trace page shows:
inputs and output (an LLM call's messages and completion), params read, arm, item, timing,
model, tokens, cost and error. Values were redacted and truncated at ingest; the report
cuts them again to :data:`MAX_VALUE_CHARS` so that a report of many runs stays small.

Example:
    >>> clip("x" * 10, 4)
    'xxxx… [6 more characters]'
    >>> clip(None, 4) is None
    True
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect_genopt.warehouse import Warehouse

__all__ = ["recent_traces", "clip", "MAX_VALUE_CHARS", "MAX_SPANS_PER_RUN"]

#: Longest inputs/output/error text a span shows in the report.
MAX_VALUE_CHARS = 2000
#: Spans shown per run (the earliest ones; the run says how many it had).
MAX_SPANS_PER_RUN = 200


def clip(text: str | None, limit: int = MAX_VALUE_CHARS) -> str | None:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters]"


def _ms(start: datetime | None, t: datetime | None) -> float | None:
    if start is None or t is None:
        return None
    return round((t - start).total_seconds() * 1000, 3)


def recent_traces(
    wh: Warehouse, pipeline: str, since: datetime, limit: int
) -> list[dict[str, Any]]:
    """The last ``limit`` runs of ``pipeline`` started since ``since`` (newest first),
    each with its spans (``run_start``/``run_end`` bookkeeping spans left out)."""
    if limit <= 0:
        return []
    runs = wh.sql(
        "SELECT s.run_id, s.flow_name, s.param_set_id, s.arm, s.status, s.start_time, "
        "s.duration_s, s.tasks, s.llm_calls, s.llm_tokens, s.llm_cost_usd, s.kpis, "
        "r.status_message, r.routing_source, r.genopt_errors "
        "FROM run_summary s JOIN runs r USING (run_id) "
        "WHERE s.pipeline = ? AND s.start_time >= ? "
        "ORDER BY s.start_time DESC, s.run_id LIMIT ?",
        [pipeline, since, limit],
        json=True,
    )
    if not runs:
        return []
    spans = wh.sql(
        f"""
        SELECT run_id, span_id, parent_span_id, run_type, name, task_name, start_time,
               duration_ms, status, coalesce(error, status_message) AS error, arm, item_key,
               inputs, output, params_read, llm_model, input_tokens, output_tokens, cost_usd
        FROM (
            SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY start_time, span_id) AS k
            FROM spans
            WHERE run_id IN (SELECT unnest(?::VARCHAR[]))
              AND run_type NOT IN ('run_start', 'run_end')
        )
        WHERE k <= {MAX_SPANS_PER_RUN}
        ORDER BY run_id, start_time, span_id
        """,
        [[r["run_id"] for r in runs]],
        json=True,
    )
    by_run: dict[str, list[dict[str, Any]]] = {}
    for s in spans:
        by_run.setdefault(s["run_id"], []).append(s)
    out = []
    for r in runs:
        start = r["start_time"]
        out.append(
            {
                "run_id": r["run_id"],
                "flow_name": r["flow_name"],
                "param_set_id": r["param_set_id"],
                "arm": r["arm"],
                "status": r["status"],
                "status_message": clip(r["status_message"]),
                "routing_source": r["routing_source"],
                "genopt_errors": r["genopt_errors"],
                "start_time": start.isoformat() if start else None,
                "duration_s": r["duration_s"],
                "tasks": r["tasks"],
                "llm_calls": r["llm_calls"],
                "llm_tokens": r["llm_tokens"],
                "llm_cost_usd": r["llm_cost_usd"],
                "kpis": r["kpis"],
                "spans": [_span(s, start) for s in by_run.get(r["run_id"], [])],
            }
        )
    return out


def _span(s: dict[str, Any], run_start: datetime | None) -> dict[str, Any]:
    return {
        "span_id": s["span_id"],
        "parent_span_id": s["parent_span_id"],
        "type": s["run_type"],
        "name": s["task_name"] or s["name"],
        "offset_ms": _ms(run_start, s["start_time"]),
        "duration_ms": s["duration_ms"],
        "status": s["status"],
        "error": clip(s["error"]),
        "arm": s["arm"],
        "item_key": s["item_key"],
        "inputs": clip(s["inputs"]),
        "output": clip(s["output"]),
        "params_read": s["params_read"],
        "model": s["llm_model"],
        "input_tokens": s["input_tokens"],
        "output_tokens": s["output_tokens"],
        "cost_usd": s["cost_usd"],
    }

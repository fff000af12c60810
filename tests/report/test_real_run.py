"""The report of a real pipeline run (a Prefect flow, litellm calls to a scripted model):
its trace is the flow, its tasks and their LLM calls, with messages and answers."""

from __future__ import annotations

import json
from pathlib import Path

from prefect_genopt.report import report_data
from prefect_genopt.warehouse import Warehouse


def test_real_run_trace_is_flow_tasks_llm_calls(prefect_api: str, warehouse_path: Path) -> None:
    from tests import pipelines as p

    tickets = ["refund my invoice", "the app crashes"]
    labels = p.triage(tickets)
    data = report_data(Warehouse(), "triage")
    [run] = data["traces"]
    assert run["status"] == "completed" and run["arm"] == "stable"
    spans = run["spans"]
    by_id = {s["span_id"]: s for s in spans}
    [flow] = [s for s in spans if s["type"] == "flow"]
    tasks = [s for s in spans if s["type"] == "task"]
    llm = [s for s in spans if s["type"] == "llm"]
    assert len(tasks) == len(llm) == len(tickets)
    assert all(t["parent_span_id"] == flow["span_id"] for t in tasks)
    assert all(by_id[c["parent_span_id"]]["type"] == "task" for c in llm)
    asked = sorted(json.loads(c["inputs"])[-1]["content"] for c in llm)
    assert asked == sorted(tickets)  # the messages, from the span's inputs column
    answers = sorted(json.loads(c["output"])[0] for c in llm)
    assert answers == sorted(labels)  # the completions, from its output column
    assert all("prompt" in (t["params_read"] or {}) for t in tasks)
    assert all(c["model"] == "scripted/triage" and c["duration_ms"] > 0 for c in llm)
    [kpi] = data["kpis"]
    assert kpi["kpi"] == "accuracy" and kpi["n"] == 1
    assert sum(u["calls"] for u in data["usage"]) == len(tickets)

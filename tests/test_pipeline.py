"""End to end: real Prefect flows in the session harness land in the warehouse."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from prefect import flow
from prefect.task_runners import ProcessPoolTaskRunner

import prefect_genopt as genopt
from tests import pipelines as p

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_user_flow_lands_in_warehouse(warehouse_path: Path) -> None:
    tickets = ["my invoice is wrong", "the app crashes on start"]
    labels = p.triage(tickets)
    assert len(labels) == 2

    wh = genopt.Warehouse()
    runs = wh.sql("SELECT * FROM runs")
    assert len(runs) == 1
    run = runs[0]
    assert run["pipeline"] == "triage"
    assert run["status"] == "completed"
    assert run["arm"] == "stable"
    assert run["param_set_id"] == p.TriageParams().param_set_id
    assert run["duration_s"] > 0

    tasks = wh.sql("SELECT * FROM spans WHERE run_type = 'task' ORDER BY start_time")
    assert [t["task_name"] for t in tasks] == ["classify", "classify"]
    for t, ticket in zip(tasks, tickets, strict=True):
        assert t["run_id"] == run["run_id"]  # Prefect's task spans lack it; genopt stamps it
        assert json.loads(t["inputs"]) == {"ticket": ticket}
        assert t["item_key"] == ticket
        assert json.loads(t["params_read"]) == {"prompt": p.TriageParams().prompt}
    llm = wh.sql("SELECT * FROM spans WHERE run_type = 'llm' ORDER BY start_time")
    assert len(llm) == 2
    assert {s["parent_span_id"] for s in llm} == {t["span_id"] for t in tasks}
    assert llm[0]["llm_model"] == "scripted/triage"
    assert llm[0]["llm_provider"] == "scripted"
    assert llm[0]["input_tokens"] > 0 and llm[0]["output_tokens"] == 1
    assert llm[0]["cost_usd"] is None  # unknown price is NULL, not 0

    fb = wh.sql("SELECT * FROM feedback")
    assert len(fb) == 1
    assert fb[0]["kpi"] == "accuracy" and fb[0]["value"] == 0.8
    assert fb[0]["comment"] == "two billing tickets routed to bug"
    assert fb[0]["run_id"] == run["run_id"]
    assert fb[0]["param_set_id"] == run["param_set_id"]

    pipes = wh.sql("SELECT * FROM pipelines")
    assert len(pipes) == 1 and pipes[0]["version"] == 1
    schema = json.loads(pipes[0]["schema"])
    assert schema["properties"]["threshold"]["maximum"] == 1.0
    assert schema["properties"]["prompt"]["genopt_kind"] == "prompt"
    entry = json.loads(pipes[0]["entrypoint"])
    assert entry["module"] == "tests.pipelines" and entry["function"] == "triage"

    ps = wh.sql("SELECT * FROM param_sets")
    assert json.loads(ps[0]["values"]) == p.TriageParams().values()
    summary = wh.sql("SELECT * FROM run_summary")[0]
    assert summary["tasks"] == 2 and summary["llm_calls"] == 2
    assert json.loads(summary["kpis"]) == {"accuracy": 0.8}


def test_threads_map_submit_keep_parents_and_price(warehouse_path: Path) -> None:
    p.fanout(3)
    wh = genopt.Warehouse()
    flow_span = wh.sql("SELECT span_id, run_id FROM spans WHERE run_type = 'flow'")[0]
    tasks = wh.sql("SELECT * FROM spans WHERE run_type = 'task'")
    assert len(tasks) == 7
    assert {t["parent_span_id"] for t in tasks} == {flow_span["span_id"]}
    assert {t["run_id"] for t in tasks} == {flow_span["run_id"]}
    llm = wh.sql(
        "SELECT l.*, t.task_name AS parent_task FROM spans l JOIN spans t "
        "ON l.parent_span_id = t.span_id WHERE l.run_type = 'llm'"
    )
    assert len(llm) == 7
    priced = [s for s in llm if s["llm_model"] == "gpt-4o-mini"]
    assert len(priced) == 1 and priced[0]["cost_usd"] > 0
    assert priced[0]["parent_task"] == "priced_call"
    usage = wh.sql("SELECT * FROM llm_usage WHERE model = 'gpt-4o-mini'")[0]
    assert usage["calls"] == 1 and usage["unpriced_calls"] == 0
    # the API key passed to litellm never reaches the warehouse
    assert (
        wh.sql("SELECT count(*) AS n FROM spans WHERE attributes::VARCHAR LIKE '%sk-proj%'")[0]["n"]
        == 0
    )


def test_async_tasks_keep_parents(warehouse_path: Path) -> None:
    assert asyncio.run(p.asyncpipe(4)) == 12
    wh = genopt.Warehouse()
    flow_span = wh.sql("SELECT span_id FROM spans WHERE run_type = 'flow'")[0]["span_id"]
    tasks = wh.sql("SELECT parent_span_id, output FROM spans WHERE run_type = 'task'")
    assert len(tasks) == 4
    assert {t["parent_span_id"] for t in tasks} == {flow_span}
    assert sorted(int(t["output"]) for t in tasks) == [0, 2, 4, 6]


def test_exceptions_recorded_and_redacted(warehouse_path: Path) -> None:
    with pytest.raises(ValueError):
        p.fails()
    wh = genopt.Warehouse()
    run = wh.sql("SELECT status FROM runs")[0]
    assert run["status"] == "failed"
    task = wh.sql("SELECT * FROM spans WHERE run_type = 'task'")[0]
    assert task["status"] == "ERROR"
    assert task["error"].startswith("ValueError: bad input 3")
    assert "hunter22" not in task["error"] and "[REDACTED]" in task["error"]
    assert "hunter22" not in task["events"]


def test_process_pool_runner_is_refused(warehouse_path: Path) -> None:
    @flow(task_runner=ProcessPoolTaskRunner(max_workers=1))
    @genopt.pipeline(name="procpool")
    def procpool() -> None:
        pass

    with pytest.raises(RuntimeError, match="ProcessPoolTaskRunner"):
        procpool()


def test_pipeline_above_flow_is_refused() -> None:
    with pytest.raises(TypeError, match="below @flow"):

        @genopt.pipeline(name="wrong")
        @flow
        def wrong() -> None:
            pass


def test_current_params_outside_a_run() -> None:
    with pytest.raises(RuntimeError, match="outside a pipeline run"):
        genopt.current_params()


def test_changed_schema_gets_new_version_and_old_sets_checked(warehouse_path: Path) -> None:
    class V1(genopt.Tunables):
        threshold: float = genopt.numeric(0.9, ge=0, le=1, description="cut-off")

    class V2(genopt.Tunables):
        threshold: float = genopt.numeric(0.5, ge=0, le=0.8, description="cut-off, lower cap")

    @flow(name="evolving")
    @genopt.pipeline(name="evolving", params=V1)
    def evolving_v1() -> float:
        return genopt.current_params().threshold

    @flow(name="evolving")
    @genopt.pipeline(name="evolving", params=V2)
    def evolving_v2() -> float:
        return genopt.current_params().threshold

    evolving_v1()
    evolving_v2()
    evolving_v2()
    wh = genopt.Warehouse()
    versions = wh.sql("SELECT version FROM pipelines WHERE pipeline = 'evolving' ORDER BY 1")
    assert [v["version"] for v in versions] == [1, 2]
    runs = wh.sql("SELECT schema_version, count(*) AS n FROM runs GROUP BY 1 ORDER BY 1")
    assert runs == [{"schema_version": 1, "n": 1}, {"schema_version": 2, "n": 2}]
    checks = {
        (c["param_set_id"], c["schema_version"]): c
        for c in wh.sql("SELECT * FROM param_set_checks")
    }
    old = V1().param_set_id
    assert checks[(old, 2)]["ok"] is False  # 0.9 breaks the new bound 0.8
    assert "0.9" in checks[(old, 2)]["error"]
    assert checks[(V2().param_set_id, 2)]["ok"] is True


def test_subflow_pipelines_are_runs_of_their_own(warehouse_path: Path) -> None:
    @flow(name="child")
    @genopt.pipeline(name="child", params=p.TriageParams)
    def child(ticket: str) -> str:
        return p.classify(ticket)

    @flow(name="parent")
    @genopt.pipeline(name="parent")
    def parent() -> list[str]:
        return [child("refund"), child("crash")]

    parent()
    wh = genopt.Warehouse()
    runs = {r["pipeline"]: r for r in wh.sql("SELECT * FROM runs WHERE pipeline = 'parent'")}
    children = wh.sql("SELECT * FROM runs WHERE pipeline = 'child'")
    assert len(children) == 2 and len(runs) == 1
    assert {c["trace_id"] for c in children} == {runs["parent"]["trace_id"]}  # one trace
    for c in children:
        tasks = wh.sql(
            "SELECT run_id FROM spans WHERE run_type = 'task' AND run_id = ?", [c["run_id"]]
        )
        assert len(tasks) == 1  # the subflow's task belongs to the subflow's run
    flows = wh.sql("SELECT span_id, parent_span_id, run_id FROM spans WHERE run_type = 'flow'")
    root = [f for f in flows if f["run_id"] == runs["parent"]["run_id"]][0]
    assert all(f["parent_span_id"] == root["span_id"] for f in flows if f is not root)

"""The canary and optimizer flows in the Prefect UI: the canary schedule runs only while a
rollout is running, table and link artifacts, run tags. Real flows, a real Prefect API."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

import prefect_genopt as genopt
from prefect_genopt.optimize.flow import run_tags as optimizer_tags
from prefect_genopt.rollout import FAST_PLAN, controller, schedule
from prefect_genopt.rollout.flow import canary_flow
from prefect_genopt.rollout.flow import run_tags as canary_tags
from tests.conftest import ROOT
from tests.rollout.pipelines import make_pipeline

PLAN = {**FAST_PLAN, "kpi": "ok"}


def _canary_deployment(pipeline: str, active: bool) -> UUID:
    """A deployment of the canary flow for ``pipeline``, every 10 minutes."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(canary_flow)
        return client.create_deployment(
            flow_id,
            f"canary-{pipeline}",
            parameters={"pipeline": pipeline},
            schedules=[
                DeploymentScheduleCreate(schedule=CronSchedule(cron="*/10 * * * *"), active=active)
            ],
        )


def _active(deployment_id: UUID) -> list[bool]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [s.active for s in client.read_deployment_schedules(deployment_id)]


def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flt = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(str(flow_run_id))]))
    with get_client(sync_client=True) as client:
        return {a.key: a for a in client.read_artifacts(artifact_filter=flt)}


def test_the_canary_schedule_runs_only_while_a_rollout_is_running(
    pipeline_name: str, warehouse_path: Path
) -> None:
    knob = make_pipeline(pipeline_name)
    knob(n=5, batch=0)
    dep = _canary_deployment(pipeline_name, active=False)
    other = _canary_deployment(f"{pipeline_name}-other", active=False)  # another pipeline's

    controller.start_rollout(pipeline_name, values={"quality": 0.9}, plan=PLAN, gate=False)
    assert _active(dep) == [True]
    assert _active(other) == [False]
    controller.pause(pipeline_name, "holiday")
    assert _active(dep) == [False]  # a paused rollout is not acted on by checks
    controller.resume(pipeline_name, "back")
    assert _active(dep) == [True]
    controller.abort(pipeline_name, "test over")
    assert _active(dep) == [False]

    # a schedule left on (a fresh deploy) is turned off by the first run that finds no rollout
    assert schedule.sync(pipeline_name, True) == [f"genopt-canary/canary-{pipeline_name}"]
    out = canary_flow(pipeline_name)
    assert out["decision"] == "none"
    assert _active(dep) == [False]
    assert schedule.sync(pipeline_name, False) == []  # already off: nothing changed


def test_the_canary_flow_leaves_a_table_per_arm_over_time_and_a_report_link(
    pipeline_name: str, warehouse_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_REPORT_URL", "https://reports.example.com/genopt/{pipeline}.html")
    knob = make_pipeline(pipeline_name)
    knob(n=40, batch=0)
    controller.start_rollout(pipeline_name, values={"quality": 0.9}, plan=PLAN, gate=False)
    for batch in (1, 2):
        knob(n=40, batch=batch)
        state = canary_flow(pipeline_name, return_state=True)
    out = state.result()
    run_id = state.state_details.flow_run_id
    arts = _artifacts(run_id)
    key = f"genopt-canary-{pipeline_name}-arms"
    assert set(arts) >= {f"genopt-canary-{pipeline_name}", key, f"genopt-report-{pipeline_name}"}
    assert arts[key].type == "table"
    table = arts[key].data
    table = yaml.safe_load(table) if isinstance(table, str) else table  # JSON is YAML
    rows = table if isinstance(table, list) else table["rows"]
    checks = genopt.Warehouse().sql(
        "SELECT n_stable, n_canary, decision FROM rollout_analyses WHERE pipeline = ? "
        "ORDER BY created_at",
        [pipeline_name],
    )
    assert len(rows) == len(checks) >= 1
    assert [(r["stable_n"], r["canary_n"], r["decision"]) for r in rows] == [
        (c["n_stable"], c["n_canary"], c["decision"]) for c in checks
    ]
    assert rows[-1]["decision"] == out["decision"] or out["decision"] == "wait"
    link = arts[f"genopt-report-{pipeline_name}"]
    assert link.type == "markdown"  # Prefect stores a link artifact as Markdown: [text](url)
    assert f"(https://reports.example.com/genopt/{pipeline_name}.html)" in str(link.data)
    if controller.get_state(pipeline_name).active:
        controller.abort(pipeline_name, "test over")


def test_the_optimizer_run_is_tagged_and_leaves_a_kpi_table(
    prefect_api: str, warehouse_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client

    from prefect_genopt.cli import main
    from tests.optimize import scripted

    scripted.knob([f"item-{i}" for i in range(4)])

    monkeypatch.delenv("GENOPT_REPORT_URL", raising=False)
    args = ["optimize", "knob", "--no-search", "--model", "scripted-opt/follow"]
    assert main([*args, "--response-format", "none", "--max-updates", "1"]) == 0
    (row,) = genopt.Warehouse().sql("SELECT optimizer_run_id FROM proposals")
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(row["optimizer_run_id"]))
    assert set(optimizer_tags("knob")) <= set(run.tags)
    assert "genopt-optimizer" in run.tags
    arts = _artifacts(run.id)
    assert arts["genopt-optimize-knob-kpi"].type == "table"
    assert "genopt-report-knob" not in arts  # no GENOPT_REPORT_URL: no link


def test_the_deployments_carry_the_tags_of_the_runs_started_by_hand() -> None:
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    nightly, canary = by_name["optimize-triage-nightly"], by_name["canary-triage"]
    assert set(optimizer_tags("triage")) <= set(nightly["tags"])
    assert set(canary_tags("triage")) <= set(canary["tags"])

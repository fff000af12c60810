"""deployments/prefect.yaml is a real deployment: deploy it, run it with a worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import prefect_genopt as genopt
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def _prefect(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _single_shot() -> str:
    """The nightly deployment's own optimizer settings with the search off: this test checks
    the single-shot path (one LLM update per minibatch), which ``search=False`` keeps."""
    import json

    import yaml

    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    (nightly,) = [d for d in spec["deployments"] if d["name"] == "optimize-triage-nightly"]
    return json.dumps({**nightly["parameters"]["settings"], "search": False})


def _the_example_run_is_in_the_warehouse() -> None:
    wh = genopt.Warehouse()
    runs = wh.sql("SELECT pipeline, status, tasks, kpis FROM run_summary")
    assert len(runs) == 1
    assert runs[0]["pipeline"] == "triage" and runs[0]["status"] == "completed"
    assert runs[0]["tasks"] == 8  # the deployment's parameters: n = 8
    entry = wh.sql("SELECT entrypoint FROM pipelines")[0]["entrypoint"]
    assert "flows/examples/triage.py" in entry


def test_deploy_and_run_the_example_then_the_nightly_optimizer(
    child_env: dict[str, str], warehouse_path: Path
) -> None:
    """One deploy of every deployment (each ``prefect`` command is a process of its own,
    2-4 s here): the example runs through a worker into the warehouse; then the optimizer
    deployment runs through a worker and records its outcome; its nightly schedule is a
    cron on an active deployment."""
    env = {
        **child_env,
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # the worker's flow process registers the scripted provider, as a user would their own
        "GENOPT_MODEL": "scripted-opt/follow",
        "GENOPT_MODEL_SETUP": "tests.optimize.scripted",
        "GENOPT_RESPONSE_FORMAT": "none",
    }
    assert (
        _prefect(
            "work-pool", "create", "genopt", "--type", "process", "--overwrite", env=env
        ).returncode
        == 0
    )
    deploy = _prefect(
        "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all", env=env
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    names = (
        "triage/triage-example",
        "genopt-optimize/optimize-triage-nightly",
        "genopt-canary/canary-triage",
    )
    for name in names:
        extra = ["--param", f"settings={_single_shot()}"] if name.startswith("genopt-opt") else []
        run = _prefect("deployment", "run", name, *extra, env=env)
        assert run.returncode == 0, run.stderr
        worker = _prefect("worker", "start", "--pool", "genopt", "--run-once", env=env)
        assert worker.returncode == 0, worker.stderr[-3000:]
        if name == "triage/triage-example":
            _the_example_run_is_in_the_warehouse()

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("genopt-optimize/optimize-triage-nightly")
        canary = client.read_deployment_by_name("genopt-canary/canary-triage")
        canary_runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[canary.id]))
        )
    assert [s.schedule.cron for s in dep.schedules] == ["0 2 * * *"]
    assert all(s.active for s in dep.schedules)
    # the canary check ran through the worker: no rollout is active, so it changed nothing
    assert [s.schedule.cron for s in canary.schedules] == ["*/10 * * * *"]
    ran = [r.state.type.value for r in canary_runs if r.state.type.value != "SCHEDULED"]
    assert ran == ["COMPLETED"]  # (the scheduler may have queued later ones)

    rows = genopt.Warehouse().sql("SELECT pipeline, status, model, settings FROM proposals")
    # the scripted model finds no `level` in triage's problem and asks for no change, so
    # the run tries its 3 updates (max_updates in the deployment), each a fresh minibatch
    assert len(rows) == 3
    assert {(r["pipeline"], r["model"], r["status"]) for r in rows} == {
        ("triage", "scripted-opt/follow", "no_change")
    }
    assert '"editable":["prompt"]' in rows[0]["settings"]
    # before optimizing, the nightly run harvested the example run's good tickets
    harvested = genopt.Warehouse().sql(
        "SELECT count(*) AS n, count(expires_at) AS expiring FROM experiences "
        "WHERE pipeline = 'triage' AND status = 'verified'"
    )[0]
    assert harvested["n"] > 0 and harvested["expiring"] == harvested["n"], (
        genopt.Warehouse().sql("SELECT status, reason FROM experiences"),
        genopt.Warehouse().sql("SELECT count(*) n, any_value(step) s FROM step_values"),
        genopt.Warehouse().sql("SELECT kpi, count(*) n, sum(value) ok FROM feedback GROUP BY ALL"),
    )

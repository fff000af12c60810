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


def test_deploy_and_run_the_example(child_env: dict[str, str], warehouse_path: Path) -> None:
    env = {**child_env, "PREFECT_LOGGING_LEVEL": "WARNING"}
    pool = _prefect("work-pool", "create", "genopt", "--type", "process", "--overwrite", env=env)
    assert pool.returncode == 0, pool.stderr
    deploy = _prefect(
        "--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml", "--all", env=env
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    run = _prefect("deployment", "run", "triage/triage-example", "--param", "n=4", env=env)
    assert run.returncode == 0, run.stderr
    worker = _prefect("worker", "start", "--pool", "genopt", "--run-once", env=env)
    assert worker.returncode == 0, worker.stderr[-3000:]

    wh = genopt.Warehouse()
    runs = wh.sql("SELECT pipeline, status, tasks, kpis FROM run_summary")
    assert len(runs) == 1
    assert runs[0]["pipeline"] == "triage" and runs[0]["status"] == "completed"
    assert runs[0]["tasks"] == 4
    entry = wh.sql("SELECT entrypoint FROM pipelines")[0]["entrypoint"]
    assert "flows/examples/triage.py" in entry

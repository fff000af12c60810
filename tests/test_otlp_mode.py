"""A worker without the warehouse's disk: a real pipeline in another process, in OTLP mode."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import prefect_genopt as genopt
from prefect_genopt.warehouse.receiver import Receiver

pytestmark = pytest.mark.e2e

WORKER = """
from tests.pipelines import triage
triage(["refund my invoice", "the app crashes"])
"""


def test_pipeline_run_over_otlp_lands_in_the_warehouse(
    warehouse_path: Path, child_env: dict[str, str], tmp_path: Path
) -> None:
    with Receiver(port=0, warehouse=warehouse_path, ingest_interval=0.5) as rx:
        env = {
            **child_env,
            "GENOPT_OTLP_ENDPOINT": rx.url,
            # the worker's own disk: nothing may be left there
            "GENOPT_WAREHOUSE": str(tmp_path / "worker" / "w.duckdb"),
        }
        proc = subprocess.run(
            [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    wh = genopt.Warehouse(warehouse_path)
    run = wh.sql("SELECT pipeline, status, tasks, llm_calls, kpis FROM run_summary")
    assert run == [
        {
            "pipeline": "triage",
            "status": "completed",
            "tasks": 2,
            "llm_calls": 2,
            "kpis": '{"accuracy":0.8}',
        }
    ]
    assert wh.sql("SELECT DISTINCT source FROM spans") == [{"source": "otlp"}]
    assert wh.sql("SELECT coalesce(sum(dropped), 0) AS d FROM span_drops") == [{"d": 0}]
    worker_spool = tmp_path / "worker" / "w.duckdb.spool"
    assert not worker_spool.exists() or not any(worker_spool.iterdir())

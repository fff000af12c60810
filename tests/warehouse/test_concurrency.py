"""Many processes at once, and a process killed mid-run: nothing lost, nothing twice."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import prefect_genopt as genopt
from prefect_genopt.warehouse import Ingester

pytestmark = pytest.mark.e2e

PROCESSES = 4
SPANS_PER_PROCESS = 2600
FEEDBACK_PER_PROCESS = 50

LOAD_CHILD = """
import sys
from tests.pipelines import load
load(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
"""


def test_four_processes_10k_spans_and_feedback_at_once(
    warehouse_path: Path, child_env: dict[str, str]
) -> None:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                LOAD_CHILD,
                str(SPANS_PER_PROCESS),
                f"p{i}",
                str(FEEDBACK_PER_PROCESS),
            ],
            env=child_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    ingests = 0
    deadline = time.monotonic() + 300
    while any(p.poll() is None for p in procs):  # ingest while the writers write
        Ingester().ingest()
        ingests += 1
        time.sleep(0.2)
        assert time.monotonic() < deadline, "load children took too long"
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err[-3000:]
    Ingester().ingest()

    wh = genopt.Warehouse(ingest=False)
    per_tag = wh.sql(
        """SELECT attributes->>'$."test.run_tag"' AS tag, count(*) AS n,
                  count(DISTINCT attributes->>'$."test.i"') AS distinct_i
           FROM spans WHERE name LIKE 'step-%' GROUP BY 1 ORDER BY 1"""
    )
    assert per_tag == [
        {"tag": f"p{i}", "n": SPANS_PER_PROCESS, "distinct_i": SPANS_PER_PROCESS}
        for i in range(PROCESSES)
    ]
    total = wh.sql("SELECT count(*) AS n, count(DISTINCT (trace_id, span_id)) AS d FROM spans")[0]
    assert total["n"] == total["d"] >= PROCESSES * SPANS_PER_PROCESS
    runs = wh.sql("SELECT status, count(*) AS n FROM runs GROUP BY 1")
    assert runs == [{"status": "completed", "n": PROCESSES}]
    fb = wh.sql("SELECT count(*) AS n, count(DISTINCT item_key) AS items FROM feedback")[0]
    assert fb == {"n": PROCESSES * FEEDBACK_PER_PROCESS, "items": PROCESSES * FEEDBACK_PER_PROCESS}
    assert wh.sql("SELECT coalesce(sum(dropped), 0) AS d FROM span_drops")[0]["d"] == 0
    assert wh.sql("SELECT count(*) AS n FROM spool_rejects")[0]["n"] == 0
    assert ingests >= 2


KILLED_CHILD = """
from tests.pipelines import killed
killed(3)
"""


@pytest.mark.parametrize("flush_interval", ["0", "0.2"])
def test_killed_run_still_gets_a_runs_row(
    warehouse_path: Path, child_env: dict[str, str], flush_interval: str
) -> None:
    env = {**child_env, "GENOPT_SPOOL_FLUSH_INTERVAL": flush_interval}
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD], env=env, capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    Ingester().ingest()
    wh = genopt.Warehouse(ingest=False)
    run = wh.sql("SELECT * FROM runs")
    assert len(run) == 1  # the run start is always written at once
    assert run[0]["pipeline"] == "killed"
    assert run[0]["status"] == "crashed"
    assert "exited before the run ended" in run[0]["status_message"]
    done = wh.sql("SELECT count(*) AS n FROM spans WHERE task_name = 'classify'")[0]["n"]
    if flush_interval == "0":
        assert done == 3  # every task that finished before the kill reached the spool
    # with 0.2 s, task spans queued in the last 0.2 s may be lost; the run row above is
    # what must survive, and nothing that did arrive is stored twice
    spans = wh.sql("SELECT count(*) AS n, count(DISTINCT span_id) AS d FROM spans")[0]
    assert spans["n"] == spans["d"] >= 1

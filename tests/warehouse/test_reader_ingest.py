"""Readers do not ingest on every query (issue 15, item 8): a reader loads what its own
process wrote at once, other processes' backlog only once the last ingest is older than
GENOPT_INGEST_BACKLOG_AGE and the write lock is free."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from prefect_genopt import spool
from prefect_genopt.records import row_record
from prefect_genopt.warehouse import Warehouse
from tests.conftest import ROOT

WRITER = """
import sys
from pathlib import Path
from prefect_genopt import spool
from prefect_genopt.records import row_record
body = {"pipeline": "p", "param_set_id": sys.argv[2], "values": {}, "source": "other"}
spool.append([row_record("param_sets", body)], Path(sys.argv[1]))
"""

HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _row(ps_id: str) -> dict[str, object]:
    return row_record(
        "param_sets", {"pipeline": "p", "param_set_id": ps_id, "values": {}, "source": "own"}
    )


def _ids(wh: Warehouse) -> set[str]:
    return {r["param_set_id"] for r in wh.sql("SELECT param_set_id FROM param_sets")}


def _other_process_writes(spool_dir: Path, ps_id: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", WRITER, str(spool_dir), ps_id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr


def test_reads_follow_this_process_s_own_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_INGEST_BACKLOG_AGE", "3600")  # others' backlog: never here
    wh = Warehouse(tmp_path / "w.duckdb")
    assert _ids(wh) == set()
    for i in range(3):  # the same reader, query after query
        spool.append([_row(f"ps_own_{i}")], wh.spool_dir)
        assert _ids(wh) == {f"ps_own_{j}" for j in range(i + 1)}
    with wh.reading():  # a reading block loads them once, at its start
        spool.append([_row("ps_own_3")], wh.spool_dir)
        assert "ps_own_3" not in _ids(wh)
    assert "ps_own_3" in _ids(wh)
    assert "ps_own_4" not in _ids(Warehouse(wh.path, ingest=False))  # --no-ingest: never
    spool.append([_row("ps_own_4")], wh.spool_dir)
    assert "ps_own_4" not in _ids(Warehouse(wh.path, ingest=False))
    assert "ps_own_4" in _ids(Warehouse(wh.path))


def test_another_process_s_fresh_backlog_waits_for_the_backlog_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    age = 3.0
    monkeypatch.setenv("GENOPT_INGEST_BACKLOG_AGE", str(age))
    wh = Warehouse(tmp_path / "w.duckdb")
    spool.append([_row("ps_own")], wh.spool_dir)
    assert _ids(wh) == {"ps_own"}  # an ingest just now
    ingested = time.monotonic()
    _other_process_writes(wh.spool_dir, "ps_other")
    seen_early = "ps_other" in _ids(wh)
    early = time.monotonic() - ingested
    if early < age:  # the child took less than the window to start and write
        assert not seen_early
    # once the last ingest is older than the backlog age, a query loads the backlog
    time.sleep(max(0.0, age + 0.5 - (time.monotonic() - ingested)))
    assert _ids(wh) == {"ps_own", "ps_other"}


def test_an_old_backlog_is_left_when_the_lock_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_INGEST_BACKLOG_AGE", "0")
    monkeypatch.setenv("GENOPT_LOCK_TIMEOUT", "60")
    wh = Warehouse(tmp_path / "w.duckdb")
    assert _ids(wh) == set()
    _other_process_writes(wh.spool_dir, "ps_other")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(wh.path), "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        t0 = time.monotonic()
        assert _ids(wh) == set()  # another reader holds the file: no ingest, no wait
        assert time.monotonic() - t0 < 5.0
    finally:
        holder.kill()
        holder.wait()
    assert _ids(wh) == {"ps_other"}  # the lock is free again

"""The ingester: atomic, idempotent, and nothing lost (bad lines, dead writers, kills, locks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import duckdb
import pytest

import prefect_genopt as genopt
from prefect_genopt import spool
from prefect_genopt.records import HOST
from prefect_genopt.warehouse import Ingester, WarehouseBusyError


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _span(i: int, trace: str, run_id: str | None = None) -> dict:
    return {
        "k": "span",
        "trace_id": trace,
        "span_id": f"{i + 1:016x}",
        "parent_span_id": None,
        "name": f"step-{i}",
        "span_kind": "INTERNAL",
        "start_ns": time.time_ns(),
        "end_ns": time.time_ns() + 1000,
        "status": "OK",
        "run_type": "other",
        "run_id": run_id,
        "attributes": {"i": i},
        "events": [],
        "resource": {},
        "source": "spool",
    }


def _feedback(i: int, run_id: str) -> dict:
    return {
        "k": "feedback",
        "feedback_id": f"fb{i:030d}",
        "run_id": run_id,
        "kpi": "ok",
        "value": 1.0,
        "source": "code",
        "idempotency_key": str(i),
        "created_ns": time.time_ns(),
        "verified": True,
    }


def _spool_file(spool_dir: Path, pid: int, lines: list[bytes], sealed: bool = True) -> Path:
    spool_dir.mkdir(parents=True, exist_ok=True)
    suffix = ".jsonl" if sealed else ".open"
    path = spool_dir / f"{HOST}__{pid}__{uuid.uuid4().hex[:12]}{suffix}"
    path.write_bytes(b"".join(lines))
    return path


def _count(path: Path, table: str) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


def test_loading_twice_stores_once(warehouse_path: Path) -> None:
    trace = uuid.uuid4().hex
    writer = spool.SpoolWriter(warehouse_path.with_name(warehouse_path.name + ".spool"))
    writer.append([_span(i, trace) for i in range(500)])
    writer.close()
    first = Ingester().ingest()
    assert first.spans == 500
    # the same spans arrive again (an OTLP retry, a copied file): stored once
    writer = spool.SpoolWriter(writer.directory)
    writer.append([_span(i, trace) for i in range(500)])
    writer.close()
    second = Ingester().ingest()
    assert second.records == 500 and second.spans == 0
    assert _count(warehouse_path, "spans") == 500
    assert list(writer.directory.glob("*.jsonl")) == []  # fully loaded files are removed


def test_malformed_lines_are_set_aside_with_reasons(warehouse_path: Path) -> None:
    import orjson

    trace = uuid.uuid4().hex
    spool_dir = warehouse_path.with_name(warehouse_path.name + ".spool")
    good = [orjson.dumps(_span(i, trace)) + b"\n" for i in range(3)]
    bad = [
        b"{not json\n",
        orjson.dumps({"k": "mystery"}) + b"\n",
        orjson.dumps({**_span(9, trace), "start_ns": "yesterday"}) + b"\n",
        orjson.dumps({**_span(10, trace), "span_id": None}) + b"\n",
    ]
    _spool_file(spool_dir, _dead_pid(), [good[0], *bad, good[1], good[2]])
    result = Ingester().ingest()
    assert result.spans == 3 and result.rejected == 4
    wh = genopt.Warehouse(ingest=False)
    rejects = wh.sql("SELECT raw, error FROM spool_rejects ORDER BY byte_offset")
    assert [r["raw"].encode() for r in rejects] == bad  # kept whole, never lost
    reasons = " | ".join(r["error"] for r in rejects)
    assert "not JSON" in reasons and "unknown record kind" in reasons
    assert "'start_ns' should be BIGINT" in reasons and "without trace_id/span_id" in reasons


def test_dead_writers_unfinished_line_is_kept_not_loaded(warehouse_path: Path) -> None:
    import orjson

    trace = uuid.uuid4().hex
    spool_dir = warehouse_path.with_name(warehouse_path.name + ".spool")
    partial = orjson.dumps(_span(7, trace))[:40]
    path = _spool_file(
        spool_dir,
        _dead_pid(),
        [orjson.dumps(_span(i, trace)) + b"\n" for i in range(5)] + [partial],
        sealed=False,
    )
    result = Ingester().ingest()
    assert result.spans == 5 and result.rejected == 1
    assert not path.exists()
    wh = genopt.Warehouse(ingest=False)
    rej = wh.sql("SELECT raw, error FROM spool_rejects")[0]
    assert rej["raw"].encode() == partial and "writer pid" in rej["error"]


def test_live_writers_partial_line_waits(warehouse_path: Path) -> None:
    import orjson

    trace = uuid.uuid4().hex
    spool_dir = warehouse_path.with_name(warehouse_path.name + ".spool")
    line = orjson.dumps(_span(1, trace)) + b"\n"
    path = _spool_file(spool_dir, os.getpid(), [line, line[:30]], sealed=False)
    assert Ingester().ingest().spans == 1
    with open(path, "ab") as f:  # the writer finishes its line
        f.write(line[30:])
    result = Ingester().ingest()
    assert result.records == 1 and result.spans == 0 and result.rejected == 0


INGEST_CHILD = "from prefect_genopt.warehouse import Ingester; print(Ingester().ingest())"
#: the same ingest, in a process that SIGKILLs itself at ``sys.argv[1]`` of the transaction
KILLED_INGEST_CHILD = (
    "import sys; from prefect_genopt.testing import kill_at; kill_at(sys.argv[1]); " + INGEST_CHILD
)


@pytest.mark.parametrize("point", ["after-spans", "after-runs", "before-commit"])
def test_killed_mid_transaction_then_rerun_loads_exactly_once(
    warehouse_path: Path, point: str
) -> None:
    spool_dir = warehouse_path.with_name(warehouse_path.name + ".spool")
    trace = uuid.uuid4().hex
    run_id = str(uuid.uuid4())
    Ingester().ingest()  # an existing warehouse, one earlier ingest
    w = spool.SpoolWriter(spool_dir)
    w.append([_span(i, trace, run_id) for i in range(2000)])
    w.append([_feedback(i, run_id) for i in range(50)])
    w.close()

    proc = subprocess.run([sys.executable, "-c", KILLED_INGEST_CHILD, point], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert _count(warehouse_path, "spans") == 0  # rolled back: nothing half-loaded

    proc = subprocess.run([sys.executable, "-c", INGEST_CHILD], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    Ingester().ingest()
    assert _count(warehouse_path, "spans") == 2000
    assert _count(warehouse_path, "pending_feedback") == 50  # run not seen: pending, kept
    assert _count(warehouse_path, "feedback") == 0


def test_the_fault_hook_sees_each_point_of_the_transaction_in_order(
    warehouse_path: Path,
) -> None:
    from prefect_genopt.warehouse.ingest import FAULT_POINTS, set_fault_hook

    spool_dir = warehouse_path.with_name(warehouse_path.name + ".spool")
    w = spool.SpoolWriter(spool_dir)
    w.append([_span(1, uuid.uuid4().hex)])
    w.close()
    reached: list[str] = []
    previous = set_fault_hook(reached.append)
    try:
        assert Ingester().ingest().spans == 1
    finally:
        assert set_fault_hook(previous) == reached.append
    assert reached == list(FAULT_POINTS)


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


def test_readers_wait_for_a_busy_warehouse(warehouse_path: Path) -> None:
    Ingester().ingest()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(warehouse_path), "1.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    rows = genopt.Warehouse(ingest=False).sql("SELECT count(*) AS n FROM runs")
    waited = time.monotonic() - t0
    holder.wait()
    assert rows == [{"n": 0}]
    assert waited > 0.3  # it waited for the lock instead of failing


def test_busy_past_the_timeout_is_a_clear_error(
    warehouse_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Ingester().ingest()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(warehouse_path), "5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        monkeypatch.setenv("GENOPT_LOCK_TIMEOUT", "0.3")
        with pytest.raises(WarehouseBusyError, match="stayed locked"):
            genopt.Warehouse(ingest=False).sql("SELECT 1")
        # writers are not blocked: feedback goes to the spool meanwhile
        spool.append([_feedback(1, str(uuid.uuid4()))])
    finally:
        holder.kill()
        holder.wait()
    assert Ingester().ingest().pending == 1


def test_missing_warehouse_read_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no warehouse at"):
        genopt.Warehouse(tmp_path / "nope.duckdb", ingest=False).sql("SELECT 1")


def test_one_ingest_loads_everything_whatever_the_batch_size(
    warehouse_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_INGEST_BATCH_BYTES", "20000")  # a few spans per transaction
    trace = uuid.uuid4().hex
    w = spool.SpoolWriter(warehouse_path.with_name(warehouse_path.name + ".spool"))
    w.append([_span(i, trace) for i in range(300)])
    w.close()
    result = Ingester().ingest()
    assert result.spans == 300 and result.transactions >= 4
    assert list(w.directory.iterdir()) == []

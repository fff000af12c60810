"""Nothing acknowledged is lost on a full disk (issue 15, item 4).

The ingester reads the spool in place (no staging copy), deletes each finished file as soon
as a transaction has loaded it, and removes staging copies older versions left; a
warehouse whose disk is full says so; a receiver that filled its spool's disk answers 503
below its reserve and recovers once its backlog is ingested, with every span it
acknowledged stored. Full disks are real tmpfs mounts where this process may mount (else
those tests skip) or an ``ENOSPC`` injected at the spool's write call.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import io
import os
import uuid
from pathlib import Path

import duckdb
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import prefect_genopt as genopt
from prefect_genopt import spool
from prefect_genopt.cli import main
from prefect_genopt.records import HOST
from prefect_genopt.warehouse import Ingester
from prefect_genopt.warehouse.ingest import WarehouseWriteError, set_fault_hook
from prefect_genopt.warehouse.receiver import Receiver
from prefect_genopt.warehouse.status import warehouse_status
from tests.diskfull import InjectedDisk, inject, resize, tmpfs

PROTOBUF = "application/x-protobuf"


def _span(i: int, trace: str, pad: int = 200) -> dict:
    return {
        "k": "span",
        "trace_id": trace,
        "span_id": f"{i + 1:016x}",
        "name": f"step-{i}",
        "span_kind": "INTERNAL",
        "start_ns": 1_700_000_000_000_000_000 + i,
        "end_ns": 1_700_000_000_000_001_000 + i,
        "status": "OK",
        "run_type": "other",
        "attributes": {"i": i, "pad": os.urandom(pad // 2).hex()},
        "events": [],
        "resource": {},
        "source": "spool",
    }


def _count(path: Path, table: str) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


# -- ingest in place ------------------------------------------------------------------


def test_ingest_reads_in_place_and_copies_nothing(warehouse_path: Path) -> None:
    spool_dir = warehouse_path.with_name(warehouse_path.name + ".spool")
    trace = uuid.uuid4().hex
    sealed = spool.SpoolWriter(spool_dir)
    sealed.append([_span(i, trace) for i in range(50)])
    sealed.close()
    growing = spool.SpoolWriter(spool_dir)  # this process's live file: read from its offset
    growing.append([_span(100 + i, trace) for i in range(50)])
    before = sorted(os.listdir(spool_dir))
    seen: list[list[str]] = []
    previous = set_fault_hook(lambda point: seen.append(sorted(os.listdir(spool_dir))))
    try:
        result = Ingester().ingest()
    finally:
        set_fault_hook(previous)
    assert result.spans == 100
    assert seen and all(listing == before for listing in seen)  # no copy while loading
    assert [f.state for f in spool.list_files(spool_dir)] == ["open"]  # the sealed one: gone
    growing.append([_span(200, trace)])
    growing.close()
    assert Ingester().ingest().spans == 1
    assert os.listdir(spool_dir) == []


def test_leftover_staging_files_are_shown_then_removed(warehouse_path: Path) -> None:
    spool_dir = warehouse_path.with_name(warehouse_path.name + ".spool")
    trace = uuid.uuid4().hex
    lines = b"".join(orjson.dumps(_span(i, trace)) + b"\n" for i in range(20))
    w = spool.SpoolWriter(spool_dir)
    w.append([_span(i, trace) for i in range(20)])
    w.close()
    # two copies a killed ingest of an older version left (pid 1: not ours)
    for tag in ("1-0a1b2c3d", "1-4e5f6a7b"):
        (spool_dir / f"{spool.STAGING_PREFIX}{tag}.jsonl").write_bytes(lines)
    status = warehouse_status(genopt.Warehouse(ingest=False))
    assert (status.staging_files, status.staging_bytes) == (2, 2 * len(lines))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status"]) == 0
    assert f"staging:   2 leftover staging file(s), {2 * len(lines)} bytes" in out.getvalue()

    result = Ingester().ingest()
    assert result.staging_removed == 2 and result.spans == 20  # loaded once, from the spool
    assert os.listdir(spool_dir) == []
    status = warehouse_status(genopt.Warehouse(ingest=False))
    assert (status.staging_files, status.staging_bytes) == (0, 0)
    assert _count(warehouse_path, "spans") == 20


def test_a_file_larger_than_the_free_space_allows_loads_in_small_transactions(
    warehouse_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool_dir = warehouse_path.with_name(warehouse_path.name + ".spool")
    w = spool.SpoolWriter(spool_dir)
    trace = uuid.uuid4().hex
    w.append([_span(i, trace, pad=2000) for i in range(2000)])  # ~4.4 MB
    w.close()
    # a nearly full warehouse disk: 4 MB free, so at most 1 MB per transaction
    monkeypatch.setattr(spool, "free_bytes", lambda directory: 4 * 2**20)
    result = Ingester().ingest()
    assert result.spans == 2000 and result.transactions >= 4
    assert os.listdir(spool_dir) == []


# -- a full warehouse disk -------------------------------------------------------------


def test_a_full_warehouse_disk_gives_the_real_cause(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    w = spool.SpoolWriter(spool_dir)
    trace = uuid.uuid4().hex
    w.append([_span(i, trace, pad=1200) for i in range(6000)])  # ~8 MB of spans
    w.close()
    with tmpfs(tmp_path / "disk", 3) as disk_dir:
        warehouse = disk_dir / "w.duckdb"
        with pytest.raises(WarehouseWriteError) as info:
            Ingester(warehouse, spool_dir).ingest()
        message = str(info.value)
        assert "No space left on device" in message and "Nothing is lost" in message
        assert "cannot rollback" not in message and info.value.__cause__ is not None
        assert len(spool.list_files(spool_dir)) == 1  # the spool keeps everything
        resize(disk_dir, 64)  # space is freed: the next ingest loads the rest
        Ingester(warehouse, spool_dir).ingest()
        assert spool.list_files(spool_dir) == []
        # the transactions that fitted were kept, the failed one loaded now: each span once
        assert _count(warehouse, "spans") == 6000


def test_a_failed_commit_is_reported_with_its_cause_not_the_rollback(
    warehouse_path: Path,
) -> None:
    """Without a mountable tmpfs: the write failure injected where the commit happens."""
    spool_dir = warehouse_path.with_name(warehouse_path.name + ".spool")
    spool.append([_span(1, uuid.uuid4().hex)], spool_dir)
    spool.close_all()

    def full(point: str) -> None:
        if point == "before-commit":
            raise duckdb.IOException('Could not write file "w.duckdb.wal": No space left on device')

    previous = set_fault_hook(full)
    try:
        with pytest.raises(WarehouseWriteError, match="No space left on device"):
            Ingester().ingest()
    finally:
        set_fault_hook(previous)
    assert Ingester().ingest().spans == 1


# -- the receiver: 503 below its reserve, recovers once its backlog is ingested -----------


def _spans_body(n: int, pad: int) -> bytes:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("full-disk")
    blob = os.urandom(pad // 2).hex()
    for i in range(n):
        with tracer.start_as_current_span(f"s{i}", attributes={"i": i, "blob": blob}):
            pass
    return encode_spans(list(exporter.get_finished_spans())).SerializeToString()


def _post(url: str, body: bytes) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": PROTOBUF})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def test_a_full_receiver_recovers_once_its_backlog_is_ingested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "DEFAULT_ROTATE_BYTES", 1024 * 1024)
    monkeypatch.setenv("GENOPT_SPOOL_RESERVE_MB", "12")
    monkeypatch.setenv("GENOPT_MAX_VALUE_CHARS", "4096")
    with tmpfs(tmp_path / "disk", 40) as disk_dir:
        warehouse = disk_dir / "w.duckdb"
        rx = Receiver(port=0, warehouse=warehouse, ingest_interval=3600).start()
        try:
            acknowledged = refused = 0
            for _ in range(400):
                status = _post(rx.url, _spans_body(100, pad=2000))  # ~230 KB in the spool
                if status == 200:
                    acknowledged += 100
                    continue
                assert status == 503
                refused += 1
                if refused == 3:
                    break
            assert refused == 3 and acknowledged >= 5000  # it filled its disk to the reserve
            assert spool.free_bytes(disk_dir) < 12 * 2**20
            rx.ingest_now()  # the backlog loads, and its files are deleted
            assert spool.free_bytes(disk_dir) >= 12 * 2**20
            assert _post(rx.url, _spans_body(100, pad=2000)) == 200  # recovered by itself
            acknowledged += 100
        finally:
            rx.stop()
        assert _count(warehouse, "spans") == acknowledged  # every acknowledged span stored
        assert _count(warehouse, "spool_rejects") == 0


def test_a_failed_write_at_the_receiver_is_503_and_glues_nothing(
    warehouse_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk: InjectedDisk = inject(monkeypatch)
    rx = Receiver(port=0, warehouse=warehouse_path, ingest_interval=3600).start()
    try:
        assert _post(rx.url, _spans_body(20, pad=100)) == 200
        disk.full()
        disk.partial = 300  # the disk fills up in the middle of the request's records
        assert _post(rx.url, _spans_body(20, pad=100)) == 503
        disk.ok()
        assert _post(rx.url, _spans_body(20, pad=100)) == 200  # acknowledged after space returns
    finally:
        rx.stop()
    assert _count(warehouse_path, "spans") == 40 and _count(warehouse_path, "spool_rejects") == 0


def test_spool_error_names_the_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = inject(monkeypatch)
    disk.full()
    with pytest.raises(spool.SpoolError) as info:
        spool.append([{"k": "span"}], tmp_path)
    assert info.value.errno == errno.ENOSPC
    assert f"{HOST}" not in str(info.value) and "the disk is full (ENOSPC)" in str(info.value)

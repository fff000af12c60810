"""The spool writer: whole lines, one file per process, sealing, forks."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import orjson
import pytest

from prefect_genopt import spool
from prefect_genopt.warehouse import Ingester
from tests.diskfull import InjectedDisk, inject, tmpfs


def _lines(directory: Path) -> list[dict]:
    out = []
    for f in sorted(directory.iterdir()):
        out += [orjson.loads(line) for line in f.read_bytes().splitlines()]
    return out


def test_appends_are_written_at_once_in_order(tmp_path: Path) -> None:
    w = spool.SpoolWriter(tmp_path)
    w.append([{"k": "span", "i": 1}, {"k": "span", "i": 2}])
    w.append([{"k": "feedback", "i": 3}])
    assert [r["i"] for r in _lines(tmp_path)] == [1, 2, 3]
    [f] = spool.list_files(tmp_path)
    assert f.state == "open" and f.writer_alive and f.pid == os.getpid()


def test_close_seals_the_file(tmp_path: Path) -> None:
    w = spool.SpoolWriter(tmp_path)
    w.append([{"k": "span", "i": i} for i in range(3)])
    w.close()
    files = spool.list_files(tmp_path)
    assert [f.state for f in files] == ["sealed"] and len(_lines(tmp_path)) == 3
    assert not files[0].writer_alive


def test_rotation_seals_full_files(tmp_path: Path) -> None:
    w = spool.SpoolWriter(tmp_path, rotate_bytes=200)
    for i in range(10):
        w.append([{"k": "span", "i": i, "pad": "x" * 50}])
    states = [f.state for f in spool.list_files(tmp_path)]
    assert states.count("sealed") >= 3
    assert sorted(r["i"] for r in _lines(tmp_path)) == list(range(10))


def test_a_forked_child_writes_its_own_file(tmp_path: Path) -> None:
    spool.append([{"k": "span", "who": "parent"}], tmp_path)
    pid = os.fork()
    if pid == 0:  # child
        spool.append([{"k": "span", "who": "child"}], tmp_path)
        os._exit(0)
    os.waitpid(pid, 0)
    files = spool.list_files(tmp_path)
    assert len(files) == 2 and {f.pid for f in files} == {os.getpid(), pid}
    assert sorted(r["who"] for r in _lines(tmp_path)) == ["child", "parent"]


# -- a full or read-only disk -----------------------------------------------------------


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> InjectedDisk:
    return inject(monkeypatch)


_real_ftruncate = os.ftruncate


def _span(i: int) -> dict:
    return {
        "k": "span",
        "trace_id": "ab" * 16,
        "span_id": f"{i + 1:016x}",
        "name": f"s{i}",
        "start_ns": 1,
        "end_ns": 2,
        "attributes": {"pad": "x" * 200},
        "events": [],
        "resource": {},
    }


def test_a_short_write_is_cut_back_so_the_next_record_stands_alone(
    tmp_path: Path, disk: InjectedDisk
) -> None:
    spool_dir = tmp_path / "spool"
    w = spool.SpoolWriter(spool_dir)
    w.append([_span(0)])  # acknowledged
    disk.full()
    disk.partial = 57  # the disk fills up in the middle of the next record
    with pytest.raises(spool.SpoolError, match="the disk is full") as info:
        w.append([_span(1)])
    assert info.value.errno == errno.ENOSPC and "records were not stored" in str(info.value)
    disk.ok()
    w.append([_span(2)])  # acknowledged after space returns
    w.close()
    for f in spool_dir.iterdir():  # only whole lines, no record glued onto a partial one
        assert f.read_bytes().endswith(b"\n")
        assert all(line.startswith(b'{"k"') for line in f.read_bytes().splitlines())
    assert sorted(r["name"] for r in _lines(spool_dir)) == ["s0", "s2"]

    result = Ingester(tmp_path / "w.duckdb", spool_dir).ingest()
    assert (result.spans, result.rejected) == (2, 0)


def test_a_failed_write_seals_a_file_with_records_and_starts_a_new_one(
    tmp_path: Path, disk: InjectedDisk
) -> None:
    w = spool.SpoolWriter(tmp_path)
    w.append([_span(0)])
    disk.full()
    for i in range(5):  # a full disk: every write fails, no new empty file each time
        with pytest.raises(spool.SpoolError):
            w.append([_span(10 + i)])
    # the file with the record is sealed (loadable, deletable); the writer keeps one empty
    # file for its next try, not a new one per failure
    files = {f.state: f.path.stat().st_size for f in spool.list_files(tmp_path)}
    assert len(spool.list_files(tmp_path)) == 2 and files["sealed"] > 0 and files["open"] == 0
    disk.ok()
    w.append([_span(1)])
    assert sorted(r["name"] for r in _lines(tmp_path)) == ["s0", "s1"]


def test_a_file_that_cannot_be_cut_back_is_sealed_and_its_partial_line_set_aside(
    tmp_path: Path, disk: InjectedDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool_dir = tmp_path / "spool"
    w = spool.SpoolWriter(spool_dir)
    w.append([_span(0)])
    disk.full()
    disk.partial = 40

    def no_truncate(fd: int, size: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(spool.SpoolError):
        w.append([_span(1)])
    monkeypatch.setattr(os, "ftruncate", _real_ftruncate)
    assert [f.state for f in spool.list_files(spool_dir)] == ["sealed"]
    disk.ok()
    w.append([_span(2)])
    w.close()
    result = Ingester(tmp_path / "w.duckdb", spool_dir).ingest()
    assert (result.spans, result.rejected) == (2, 1)  # the partial line kept aside, not glued


def test_a_read_only_spool_says_so(tmp_path: Path, disk: InjectedDisk) -> None:
    disk.read_only()
    with pytest.raises(spool.SpoolError, match="read-only") as info:
        spool.SpoolWriter(tmp_path).append([_span(0)])
    assert info.value.errno == errno.EROFS


def test_below_the_reserve_writes_are_refused_and_the_own_file_sealed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool.append([_span(0)], tmp_path)
    spool.check_reserve(tmp_path, 1024)  # plenty free: nothing happens
    assert [f.state for f in spool.list_files(tmp_path)] == ["open"]
    monkeypatch.setattr(spool, "free_bytes", lambda directory: 10 * 2**20)
    with pytest.raises(spool.SpoolError, match="below its reserve of 256.0 MB") as info:
        spool.check_reserve(tmp_path, 256 * 2**20)
    assert info.value.errno == errno.ENOSPC
    # sealed: the ingester can load and delete it, which frees the space
    assert [f.state for f in spool.list_files(tmp_path)] == ["sealed"]
    spool.check_reserve(tmp_path, 0)  # 0: no reserve


def test_free_bytes_looks_at_the_nearest_existing_directory(tmp_path: Path) -> None:
    assert spool.free_bytes(tmp_path / "not" / "yet") == spool.free_bytes(tmp_path) > 0


def test_a_real_full_disk_loses_no_acknowledged_record(tmp_path: Path) -> None:
    """On a real 1 MB tmpfs: writes fail once it is full, every acknowledged record is
    loaded once space returns, none is glued to a partial line."""
    with tmpfs(tmp_path / "disk", 1) as disk_dir:
        spool_dir = disk_dir / "spool"
        w = spool.SpoolWriter(spool_dir)
        acknowledged, failures = [], 0
        for i in range(20_000):
            try:
                w.append([_span(i)])
            except spool.SpoolError as exc:
                assert exc.errno == errno.ENOSPC
                failures += 1
                if failures == 3:
                    break
                continue
            acknowledged.append(i)
        assert failures == 3 and len(acknowledged) > 100
        # the ingester (its warehouse on another disk) loads and deletes the sealed file
        result = Ingester(tmp_path / "w.duckdb", spool_dir).ingest()
        assert result.spans == len(acknowledged) and result.rejected == 0
        w.append([_span(5000)])  # space is back
        w.close()
        result = Ingester(tmp_path / "w.duckdb", spool_dir).ingest()
        assert (result.spans, result.rejected) == (1, 0)

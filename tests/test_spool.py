"""The spool writer: immediate and briefly buffered writes, ordering, sealing, forks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson

from prefect_genopt import spool


def _lines(directory: Path) -> list[dict]:
    out = []
    for f in sorted(directory.iterdir()):
        out += [orjson.loads(line) for line in f.read_bytes().splitlines()]
    return out


def test_flush_writes_at_once_and_keeps_order(tmp_path: Path) -> None:
    w = spool.SpoolWriter(tmp_path, flush_interval=60)
    w.append([{"k": "span", "i": 1}], flush=False)
    assert _lines(tmp_path) == []  # buffered
    w.append([{"k": "feedback", "i": 2}])  # a flushing append writes what waited first
    assert [r["i"] for r in _lines(tmp_path)] == [1, 2]


def test_buffered_records_are_written_within_the_interval(tmp_path: Path) -> None:
    w = spool.SpoolWriter(tmp_path, flush_interval=0.05)
    w.append([{"k": "span", "i": 1}], flush=False)
    deadline = time.monotonic() + 5
    while not _lines(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r["i"] for r in _lines(tmp_path)] == [1]


def test_zero_interval_writes_every_record(tmp_path: Path) -> None:
    w = spool.SpoolWriter(tmp_path, flush_interval=0)
    w.append([{"k": "span", "i": 1}], flush=False)
    assert len(_lines(tmp_path)) == 1


def test_close_writes_the_buffer_and_seals(tmp_path: Path) -> None:
    w = spool.SpoolWriter(tmp_path, flush_interval=60)
    w.append([{"k": "span", "i": i} for i in range(3)], flush=False)
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


def test_a_forked_child_gets_its_own_file_and_not_the_parents_buffer(tmp_path: Path) -> None:
    parent = spool.writer_for(tmp_path)
    parent.flush_interval = 60
    parent.append([{"k": "span", "who": "parent-buffered"}], flush=False)
    pid = os.fork()
    if pid == 0:  # child
        spool.append([{"k": "span", "who": "child"}], tmp_path)
        os._exit(0)
    os.waitpid(pid, 0)
    parent.flush()
    files = spool.list_files(tmp_path)
    assert len(files) == 2 and {f.pid for f in files} == {os.getpid(), pid}
    assert sorted(r["who"] for r in _lines(tmp_path)) == ["child", "parent-buffered"]

"""The spool writer: whole lines, one file per process, sealing, forks."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from prefect_genopt import spool


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

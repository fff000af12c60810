"""A warehouse this genopt cannot use gives one clear line and exit 2, never a traceback or a
green status (issue 15, item 9): a newer schema version, random bytes, a cut or damaged file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from prefect_genopt.warehouse.schema import SCHEMA_VERSION
from tests.cli.conftest import Result


@pytest.fixture
def warehouse(tmp_path: Path, genopt: Callable[..., Result]) -> Path:
    path = tmp_path / "w.duckdb"
    assert genopt("--warehouse", str(path), "ingest").returncode == 0
    return path


def assert_clear(out: Result, *words: str) -> None:
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1, out.stderr
    for word in words:
        assert word in out.stderr, out.stderr


def test_a_newer_schema_version(warehouse: Path, genopt: Callable[..., Result]) -> None:
    con = duckdb.connect(str(warehouse))
    con.execute("INSERT INTO schema_version VALUES (?, now())", [SCHEMA_VERSION + 1])
    con.close()
    newer = f"schema version {SCHEMA_VERSION + 1}, newer than this prefect-genopt's"
    for args in (
        ["ingest"],
        ["sql", "SELECT 1"],
        ["sql", "--no-ingest", "SELECT 1"],
        ["sql", "--write", "SELECT 1"],
        ["status"],
        ["status", "--quick"],
    ):
        out = genopt("--warehouse", str(warehouse), *args)
        assert_clear(out, newer, "upgrade prefect-genopt")


@pytest.mark.parametrize("size", [100_000, 10])
def test_random_bytes(tmp_path: Path, genopt: Callable[..., Result], size: int) -> None:
    path = tmp_path / "w.duckdb"
    path.write_bytes(os.urandom(size))
    for args in (["status"], ["status", "--quick"], ["sql", "SELECT 1"], ["ingest"]):
        out = genopt("--warehouse", str(path), *args)
        assert_clear(out, f"warehouse {path} is damaged or not a DuckDB file", "move it aside")


def test_a_cut_file(warehouse: Path, genopt: Callable[..., Result]) -> None:
    with open(warehouse, "r+b") as fh:
        fh.truncate(20_000)
    assert_clear(genopt("--warehouse", str(warehouse), "status"), "is damaged")


def test_a_damaged_block_that_counting_does_not_read(
    warehouse: Path, genopt: Callable[..., Result], capsys: pytest.CaptureFixture[str]
) -> None:
    out = genopt(
        "--warehouse",
        str(warehouse),
        "sql",
        "--write",
        "CREATE TABLE notes AS SELECT range AS a, md5(range::VARCHAR) AS b FROM range(200000)",
    )
    assert out.returncode == 0, out.stderr
    out = genopt("--warehouse", str(warehouse), "status")
    assert out.returncode == 0 and "every table read through" in out.stdout
    size = warehouse.stat().st_size
    with open(warehouse, "r+b") as fh:  # overwrite a block in the middle: the notes' data
        fh.seek(size // 2)
        fh.write(os.urandom(4096))
    # the counts alone never read that block: --quick stays green, as status was before
    assert genopt("--warehouse", str(warehouse), "status", "--quick").returncode == 0
    assert_clear(genopt("--warehouse", str(warehouse), "status"), "is damaged", "checksum")

"""`genopt sql` without --write only reads the warehouse (issue 15, item 2): no file is read or
written, no setting changed, each refusal a clear line with exit 2; --write is the way out."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from prefect_genopt import spool
from prefect_genopt.warehouse.access import RESTRICTED_CONFIG, connect
from tests.cli.conftest import Result


@pytest.fixture
def warehouse(tmp_path: Path, genopt: Callable[..., Result]) -> Path:
    """An empty warehouse (one ingest), and a file beside it a query could try to read."""
    path = tmp_path / "w.duckdb"
    assert genopt("--warehouse", str(path), "ingest").returncode == 0
    (tmp_path / "secret.csv").write_text("user,password\nroot,hunter2\n")
    return path


def spool_dir(warehouse: Path) -> Path:
    return warehouse.with_name(warehouse.name + ".spool")


STATEMENTS = [
    ("COPY (SELECT 1 AS a) TO '{dir}/out.csv'", "cannot read or write files"),
    ("COPY runs TO '{dir}/runs.parquet' (FORMAT parquet)", "cannot read or write files"),
    ("EXPORT DATABASE '{dir}/export'", "cannot read or write files"),
    ("SELECT * FROM read_csv('/etc/passwd')", "cannot read or write files"),
    ("SELECT * FROM read_csv('{dir}/secret.csv')", "cannot read or write files"),
    ("SELECT * FROM '{dir}/secret.csv'", "cannot read or write files"),
    ("SELECT * FROM read_text('/etc/hostname')", "cannot read or write files"),
    ("SELECT * FROM read_blob('{dir}/secret.csv')", "cannot read or write files"),
    ("SELECT * FROM glob('/etc/*')", "cannot read or write files"),
    ("ATTACH '{dir}/other.duckdb' AS other", "cannot read or write files"),
    ("INSTALL httpfs", "cannot read or write files"),
    ("LOAD httpfs", "cannot load extensions"),
    ("SET threads = 1", "cannot change settings"),
    ("SET enable_external_access = true", "cannot change settings"),
    ("RESET threads", "cannot change settings"),
    ("PRAGMA threads = 1", "cannot change settings"),
    ("PRAGMA enable_profiling", "cannot change settings"),
    ("CREATE TABLE x (a INTEGER)", "cannot change the warehouse"),
    ("DELETE FROM runs", "cannot change the warehouse"),
]


@pytest.mark.parametrize(("statement", "message"), STATEMENTS)
def test_each_statement_is_refused_without_write(
    warehouse: Path, genopt: Callable[..., Result], statement: str, message: str
) -> None:
    query = statement.format(dir=warehouse.parent)
    before = sorted(p.name for p in warehouse.parent.iterdir())
    out = genopt("--warehouse", str(warehouse), "sql", query)
    assert out.returncode == 2, out
    assert out.stderr.startswith("genopt sql: error: refused: without --write")
    assert message in out.stderr and "--write" in out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert "hunter2" not in out.stdout + out.stderr and "root:" not in out.stdout
    assert sorted(p.name for p in warehouse.parent.iterdir()) == before  # nothing written


def test_copy_into_the_spool_cannot_forge_feedback(
    warehouse: Path, genopt: Callable[..., Result]
) -> None:
    """The drill: a COPY into the spool became feedback at the next ingest."""
    forged = {"k": "feedback", "feedback_id": "x", "run_id": "r", "kpi": "ok", "value": 1}
    query = (
        f"COPY (SELECT '{orjson.dumps(forged).decode()}' AS line) TO "
        f"'{spool_dir(warehouse)}/vm__1__forged.jsonl' (HEADER false, QUOTE '')"
    )
    assert genopt("--warehouse", str(warehouse), "sql", query).returncode == 2
    assert spool.list_files(spool_dir(warehouse)) == []


def test_select_works_and_the_spool_is_ingested_first(
    warehouse: Path, genopt: Callable[..., Result]
) -> None:
    spool.append(
        [{"k": "feedback", "feedback_id": "f1", "run_id": "r1", "kpi": "ok", "value": 1.0}],
        spool_dir(warehouse),
    )
    spool.close_all()
    out = genopt(
        "--warehouse", str(warehouse), "sql", "SELECT kpi, value FROM pending_feedback", "--json"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [{"kpi": "ok", "value": 1.0}]
    # functions that touch no file still work
    out = genopt("--warehouse", str(warehouse), "sql", "SELECT current_setting('threads') > 0")
    assert out.returncode == 0 and "True" in out.stdout
    # and the process can ingest again after a restricted read, and read again
    out = genopt("--warehouse", str(warehouse), "sql", "SELECT count(*) FROM feedback")
    assert out.returncode == 0 and "0" in out.stdout


def test_write_is_the_explicit_way_out(warehouse: Path, genopt: Callable[..., Result]) -> None:
    target = warehouse.parent / "out.csv"
    out = genopt("--warehouse", str(warehouse), "sql", f"COPY (SELECT 42 AS a) TO '{target}'")
    assert out.returncode == 2 and not target.exists()
    out = genopt(
        "--warehouse", str(warehouse), "sql", "--write", f"COPY (SELECT 42 AS a) TO '{target}'"
    )
    assert out.returncode == 0, out.stderr
    assert target.read_text().split() == ["a", "42"]
    out = genopt("--warehouse", str(warehouse), "sql", "--write", "CREATE TABLE notes (a INT)")
    assert out.returncode == 0, out.stderr
    out = genopt("--warehouse", str(warehouse), "sql", "SELECT count(*) AS n FROM notes")
    assert out.returncode == 0 and "0" in out.stdout


def test_restricted_connection_from_the_library(warehouse: Path) -> None:
    assert RESTRICTED_CONFIG == {"enable_external_access": False, "lock_configuration": True}
    import duckdb

    with connect(warehouse, restricted=True) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        with pytest.raises(duckdb.PermissionException):
            con.execute("SELECT * FROM read_text('/etc/hostname')")
    with connect(warehouse, read_only=False) as con:  # then a normal connection again
        con.execute("CREATE TABLE IF NOT EXISTS t (a INT)")

"""Output that pipes (issue 16, item 5): CSV lines end in "\\n", JSON-typed columns are
nested in --json and, when asked, in Warehouse.sql(); Warehouse.df() without pandas says how
to install it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from prefect_genopt.warehouse import Warehouse
from tests.cli.conftest import Result

ROOT = Path(__file__).resolve().parents[2]
QUERY = "SELECT 'a' AS name, json_object('k', [1, 2], 'n', NULL) AS doc, 7 AS n"


@pytest.fixture
def warehouse(tmp_path: Path, genopt: Callable[..., Result]) -> Path:
    path = tmp_path / "w.duckdb"
    assert genopt("--warehouse", str(path), "ingest").returncode == 0
    return path


def test_csv_lines_end_in_a_newline_only(warehouse: Path, genopt: Callable[..., Result]) -> None:
    out = genopt("--warehouse", str(warehouse), "sql", "SELECT 1 AS a UNION ALL SELECT 2", "--csv")
    assert out.returncode == 0
    assert "\r" not in out.stdout
    assert out.stdout.splitlines()[-1] == "2" and out.stdout.endswith("2\n")


def test_csv_through_a_shell_pipe_is_the_bare_value(warehouse: Path) -> None:
    """What `$(genopt sql ... --csv | tail -1)` captures: the value, no carriage return."""
    cmd = (
        f"{sys.executable} -m prefect_genopt.cli --warehouse {warehouse} "
        """sql "SELECT 'x' AS v" --csv | tail -1"""
    )
    out = subprocess.run(
        ["sh", "-c", cmd], capture_output=True, text=True, timeout=120, cwd=ROOT, check=True
    )
    assert out.stdout == "x\n"


def test_json_columns_are_nested_in_json_output(
    warehouse: Path, genopt: Callable[..., Result]
) -> None:
    out = genopt("--warehouse", str(warehouse), "sql", QUERY, "--json")
    assert out.returncode == 0
    assert orjson.loads(out.stdout) == [{"name": "a", "doc": {"k": [1, 2], "n": None}, "n": 7}]
    # the same with --write (the read-write path), and JSON[] item by item
    out = genopt(
        "--warehouse",
        str(warehouse),
        "sql",
        "SELECT ['[1]'::JSON, NULL, '{\"a\": true}'::JSON] AS docs",
        "--json",
        "--write",
    )
    assert orjson.loads(out.stdout) == [{"docs": [[1], None, {"a": True}]}]
    # table and CSV keep the JSON text
    csv = genopt("--warehouse", str(warehouse), "sql", QUERY, "--csv").stdout
    assert csv.splitlines()[1] == 'a,"{""k"":[1,2],""n"":null}",7'


def test_json_columns_of_the_warehouse_tables_are_nested(
    prefect_api: str, warehouse_path: Path, genopt: Callable[..., Result]
) -> None:
    from tests import pipelines as p

    p.triage(["refund my invoice"])
    out = genopt("sql", 'SELECT "values", schema_version FROM param_sets', "--json")
    (row,) = orjson.loads(out.stdout)
    assert isinstance(row["values"], dict) and row["values"]


def test_warehouse_sql_parses_json_columns_only_when_asked(tmp_path: Path) -> None:
    wh = Warehouse(tmp_path / "w.duckdb")
    assert wh.sql(QUERY) == [{"name": "a", "doc": '{"k":[1,2],"n":null}', "n": 7}]  # unchanged
    assert wh.sql(QUERY, json=True) == [{"name": "a", "doc": {"k": [1, 2], "n": None}, "n": 7}]
    columns, rows = wh.execute(QUERY, json=True)
    assert columns == ["name", "doc", "n"] and rows == [("a", {"k": [1, 2], "n": None}, 7)]
    assert wh.sql("SELECT NULL::JSON AS j", json=True) == [{"j": None}]
    with wh.reading():  # the kept-open connection too
        assert wh.sql("SELECT '3'::JSON AS j", json=True) == [{"j": 3}]
    rw = Warehouse(tmp_path / "w.duckdb", read_only=False)
    try:
        assert rw.sql("SELECT '[true]'::JSON AS j", json=True) == [{"j": [True]}]
    finally:
        rw.close()


def test_df_without_pandas_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_genopt.errors import UnavailableError

    wh = Warehouse(tmp_path / "w.duckdb")
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    with pytest.raises(ImportError, match=r"needs pandas.*pip install pandas") as raised:
        wh.df("SELECT 1 AS a")
    assert isinstance(raised.value, UnavailableError)


def test_df_with_pandas_is_a_dataframe(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = Warehouse(tmp_path / "w.duckdb").df(QUERY, json=True)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["name", "doc", "n"] and frame["doc"][0] == {
        "k": [1, 2],
        "n": None,
    }


def test_proposals_json_nests_every_json_column(
    warehouse_path: Path, genopt: Callable[..., Result]
) -> None:
    from prefect_genopt.optimize.proposals import record_proposal

    record_proposal(
        Warehouse(),
        {
            "proposal_id": "pr_20261201000001_abcdef",
            "pipeline": "triage",
            "created_at": "2026-12-01T00:00:01",
            "status": "proposed",
            "kpi": "correct",
            "direction": "higher",
            "reasoning": "r",
            "diff": {"prompt": {"from": "a", "to": "b"}},
            "suggestion": {"prompt": "b"},
            "candidate_param_set_id": "ps_0000000000000001",
            "evidence_run_ids": ["run-1"],
        },
        {"prompt": "b"},
        1,
    )
    for argv in (
        ["proposals", "triage", "--json"],
        ["proposals", "show", "pr_20261201000001_abcdef", "--json"],
    ):
        out = genopt(*argv)
        assert out.returncode == 0, out.stderr
        (row,) = orjson.loads(out.stdout)
        assert row["diff"] == {"prompt": {"from": "a", "to": "b"}}, argv
        assert row["suggestion"] == {"prompt": "b"} and row["evidence_run_ids"] == ["run-1"]

"""genopt sql, ingest, status and feedback, run in this process through main()."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_genopt.cli import main
from tests.cli.conftest import Result


def test_sql_table_json_csv(one_run: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "select run_id, pipeline, status from runs"]) == 0
    out = capsys.readouterr().out
    assert one_run in out and "completed" in out and "(1 row)" in out
    assert main(["sql", "select run_id, kpis from run_summary", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["run_id"] == one_run and rows[0]["kpis"] == {"accuracy": 0.8}  # JSON: nested
    assert main(["sql", "select pipeline, count(*) as n from spans group by 1", "--csv"]) == 0
    assert list(csv.reader(io.StringIO(capsys.readouterr().out)))[0] == ["pipeline", "n"]


def test_sql_is_read_only_unless_asked(one_run: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "delete from runs"]) == 2
    assert "read-only" in capsys.readouterr().err.lower()
    assert main(["sql", "select count(*) as n from runs"]) == 0
    assert "1" in capsys.readouterr().out


def test_warehouse_option_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "elsewhere.duckdb"
    assert main(["--warehouse", str(path), "ingest"]) == 0
    assert "ingested 0 records" in capsys.readouterr().out
    assert path.exists()
    assert main(["--warehouse", str(path), "status"]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and "dropped_spans: 0" in out and "backlog:" in out


def test_status_before_the_first_ingest(
    warehouse_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "backlog:   0 spool file(s)" in out and "run `genopt ingest`" in out


def test_sql_errors_are_clear(warehouse_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest"]) == 0  # the warehouse exists (a missing one: test_typos)
    assert main(["sql", "select * from no_such_table"]) == 2
    err = capsys.readouterr().err
    assert "SQL error" in err and "no_such_table" in err


def test_feedback_from_the_shell(one_run: str, genopt: Callable[..., Result]) -> None:
    args = [
        "feedback",
        one_run,
        "csat",
        "4",
        "--comment",
        "slow",
        "--source",
        "ops",
        "--item-key",
        "refund my invoice",
        "--idempotency-key",
        "k1",
    ]
    first, second = genopt(*args), genopt(*args)
    assert first.returncode == 0, first.stderr
    assert "recorded" in first.stdout and second.returncode == 0
    out = genopt(
        "sql",
        "select kpi, value, comment, source, item_key from feedback where kpi = 'csat'",
        "--json",
    )
    assert json.loads(out.stdout) == [
        {
            "kpi": "csat",
            "value": 4.0,
            "comment": "slow",
            "source": "ops",
            "item_key": "refund my invoice",
        }
    ]
    text_only = genopt("feedback", one_run, "review", "--comment", "fine")
    assert text_only.returncode == 0, text_only.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["csat", "nan"], "finite"),
        (["csat", "inf"], "finite"),
        (["", "3"], "KPI name"),
        (["csat"], "needs a value, a comment"),
        (["csat", "abc"], "not a number"),
    ],
)
def test_bad_feedback_is_a_clear_error(
    one_run: str, genopt: Callable[..., Result], args: list[str], message: str
) -> None:
    out = genopt("feedback", one_run, *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_feedback_for_unknown_run(
    prefect_api: str, warehouse_path: Path, genopt: Callable[..., Result]
) -> None:
    out = genopt("feedback", "00000000-0000-0000-0000-000000000000", "csat", "3")
    assert out.returncode == 2 and "no flow run" in out.stderr
    out = genopt("feedback", "not-a-uuid", "csat", "3")
    assert out.returncode == 2 and "not a Prefect flow-run id" in out.stderr


def test_feedback_goes_to_the_warehouse_given(
    one_run: str, tmp_path: Path, genopt: Callable[..., Result]
) -> None:
    """--warehouse is passed down: the run is looked up, and the feedback spooled, there."""
    other = tmp_path / "other.duckdb"
    out = genopt("--warehouse", str(other), "feedback", one_run, "csat", "5")
    assert out.returncode == 0, out.stderr
    assert "pending (the run is not in the warehouse yet" in out.stdout  # not in `other`
    out = genopt("--warehouse", str(other), "sql", "select feedback_id from pending_feedback")
    assert "(1 row)" in out.stdout
    assert "(0 rows)" in genopt("sql", "select * from feedback where kpi = 'csat'").stdout

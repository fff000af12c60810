"""``genopt report``: writes the file, refuses typos and a missing warehouse (exit 2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.cli.conftest import Result
from tests.report.seed import seed


def test_report_writes_the_html_file(
    warehouse_path: Path, tmp_path: Path, genopt: Callable[..., Result]
) -> None:
    seed(warehouse_path)
    out = tmp_path / "report.html"
    r = genopt("report", "triage", "--out", str(out), "--days", "7", "--traces", "3")
    assert r.returncode == 0, r.stderr
    assert out.is_file() and out.stat().st_size > 100_000
    assert f"wrote {out}" in r.stdout and "3 run trace(s)" in r.stdout
    assert "last 7 days" in r.stdout
    # progress on stderr (plain lines, not a terminal): the first section and the last
    assert "read kpis: 1/7 sections" in r.stderr and "read usage: 7/7 sections" in r.stderr


def test_unknown_pipeline_exits_2_naming_the_known_ones(
    warehouse_path: Path, tmp_path: Path, genopt: Callable[..., Result]
) -> None:
    seed(warehouse_path)
    r = genopt("report", "triag", "--out", str(tmp_path / "r.html"))
    assert r.returncode == 2
    assert "unknown pipeline 'triag'; known: triage" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "r.html").exists()


def test_missing_warehouse_exits_2(tmp_path: Path, genopt: Callable[..., Result]) -> None:
    missing = tmp_path / "nope.duckdb"
    r = genopt("--warehouse", str(missing), "report", "triage", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "no warehouse at" in r.stderr
    assert not missing.exists()


def test_bad_numbers_exit_2(tmp_path: Path, genopt: Callable[..., Result]) -> None:
    assert genopt("report", "triage", "--days", "0").returncode == 2
    assert genopt("report", "triage", "--traces", "-1").returncode == 2
    assert genopt("report", "triage", "--days", "x").returncode == 2


def test_help_names_the_sections_and_options(genopt: Callable[..., Result]) -> None:
    r = genopt("report", "--help")
    assert r.returncode == 0
    for word in (
        "--out",
        "--days",
        "--traces",
        "KPI over time",
        "rollouts",
        "proposals",
        "traces",
        "LLM usage",
        "no network",
    ):
        assert word in r.stdout
    assert "report" in genopt("--help").stdout

"""Typos fail in one line with exit status 2 (issue 16, item 6): a pipeline name the warehouse
has never seen, in every command that takes one; a read command on a warehouse path that does
not exist; `genopt sql ""`."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefect_genopt.cli import build_parser
from prefect_genopt.warehouse import Warehouse
from tests.cli.conftest import Result, warehouse_knowing


def pipeline_commands() -> Iterator[tuple[str, ...]]:
    """Every command line of the parser that takes a pipeline, with the pipeline 'triag'
    (found by walking the parser, so a new command is covered when it is added)."""
    root = build_parser()
    (sub,) = (a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        verbs = dict.items(groups[0].choices) if groups else [(None, parser)]
        for verb, verb_parser in verbs:
            head = (name,) if verb is None else (name, verb)
            for action in verb_parser._actions:
                if action.dest == "pipeline":
                    yield (*head, *action.option_strings[-1:], "triag")


COMMANDS = sorted(set(pipeline_commands()))


def test_the_walk_finds_the_commands_that_take_a_pipeline() -> None:
    assert ("optimize", "triag") in COMMANDS and ("rollout", "status", "triag") in COMMANDS
    assert ("export", "reflections", "--pipeline", "triag") in COMMANDS
    assert len(COMMANDS) >= 15


@pytest.fixture
def triage_warehouse(tmp_path: Path) -> Path:
    """A warehouse that knows one pipeline, 'triage' (no Prefect needed)."""
    return warehouse_knowing(tmp_path / "w.duckdb", "triage")


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_an_unknown_pipeline_is_named_with_the_known_ones(
    argv: tuple[str, ...], triage_warehouse: Path, genopt: Callable[..., Result]
) -> None:
    out = genopt("--warehouse", str(triage_warehouse), *argv)
    assert out.returncode == 2, out
    assert out.stderr.strip().endswith("unknown pipeline 'triag'; known: triage"), out.stderr
    assert "Traceback" not in out.stderr


def test_a_pipeline_known_only_by_its_runs_is_known(
    triage_warehouse: Path, genopt: Callable[..., Result]
) -> None:
    wh = Warehouse(triage_warehouse, read_only=False)
    try:
        wh.execute("INSERT INTO runs (run_id, pipeline, status) VALUES ('r1', 'intake', 'x')")
    finally:
        wh.close()
    out = genopt("--warehouse", str(triage_warehouse), "proposals", "intake")
    assert out.returncode == 0, out.stderr
    out = genopt("--warehouse", str(triage_warehouse), "proposals", "triag")
    assert "unknown pipeline 'triag'; known: intake, triage" in out.stderr


READS = [
    ("sql", "select 1"),
    ("sql", "select 1", "--json"),
    ("proposals",),
    ("proposals", "triage"),
    ("proposals", "show", "pr_x"),
    ("rollout", "status", "triage"),
    ("experiences", "list", "triage"),
    ("export", "reflections"),
    ("instruction", "show", "triage"),
    ("optimize", "triage"),
]


@pytest.mark.parametrize("argv", READS, ids=" ".join)
def test_a_read_on_a_warehouse_that_does_not_exist_says_so(
    argv: tuple[str, ...], tmp_path: Path, genopt: Callable[..., Result]
) -> None:
    typo = tmp_path / "warehuose.duckdb"
    out = genopt("--warehouse", str(typo), *argv)
    assert out.returncode == 2, out
    assert f"no warehouse at {typo}" in out.stderr and "GENOPT_WAREHOUSE" in out.stderr
    assert not typo.exists()  # not created empty


def test_the_environment_variable_typo_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, genopt: Callable[..., Result]
) -> None:
    monkeypatch.setenv("GENOPT_WAREHOUSE", str(tmp_path / "typo.duckdb"))
    out = genopt("rollout", "status", "triage")
    assert out.returncode == 2 and "no warehouse at" in out.stderr
    assert not (tmp_path / "typo.duckdb").exists()


def test_a_warehouse_with_only_spool_data_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, genopt: Callable[..., Result]
) -> None:
    """Pipelines ran, nothing ingested yet: the first read creates the warehouse, as before."""
    from prefect_genopt import spool
    from tests.warehouse.test_ingest import _feedback

    path = tmp_path / "w.duckdb"
    monkeypatch.setenv("GENOPT_WAREHOUSE", str(path))
    spool.append([_feedback(1, "0d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10")], Path(f"{path}.spool"))
    spool.close_all()
    assert not path.exists()
    out = genopt("sql", "select count(*) as n from pending_feedback", "--csv")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "n\n1\n" and path.exists()


def test_the_python_warehouse_still_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "new.duckdb"
    assert Warehouse(path).sql("select count(*) as n from runs") == [{"n": 0}]
    assert path.exists()


@pytest.mark.parametrize("query", ["", "   ", ";", "-- only a comment"])
def test_sql_without_a_statement_is_a_clear_error(
    query: str, tmp_path: Path, genopt: Callable[..., Result]
) -> None:
    path = tmp_path / "w.duckdb"
    assert genopt("--warehouse", str(path), "ingest").returncode == 0
    for write in ([], ["--write"]):
        out = genopt("--warehouse", str(path), "sql", query, *write)
        if not query.strip() or not write:
            assert out.returncode == 2, (query, write, out)
            assert "no SQL statement given" in out.stderr and "Traceback" not in out.stderr
        else:  # --write: a statement of comments only runs, and does nothing
            assert out.returncode == 0 and out.stdout == "OK\n"

"""genopt optimize and genopt proposals, run in this process through main()."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_genopt.cli import main
from tests.cli.conftest import Result


def test_optimize_refuses_bad_settings_before_starting(capsys: pytest.CaptureFixture) -> None:
    assert main(["optimize", "knob", "--minibatch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "invalid optimizer settings" in err and "minibatch_size" in err
    assert main(["optimize", "knob", "--settings", "{not json"]) == 2
    assert "--settings is neither a JSON object" in capsys.readouterr().err
    assert main(["optimize", "knob", "--settings", "[1]"]) == 2
    assert "--settings must be a JSON object" in capsys.readouterr().err


def test_optimize_then_list_show_and_reject(knob_runs: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["optimize", "knob", "--no-search", "--model", "scripted-opt/empty"]
    args += ["--response-format", "none"]
    assert main([*args, "--max-updates", "1"]) == 0  # a no-change row lists fine too
    assert "no_change" in capsys.readouterr().out
    args = ["optimize", "knob", "--no-search", "--model", "scripted-opt/follow"]
    args += ["--response-format", "none"]
    assert main([*args, "--max-updates", "1", "--editable", "level"]) == 0
    out = capsys.readouterr().out
    assert "1 proposal(s) from scripted-opt/follow" in out
    pid = out.split(":", 1)[0].strip()
    assert pid.startswith("pr_")

    assert main(["proposals", "knob"]) == 0
    table = capsys.readouterr().out
    assert pid in table and "proposed" in table and "level: 0.7" in table
    assert main(["proposals", "list", "knob"]) == 0
    assert capsys.readouterr().out == table

    assert main(["proposals", "show", pid]) == 0
    shown = capsys.readouterr().out
    assert "| `level` | 0.2 | 0.7 |" in shown and "Evidence runs:" in shown
    assert main(["proposals", "--json", "show", pid]) == 0
    assert [r["proposal_id"] for r in json.loads(capsys.readouterr().out)] == [pid]

    assert main(["proposals", "reject", pid]) == 2
    assert "give a reason" in capsys.readouterr().err
    assert main(["proposals", "reject", pid, "--reason", "not now", "--actor", "bob"]) == 0
    assert f"{pid}: rejected (not now)" in capsys.readouterr().out

    assert main(["proposals", "knob", "--status", "rejected", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["proposal_id"] for r in rows] == [pid]
    assert main(["proposals", "--markdown"]) == 0
    assert pid in capsys.readouterr().out
    assert main(["sql", "select count(*) as n from proposals where diff is null"]) == 0
    assert "\n1\n" in capsys.readouterr().out  # the no-change row: SQL NULL, not JSON null


def test_proposals_errors(warehouse_path: Path, genopt: Callable[..., Result]) -> None:
    assert genopt("ingest").returncode == 0  # the warehouse exists (a missing one: test_typos)
    out = genopt("proposals", "show", "pr_nope")
    assert out.returncode == 2 and "genopt proposals: error: no proposal 'pr_nope'" in out.stderr
    out = genopt("proposals", "show")  # the id is missing: argparse says so
    assert out.returncode == 2 and "required: ID" in out.stderr
    out = genopt("proposals", "knob", "extra")
    assert out.returncode == 2 and "unrecognized arguments: extra" in out.stderr


def test_optimize_without_evidence_is_a_clear_error(
    prefect_api: str, warehouse_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["ingest"]) == 0
    assert main(["optimize", "nothing-here", "--model", "scripted-opt/follow"]) == 2
    assert (
        "unknown pipeline 'nothing-here'; the warehouse has no pipeline" in capsys.readouterr().err
    )

"""The genopt command, as a user runs it (a real subprocess where it matters)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_genopt.cli import main
from tests import pipelines as p


def genopt(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prefect_genopt.cli", *args],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.fixture
def one_run(prefect_api: str, warehouse_path: Path) -> str:
    p.triage(["refund my invoice"])
    import prefect_genopt as genopt

    return genopt.Warehouse().sql("SELECT run_id FROM runs")[0]["run_id"]


def test_help_lists_the_verbs() -> None:
    out = genopt("--help")
    assert out.returncode == 0
    for verb in ("sql", "feedback", "ingest", "status", "serve"):
        assert verb in out.stdout
    assert "--warehouse" in out.stdout and "GENOPT_WAREHOUSE" in out.stdout
    fb = genopt("feedback", "--help").stdout
    for opt in ("--comment", "--item-key", "--source", "--idempotency-key"):
        assert opt in fb


def test_sql_table_json_csv(one_run: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "select run_id, pipeline, status from runs"]) == 0
    out = capsys.readouterr().out
    assert one_run in out and "completed" in out and "(1 row)" in out
    assert main(["sql", "select run_id, kpis from run_summary", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["run_id"] == one_run and json.loads(rows[0]["kpis"]) == {"accuracy": 0.8}
    assert main(["sql", "select pipeline, count(*) as n from spans group by 1", "--csv"]) == 0
    assert list(csv.reader(io.StringIO(capsys.readouterr().out)))[0] == ["pipeline", "n"]


def test_sql_is_read_only_unless_asked(one_run: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "delete from runs"]) == 2
    assert "read-only" in capsys.readouterr().err.lower()
    assert main(["sql", "select count(*) as n from runs"]) == 0
    assert "1" in capsys.readouterr().out


def test_feedback_from_the_shell(one_run: str, child_env: dict[str, str]) -> None:
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
    first, second = genopt(*args, env=child_env), genopt(*args, env=child_env)
    assert first.returncode == 0, first.stderr
    assert "recorded" in first.stdout and second.returncode == 0
    rows = json.loads(
        genopt(
            "sql",
            "select kpi, value, comment, source, item_key from feedback where kpi = 'csat'",
            "--json",
            env=child_env,
        ).stdout
    )
    assert rows == [
        {
            "kpi": "csat",
            "value": 4.0,
            "comment": "slow",
            "source": "ops",
            "item_key": "refund my invoice",
        }
    ]
    text_only = genopt("feedback", one_run, "review", "--comment", "fine", env=child_env)
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
    one_run: str, child_env: dict[str, str], args: list[str], message: str
) -> None:
    out = genopt("feedback", one_run, *args, env=child_env)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_feedback_for_unknown_run(child_env: dict[str, str]) -> None:
    out = genopt("feedback", "00000000-0000-0000-0000-000000000000", "csat", "3", env=child_env)
    assert out.returncode == 2 and "no flow run" in out.stderr
    out = genopt("feedback", "not-a-uuid", "csat", "3", env=child_env)
    assert out.returncode == 2 and "not a Prefect flow-run id" in out.stderr


def test_warehouse_option_and_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "elsewhere.duckdb"
    assert main(["--warehouse", str(path), "ingest"]) == 0
    assert "ingested 0 records" in capsys.readouterr().out
    assert path.exists()
    assert main(["--warehouse", str(path), "status"]) == 0
    out = capsys.readouterr().out
    assert str(path) in out and "dropped_spans: 0" in out and "backlog:" in out


def test_sql_errors_are_clear(warehouse_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sql", "select * from no_such_table"]) == 2
    err = capsys.readouterr().err
    assert "SQL error" in err and "no_such_table" in err


# -- optimize and proposals ------------------------------------------------------------------


@pytest.fixture
def knob_runs(prefect_api: str, warehouse_path: Path) -> Path:
    from tests.optimize import scripted

    scripted.knob([f"item-{i}" for i in range(4)])
    return warehouse_path


def test_optimize_and_proposals_help() -> None:
    out = genopt("optimize", "--help")
    assert out.returncode == 0
    for opt in ("--minibatch-size", "--max-updates", "--budget-usd", "--model", "--editable"):
        assert opt in out.stdout
    assert "GENOPT_MODEL" in out.stdout
    out = genopt("proposals", "--help")
    assert out.returncode == 0 and "PIPELINE | show ID | reject ID" in out.stdout


def test_optimize_refuses_bad_settings_before_starting(capsys: pytest.CaptureFixture) -> None:
    assert main(["optimize", "knob", "--minibatch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "invalid optimizer settings" in err and "minibatch_size" in err
    assert main(["optimize", "knob", "--settings", "{not json"]) == 2
    assert "--settings is not a JSON object" in capsys.readouterr().err


def test_optimize_then_list_show_and_reject(knob_runs: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["optimize", "knob", "--model", "scripted-opt/empty", "--response-format", "none"]
    assert main([*args, "--max-updates", "1"]) == 0  # a no-change row lists fine too
    assert "no_change" in capsys.readouterr().out
    args = ["optimize", "knob", "--model", "scripted-opt/follow", "--response-format", "none"]
    assert main([*args, "--max-updates", "1", "--editable", "level"]) == 0
    out = capsys.readouterr().out
    assert "1 proposal(s) from scripted-opt/follow" in out
    pid = out.split(":", 1)[0].strip()
    assert pid.startswith("pr_")

    assert main(["proposals", "knob"]) == 0
    table = capsys.readouterr().out
    assert pid in table and "proposed" in table and "level: 0.7" in table

    assert main(["proposals", "show", pid]) == 0
    shown = capsys.readouterr().out
    assert "| `level` | 0.2 | 0.7 |" in shown and "Evidence runs:" in shown

    assert main(["proposals", "reject", pid]) == 2
    assert "give a reason" in capsys.readouterr().err
    assert main(["proposals", "reject", pid, "--reason", "not now", "--actor", "bob"]) == 0
    assert f"{pid}: rejected (not now)" in capsys.readouterr().out

    assert main(["proposals", "knob", "--status", "rejected", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["proposal_id"] for r in rows] == [pid]
    assert main(["sql", "select count(*) as n from proposals where diff is null"]) == 0
    assert "\n1\n" in capsys.readouterr().out  # the no-change row: SQL NULL, not JSON null


def test_optimize_without_evidence_is_a_clear_error(
    prefect_api: str, warehouse_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["optimize", "nothing-here", "--model", "scripted-opt/follow"]) == 2
    assert "pipeline 'nothing-here' has no runs" in capsys.readouterr().err


def test_rollout_help_documents_the_verbs_and_defaults() -> None:
    out = genopt("rollout", "--help")
    assert out.returncode == 0
    for word in ("start", "status", "analyze", "promote", "abort", "pause", "resume", "pin"):
        assert word in out.stdout
    assert "alpha 0.01" in out.stdout and "--fast" in out.stdout


def test_rollout_verbs_from_the_command_line(
    pipeline_name: str, warehouse_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.rollout.pipelines import KnobParams, make_pipeline

    knob = make_pipeline(pipeline_name)
    knob(n=20, batch=0)
    candidate = tmp_path / "candidate.json"
    candidate.write_text('{"quality": 0.9}')
    start = ["rollout", "start", pipeline_name, "--params", str(candidate), "--kpi", "ok"]
    assert main([*start, "--fast", "--reason", "hand-tuned"]) == 0
    out = capsys.readouterr().out
    assert f"pipeline {pipeline_name}: running" in out and "weight 30%" in out
    assert main(start) == 2
    assert "already running" in capsys.readouterr().err

    knob(n=20, batch=1)
    assert main(["rollout", "analyze", pipeline_name, "--json"]) == 0
    check = json.loads(capsys.readouterr().out)
    assert check["decision"] in ("continue", "advance") and check["applied"]
    # the 20 items of the run since the start (the run before it is not measured)
    assert check["assessment"]["stable"]["n"] + check["assessment"]["canary"]["n"] == 20

    assert main(["rollout", "pause", pipeline_name]) == 2
    assert "give a reason" in capsys.readouterr().err
    assert main(["rollout", "pin", pipeline_name, "--reason", "x"]) == 2
    assert "usage: genopt rollout pin" in capsys.readouterr().err
    stable_id = KnobParams().param_set_id
    assert main(["rollout", "pin", pipeline_name, stable_id, "--reason", "incident 7"]) == 0
    assert f"PINNED  every item uses {stable_id}" in capsys.readouterr().out
    assert main(["rollout", "unpin", pipeline_name, "--reason", "ok"]) == 0
    capsys.readouterr()
    assert main(["rollout", "abort", pipeline_name, "--reason", "enough", "--actor", "ci"]) == 0
    capsys.readouterr()
    assert main(["rollout", "status", pipeline_name, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"]["status"] == "idle" and status["state"]["last_outcome"] == "aborted"
    kinds = [e["kind"] for e in status["events"]]
    assert kinds[:3] == ["abort", "unpin", "pin"] and kinds[-1] == "started"


def test_rollout_verbs_from_a_shell_send_their_events_before_exit(
    pipeline_name: str, warehouse_path: Path, child_env: dict[str, str]
) -> None:
    """A verb emits a Prefect event; the command waits for it to be sent, so Prefect's
    exit-time drain has nothing to warn about."""
    from tests.rollout.pipelines import KnobParams, make_pipeline

    make_pipeline(pipeline_name)(n=2, batch=0)
    stable_id = KnobParams().param_set_id
    for verb in (["pin", pipeline_name, stable_id], ["unpin", pipeline_name]):
        out = genopt("rollout", *verb, "--reason", "from a shell", env=child_env)
        assert out.returncode == 0, out.stderr
        assert "Still processing items" not in out.stderr + out.stdout
    assert "last decision: unpin: unpinned" in out.stdout


def test_rollout_start_refuses_a_bad_params_file(
    pipeline_name: str, warehouse_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.rollout.pipelines import make_pipeline

    make_pipeline(pipeline_name)(n=2, batch=0)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["rollout", "start", pipeline_name, "--params", str(bad), "--kpi", "ok"]) == 2
    assert "neither a JSON object nor a readable JSON file" in capsys.readouterr().err
    args = ["rollout", "start", pipeline_name, "--params", '{"quality": 0.9}', "--kpi", "ok"]
    assert main([*args, "--steps", "50,10"]) == 2
    assert "steps must increase" in capsys.readouterr().err


def test_experiences_harvest_and_list(
    prefect_api: str, warehouse_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.replay.pipelines import replayer

    replayer([["C1", "my invoice", "billing"], ["C2", "what is this", "bug"]])
    assert main(["experiences", "harvest", "replayer"]) == 2
    assert "needs --kpi" in capsys.readouterr().err
    assert main(["experiences", "harvest", "replayer", "--kpi", "correct"]) == 0
    assert "1 verified, 0 rejected, 0 refused" in capsys.readouterr().out
    assert main(["experiences", "list", "replayer"]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "item C1" in out and "replayed 0x" in out
    assert main(["experiences", "harvest", "replayer", "--kpi", "nope"]) == 2
    assert "no feedback on KPI 'nope'" in capsys.readouterr().err


def test_optimize_harvests_first_when_asked(
    prefect_api: str, warehouse_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.optimize import scripted  # noqa: F401  (registers scripted-opt)
    from tests.replay.pipelines import replayer

    replayer([["H1", "my invoice", "billing"], ["H2", "what is this", "bug"]])
    settings = '{"model": "scripted-opt/demos", "response_format": "none", "max_updates": 1}'
    args = ["optimize", "replayer", "--editable", "examples", "--settings", settings]
    assert main([*args, "--harvest", "nope"]) == 2
    assert "no feedback on KPI 'nope'" in capsys.readouterr().err
    assert main([*args, "--harvest", "correct"]) == 0
    out = capsys.readouterr().out
    assert "harvested 1 verified, 0 rejected, 0 refused experience(s)" in out
    assert "proposal(s) from scripted-opt/demos" in out

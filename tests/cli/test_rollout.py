"""genopt rollout: the verbs in this process through main(), and one run of the installed
script (smoke test 2 of 2: a verb's Prefect events are sent before the process exits)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_genopt.cli import main


def test_rollout_verbs_from_the_command_line(
    pipeline_name: str, warehouse_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.rollout.pipelines import KnobParams, make_pipeline

    knob = make_pipeline(pipeline_name)
    knob(n=20, batch=0)
    candidate = tmp_path / "candidate.json"
    candidate.write_text('{"quality": 0.9}')
    start = ["rollout", "start", pipeline_name, "--params", str(candidate), "--kpi", "ok"]
    start.append("--no-gate")  # a flow made in a function: the replay gate cannot import it
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
    # options before the verb apply to it
    assert main(["rollout", "--json", "status", pipeline_name]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"]["status"] == "idle" and status["state"]["last_outcome"] == "aborted"
    kinds = [e["kind"] for e in status["events"]]
    assert kinds[:3] == ["abort", "unpin", "pin"] and kinds[-1] == "started"
    abort = next(e for e in status["events"] if e["kind"] == "abort")
    assert abort["actor"] == "ci" and abort["reason"].endswith("enough")
    assert main(["rollout", "status", pipeline_name]) == 0
    assert "last decision: abort" in capsys.readouterr().out


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
    assert main(["rollout", "start", pipeline_name, "--kpi", "ok"]) == 2
    assert "give exactly one of --proposal ID or --params" in capsys.readouterr().err
    assert main([*args, "--plan", "[1]"]) == 2
    assert "--plan must be a JSON object" in capsys.readouterr().err


def test_rollout_verbs_from_a_shell_send_their_events_before_exit(
    pipeline_name: str, warehouse_path: Path, child_env: dict[str, str]
) -> None:
    """A verb emits a Prefect event; the command waits for it to be sent, so Prefect's
    exit-time drain has nothing to warn about (this needs a process that exits)."""
    from tests.rollout.pipelines import KnobParams, make_pipeline

    make_pipeline(pipeline_name)(n=2, batch=0)
    script = Path(sys.executable).with_name("genopt")
    stable_id = KnobParams().param_set_id
    pin = ["rollout", "--reason", "from a shell", "pin", pipeline_name, stable_id]
    out = subprocess.run([str(script), *pin], capture_output=True, text=True, env=child_env)
    assert out.returncode == 0, out.stderr
    assert "Still processing items" not in out.stderr + out.stdout
    assert f"PINNED  every item uses {stable_id}" in out.stdout
    assert main(["rollout", "unpin", pipeline_name, "--reason", "done"]) == 0

"""genopt experiences (and optimize --harvest), run in this process through main()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefect_genopt.cli import main


def test_experiences_harvest_and_list(
    prefect_api: str, warehouse_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.replay.pipelines import replayer

    assert main(["ingest"]) == 0
    assert main(["experiences", "list", "replayer"]) == 2  # a pipeline the warehouse never saw
    assert "unknown pipeline 'replayer'" in capsys.readouterr().err
    replayer([["C1", "my invoice", "billing"], ["C2", "what is this", "bug"]])
    assert main(["experiences", "list", "replayer"]) == 0
    assert "no experiences for 'replayer' yet" in capsys.readouterr().out
    assert main(["experiences", "harvest", "replayer"]) == 2
    assert "needs --kpi" in capsys.readouterr().err
    assert main(["experiences", "harvest", "replayer", "--kpi", "correct"]) == 0
    assert "1 verified, 0 rejected, 0 refused" in capsys.readouterr().out
    assert main(["experiences", "list", "replayer"]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "item C1" in out and "replayed 0x" in out
    assert main(["experiences", "--json", "list", "replayer"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["item_key"], r["status"], r["replays"]) for r in rows] == [("C1", "verified", 0)]
    assert main(["experiences", "harvest", "replayer", "--kpi", "nope"]) == 2
    assert "no feedback on KPI 'nope'" in capsys.readouterr().err


def test_optimize_harvests_first_when_asked(
    prefect_api: str, warehouse_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.optimize import scripted  # noqa: F401  (registers scripted-opt)
    from tests.replay.pipelines import replayer

    replayer([["H1", "my invoice", "billing"], ["H2", "what is this", "bug"]])
    settings = (
        '{"model": "scripted-opt/demos", "response_format": "none", "max_updates": 1, '
        '"search": false}'
    )
    args = ["optimize", "replayer", "--editable", "examples", "--settings", settings]
    assert main([*args, "--harvest", "nope"]) == 2
    assert "no feedback on KPI 'nope'" in capsys.readouterr().err
    assert main([*args, "--harvest", "correct"]) == 0
    out = capsys.readouterr().out
    assert "harvested 1 verified, 0 rejected, 0 refused experience(s)" in out
    assert "proposal(s) from scripted-opt/demos" in out

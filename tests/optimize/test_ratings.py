"""Ratings of proposals and the Retroformer memory: best- and worst-rated reflections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefect_genopt.cli import main
from prefect_genopt.optimize.memory import memory
from prefect_genopt.optimize.proposals import record_proposal
from prefect_genopt.optimize.ratings import rate, reflections
from prefect_genopt.warehouse import Warehouse


def _proposal(wh: Warehouse, i: int) -> str:
    pid = f"pr_2026120100000{i}_abcdef"
    record_proposal(
        wh,
        {
            "proposal_id": pid,
            "pipeline": "triage",
            "created_at": f"2026-12-01T00:00:0{i}",
            "status": "proposed",
            "kpi": "correct",
            "direction": "higher",
            "reasoning": f"reflection {i}",
            "diff": {"prompt": {"from": "a", "to": f"b{i}"}},
            "suggestion": {"prompt": f"b{i}"},
            "candidate_param_set_id": f"ps_{i:016d}",
            "evidence_run_ids": [f"run-{i}"],
            "evidence_kpi_mean": 0.5,
            "evidence_units": 4,
        },
        {"prompt": f"b{i}"},
        1,
    )
    return pid


@pytest.fixture
def rated(warehouse_path: Path) -> Warehouse:
    """Six proposals: five rated (+20%, +5%, -1%, -10%, -30%), one not."""
    wh = Warehouse()
    effects = {1: 0.20, 2: 0.05, 3: -0.01, 4: -0.10, 5: -0.30}
    for i in range(1, 7):
        pid = _proposal(wh, i)
        if i in effects:
            source = "canary" if i % 2 else "replay_gate"
            rate(
                wh, pid, "triage", source, "x", "correct", "higher", effects[i], effects[i], 50, 40
            )
    rate(
        wh,
        "pr_20261201000001_abcdef",
        "triage",
        "replay_gate",
        "gate_passed",
        "correct",
        "higher",
        -0.5,
        -0.5,
        8,
        8,
    )  # the canary's rating wins over the gate's
    wh.ingest()
    return Warehouse()


def test_memory_shows_the_best_and_the_worst_rated_reflections(rated: Warehouse) -> None:
    entries = memory(rated, "triage", 4)
    assert [e.reasoning for e in entries] == [
        "reflection 1",  # +20%
        "reflection 2",  # +5%
        "reflection 4",  # -10%
        "reflection 5",  # -30%
    ]
    assert (
        entries[0].outcome and "rated by its canary: correct +20.0% vs stable" in entries[0].outcome
    )
    # fewer rated proposals than slots: the most recent unrated one fills in
    more = memory(rated, "triage", 7)
    assert [e.reasoning for e in more][-1] == "reflection 6" and len(more) == 6
    assert memory(rated, "other-pipeline", 3) == []


def test_export_reflections_as_jsonl(
    rated: Warehouse, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = list(reflections(rated, "triage"))
    assert len(records) == 5 and records[0]["rating"]["source"] == "canary"
    out = tmp_path / "reflections.jsonl"
    assert main(["export", "reflections", "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 5
    first = lines[0]
    assert first["reflection"] == "reflection 1"
    assert first["evidence"]["run_ids"] == ["run-1"] and first["evidence"]["kpi"] == "correct"
    assert first["rating"]["relative_effect"] == 0.2 and first["suggestion"] == {"prompt": "b1"}
    capsys.readouterr()
    assert main(["export", "reflections", "--pipeline", "nothing"]) == 2  # a typo, said so
    out = capsys.readouterr()
    assert out.out == "" and "unknown pipeline 'nothing'; known: triage" in out.err

"""The optimizer's own instruction, tuned offline from rated reflections."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from prefect_genopt import spool
from prefect_genopt.optimize import optimize
from prefect_genopt.optimize.instruction import current_instruction, tune_instruction
from prefect_genopt.optimize.optoprime import INSTRUCTION
from prefect_genopt.records import row_record
from prefect_genopt.warehouse import Warehouse
from prefect_genopt.warehouse.schema import utcnow
from tests.optimize import scripted
from tests.optimize.test_ratings import rated  # noqa: F401  (fixture: 5 rated proposals)
from tests.optimize.test_runner import knob_runs, settings  # noqa: F401

META = {"model": "scripted-opt/meta", "response_format": "none"}


def test_the_instruction_is_tuned_every_k_rated_proposals(rated: Warehouse) -> None:  # noqa: F811
    assert current_instruction(rated, "triage") == (None, INSTRUCTION)
    not_due = tune_instruction("triage", every=6, **META)
    assert not_due.status == "not_due" and "5 new rated proposal(s)" in not_due.reason
    tuned = tune_instruction("triage", every=5, **META)
    assert tuned.status == "tuned" and tuned.n_ratings == 5 and tuned.tokens > 0
    wh = Warehouse()
    iid, text = current_instruction(wh, "triage")
    assert iid == tuned.instruction_id and text.startswith(INSTRUCTION)
    # the best-rated reflection (+20%, from its canary) is the lesson the scripted model took
    assert text.endswith("Lesson from the best-rated proposals: reflection 1.")
    (row,) = wh.sql("SELECT parent_id, n_ratings, model FROM optimizer_instructions")
    assert (row["parent_id"], row["n_ratings"], row["model"]) == (None, 5, "scripted-opt/meta")
    prompt = scripted.PROMPTS["meta"][-1][-1]["content"]
    assert "best rated: KPI +20.0%" in prompt and "worst rated: KPI -30.0%" in prompt
    # no new rating since: not due again
    assert tune_instruction("triage", every=5, **META).status == "not_due"


def test_a_tuned_instruction_that_drops_the_sections_is_rejected(
    rated: Warehouse,  # noqa: F811
) -> None:
    result = tune_instruction(
        "triage", force=True, model="scripted-opt/unknown-plus", response_format="none"
    )
    assert result.status == "rejected" and "unusable answer" in result.reason
    assert not Warehouse().sql("SELECT 1 FROM optimizer_instructions")


def test_the_runner_follows_the_pipelines_tuned_instruction(knob_runs: Path) -> None:  # noqa: F811
    wh = Warehouse()
    custom = INSTRUCTION + " Always name the variable you change first."
    spool.append(
        [
            row_record(
                "optimizer_instructions",
                {
                    "instruction_id": "oi_custom",
                    "pipeline": "knob",
                    "created_at": utcnow().isoformat(),
                    "instruction": custom,
                    "n_ratings": 5,
                },
            )
        ],
        wh.spool_dir,
    )
    wh.ingest()
    scripted.PROMPTS.pop("follow", None)
    result = optimize(settings(max_updates=1))
    assert (
        "Always name the variable you change first." in scripted.PROMPTS["follow"][0][-1]["content"]
    )
    (p,) = Warehouse().sql("SELECT settings FROM proposals")
    assert orjson.loads(p["settings"])["instruction_id"] == "oi_custom"
    assert result.updates


def test_cli_shows_and_tunes_the_instruction(
    rated: Warehouse,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect_genopt.cli import main

    assert main(["instruction", "show", "triage"]) == 0
    assert "default instruction (never tuned)" in capsys.readouterr().out
    assert (
        main(["instruction", "tune", "triage", "--every", "9", "--model", "scripted-opt/meta"]) == 0
    )
    assert capsys.readouterr().out.startswith("not_due: 5 new rated")
    monkeypatch.setenv("GENOPT_RESPONSE_FORMAT", "none")
    assert main(["instruction", "tune", "triage", "--force", "--model", "scripted-opt/meta"]) == 0
    assert capsys.readouterr().out.startswith("tuned:")
    assert main(["instruction", "show", "triage"]) == 0
    assert "Lesson from the best-rated proposals" in capsys.readouterr().out

"""The BBH headroom probe (``bench/bench_bbh_headroom.py``) with the scripted task model:
its parser, its resumable results, and its bad-input exit."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from bench import bench_bbh_headroom as hr


def test_doctests() -> None:
    assert doctest.testmod(hr).failed == 0


def test_quick_run_saves_each_task_with_its_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_BENCH_WORK", str(tmp_path))
    assert hr.main(["--quick", "--tasks", "navigate,snarks"]) == 0
    saved = json.loads((tmp_path / "results" / "bbh_headroom.quick.json").read_text())
    assert set(saved["tasks"]) == {"navigate", "snarks"}
    for task, v in saved["tasks"].items():
        assert len(v["items"]) == hr.QUICK_ITEMS
        assert all(r["id"].startswith(task) for r in v["items"])
        s = saved["summary"][task]
        assert s["n"] == hr.QUICK_ITEMS and s["concluded@256"] == 1.0
        assert s["wins"] + s["losses"] <= s["n"] and 0.0 < s["p_one_sided"] <= 1.0
    assert saved["summary"]["pooled"]["n"] == 2 * hr.QUICK_ITEMS


def test_steps_are_scored_on_their_conclusion_not_their_first_word() -> None:
    reply = "Yes, I turn. No, I do not return. So the answer is No."
    assert hr.final_answer("navigate", reply) == "no"
    assert hr.final_answer("navigate", "Yes, it is plausible.") == "yes"


def test_a_full_run_resumes_skipping_the_tasks_already_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full run (here on synthetic items, with the scripted model in the embedded one's
    place) keeps a saved task as it is and runs only the others."""
    from bench import bbh_harness as h

    monkeypatch.setenv("GENOPT_BENCH_RESULTS", str(tmp_path))
    monkeypatch.setattr(h, "load_task", lambda task: h.synthetic_task(task, 150))
    real = h.Models
    monkeypatch.setattr(
        h, "Models", lambda cache: real(cache, quick=True, task_answer=hr._quick_steps_answer)
    )
    path = tmp_path / "bbh_headroom.json"
    assert hr.main(["--tasks", "navigate", "--items", "3"]) == 0
    first = json.loads(path.read_text())
    first["tasks"]["navigate"]["marker"] = "kept"  # what a rerun must not redo
    path.write_text(json.dumps(first))
    assert hr.main(["--tasks", "navigate,snarks", "--items", "3"]) == 0
    again = json.loads(path.read_text())
    assert again["tasks"]["navigate"]["marker"] == "kept"
    assert len(again["tasks"]["snarks"]["items"]) == 3
    assert again["summary"]["pooled"]["n"] == 6


@pytest.mark.parametrize("argv", [["--tasks", "chess"], ["--items", "0"]])
def test_bad_input_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert hr.main(argv) == 2
    assert "unknown tasks" in capsys.readouterr().err

"""Progress of long commands: a rich bar with an ETA on a terminal, plain lines otherwise;
``genopt optimize`` and ``genopt experiences harvest`` show it on stderr."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_genopt.cli._progress import Progress, counts
from tests.cli.conftest import Result


def test_counts_take_the_stage_before_the_first_and_the_counts_of_the_last() -> None:
    assert counts("update 2/3: 4 units (a, b)") == ("update", 2, 3)
    assert counts("  replaying c_1 (drafts): 12/48 items, ETA 5s") == (
        "replaying c_1 (drafts)",
        12,
        48,
    )
    assert counts("evidence: 30 items") is None
    assert counts("weird 5/0 and 7/3") is None  # not a count of done/total


def test_plain_lines_are_throttled_and_carry_an_eta() -> None:
    out = io.StringIO()
    with Progress(out, tty=False, every=3600) as p:
        p.say("starting")
        for i in range(101):
            p.update("scoring", i, 100)
        p.say("halfway note")  # lines without counts always print
        p.say("update 1/2: 4 units")
        p.say("update 2/2: 4 units")
    lines = out.getvalue().splitlines()
    assert lines[0] == "starting"
    assert lines[1] == "scoring: 0/100"  # a new stage prints at once
    assert lines[2] == "scoring: 100/100"  # and its end; the 99 between are throttled
    assert lines[3] == "halfway note"
    assert lines[4] == "update 1/2: 4 units"
    assert lines[5].startswith("update 2/2: 4 units")
    assert len(lines) == 6


def test_a_plain_line_gets_an_eta_once_the_pace_is_known() -> None:
    out = io.StringIO()
    with Progress(out, tty=False, every=0) as p:
        p.update("checking runs", 0, 10)
        p.update("checking runs", 5, 10)
        p.say("draft 1/4 of prompt: 120 chars, ETA 9s")  # says its own ETA: not added
    lines = out.getvalue().splitlines()
    assert lines[0] == "checking runs: 0/10"
    assert lines[1].startswith("checking runs: 5/10 (ETA ") and lines[1].endswith("s)")
    assert lines[2] == "draft 1/4 of prompt: 120 chars, ETA 9s"


def test_on_a_terminal_a_bar_with_eta_is_drawn_and_lines_print_above_it() -> None:
    out = io.StringIO()
    with Progress(out, tty=True) as p:
        p.say("evidence: 30 items")
        p.say("update 1/2: 4 units (run a)")  # a new stage: its whole line shows too
        p.update("scoring", 3, 4)
        p.update("scoring", 4, 4)
    text = out.getvalue()
    assert "evidence: 30 items" in text
    assert "update 1/2: 4 units (run a)" in text
    assert "scoring" in text and "4/4" in text and "ETA" in text
    assert "\x1b[" in text  # drawn with terminal control sequences (rich), not plain lines
    assert "━" in text  # the bar


def test_genopt_optimize_shows_progress_on_stderr(
    knob_runs: Path, genopt: Callable[..., Result]
) -> None:
    out = genopt(
        "optimize",
        "knob",
        "--no-search",
        "--model",
        "scripted-opt/follow",
        "--response-format",
        "none",
        "--max-updates",
        "2",
        "--editable",
        "level",
    )
    assert out.returncode == 0, out.stderr
    assert "update 1/2: " in out.stderr  # counted lines (not a terminal: plain)
    assert "proposal(s) from scripted-opt/follow" in out.stdout


def test_genopt_experiences_harvest_shows_progress_on_stderr(
    prefect_api: str, warehouse_path: Path, genopt: Callable[..., Result]
) -> None:
    from tests.replay.pipelines import replayer

    replayer([["P1", "my invoice", "billing"], ["P2", "what is this", "bug"]])
    out = genopt("experiences", "harvest", "replayer", "--kpi", "correct")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == "checking runs: 0/2"
    assert lines[-1] == "checking runs: 2/2"


@pytest.mark.parametrize("quiet", [True, False])
def test_progress_to_stderr_restores_the_flow_logger(quiet: bool) -> None:
    import logging

    from prefect_genopt.cli.optimize import progress_to_stderr

    logger = logging.getLogger("prefect.flow_runs")
    before = (logger.level, logger.propagate, list(logger.handlers))
    with progress_to_stderr(quiet=quiet):
        pass
    assert (logger.level, logger.propagate, list(logger.handlers)) == before


def test_genopt_optimize_shows_the_llm_heartbeat(
    knob_runs: Path, genopt: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow optimizer call says it is still waiting, through the flow run's log."""
    from prefect_genopt import testing

    monkeypatch.setenv("GENOPT_LLM_HEARTBEAT", "0.1")
    testing.register("slowcli", testing.scripted_optimizer, delay=0.5)
    try:
        out = genopt(
            "optimize",
            "knob",
            "--no-search",
            "--model",
            "slowcli/follow",
            "--response-format",
            "none",
            "--max-updates",
            "1",
            "--editable",
            "level",
        )
    finally:
        testing.unregister("slowcli")
    assert out.returncode == 0, out.stderr
    assert "still waiting for slowcli/follow (" in out.stderr


def test_one_bar_while_the_total_holds_and_the_count_goes_on() -> None:
    out = io.StringIO()
    with Progress(out, tty=False, every=3600) as p:
        for i, section in enumerate(["kpis", "rollouts", "proposals", "usage"], 1):
            p.say(f"read {section}: {i}/4 sections")  # the text changes, the count goes on
        p.say("replaying c_1 (drafts): 48/48 items")
        p.say("replaying c_2 (drafts): 1/48 items")  # the count went back: a new bar
        p.say("replaying c_2 (drafts): 2/48 items")
    assert out.getvalue().splitlines() == [
        "read kpis: 1/4 sections",
        "read usage: 4/4 sections",
        "replaying c_1 (drafts): 48/48 items",
        "replaying c_2 (drafts): 1/48 items",
    ]

"""genopt optimize's options for the search: their help, their mapping onto
OptimizerSettings, a clear exit 2 on each bad value, and a night run from the shell."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_genopt.cli import main
from prefect_genopt.cli._app import build_parser
from prefect_genopt.cli.optimize import settings_from_args
from prefect_genopt.optimize.config import OptimizerSettings
from tests.cli.conftest import Result

#: option -> (a good value, the OptimizerSettings field and value it sets, a default in help)
OPTIONS = {
    "--evidence-items": ("12", ("evidence_items", 12), "default 30"),
    "--selection-items": ("24", ("selection_items", 24), "default 48"),
    "--confirmation-items": ("80", ("confirmation_items", 80), "default 150"),
    "--drafts": ("6", ("n_drafts", 6), "default 4"),
    "--demo-sets": ("3", ("n_demo_sets", 3), "default 6"),
    "--confirm-alpha": ("0.01", ("confirm_alpha", 0.01), "default 0.05"),
    "--task-call-budget": ("700", ("task_call_budget", 700), "default 2000"),
    "--optimizer-call-budget": ("12", ("optimizer_call_budget", 12), "default 12"),
}
#: option -> bad values and the message each gives
BAD = {
    "--evidence-items": (["0", "x"], "must be a whole number >= 1"),
    "--selection-items": (["1", "-3"], "must be a whole number >= 2"),
    "--confirmation-items": (["1", "1.5"], "must be a whole number >= 2"),
    "--drafts": (["-1", "two"], "must be a whole number >= 0"),
    "--demo-sets": (["-2"], "must be a whole number >= 0"),
    "--confirm-alpha": (["0", "1", "1.2", "p"], "must be a number between 0 and 1 (exclusive)"),
    "--task-call-budget": (["0"], "must be a whole number >= 1"),
    "--optimizer-call-budget": (["0", "lots"], "must be a whole number >= 1"),
}


def _help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(["optimize", "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_each_search_option_says_its_meaning_and_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = _help(capsys)
    section = text.split("the search:", 1)[1].split("examples:", 1)[0]  # the option group
    assert "--no-search today's single-shot path" in section and "default: the search" in section
    for option, (_, (field, _), default) in OPTIONS.items():
        start = section.index(option)
        assert default in section[start : start + 200], option
        # the help's default is the settings' default (the help is written without importing
        # them, so a changed default must show here)
        assert default == f"default {OptimizerSettings.model_fields[field].default:g}", option


def test_the_options_set_the_settings_of_the_same_meaning() -> None:
    parser = build_parser()
    args = parser.parse_args(["optimize", "triage"])
    assert "search" not in settings_from_args(args)  # the default: the search is on
    argv = ["optimize", "triage", "--no-search"]
    for option, (value, _, _) in OPTIONS.items():
        argv += [option, value]
    got = settings_from_args(parser.parse_args(argv))
    assert got.pop("search") is False
    assert got == dict(field for _, field, _ in OPTIONS.values())
    # options win over --settings
    argv = ["optimize", "triage", "--settings", '{"n_drafts": 9, "pool_runs": 80}', "--drafts", "2"]
    assert settings_from_args(parser.parse_args(argv)) == {"n_drafts": 2, "pool_runs": 80}


@pytest.mark.parametrize("option", sorted(BAD))
def test_a_bad_value_exits_2_with_a_clear_message(
    option: str, genopt: Callable[..., Result]
) -> None:
    values, message = BAD[option]
    for value in values:
        out = genopt("optimize", "triage", option, value)
        assert out.returncode == 2, (option, value)
        assert f"argument {option}: {message}, got {value!r}" in out.stderr, out.stderr


def test_settings_the_options_cannot_check_are_refused_before_starting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["optimize", "triage", "--settings", '{"pool_runs": 0}']) == 2
    err = capsys.readouterr().err
    assert "invalid optimizer settings" in err and "pool_runs" in err


def test_a_night_from_the_shell_says_how_many_more_items_it_needs(
    prefect_api: str, warehouse_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from flows.examples.triage import triage
    from tests.optimize import scripted  # noqa: F401  (registers scripted-opt)

    triage(n=8, seed=0)
    capsys.readouterr()
    argv = ["optimize", "triage", "--model", "scripted-opt/follow", "--response-format", "none"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "0 proposal(s) from scripted-opt/follow" in out.out
    assert "too few labelled items" in out.out and "more labelled item(s)" in out.out
    assert "pools from 1 run(s)" in out.err  # progress on stderr

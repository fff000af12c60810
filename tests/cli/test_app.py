"""The parser and the entry point, without a Prefect API: help, command forms, settings."""

from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_genopt.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


def help_of(*args: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main([*args, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_of(capsys=capsys)
    for command in ("sql", "feedback", "ingest", "status", "serve", "optimize", "proposals"):
        assert command in out
    for command in ("rollout", "export", "experiences", "instruction"):
        assert command in out
    assert "--warehouse" in out and "GENOPT_WAREHOUSE" in out
    fb = help_of("feedback", capsys=capsys)
    for opt in ("--comment", "--item-key", "--source", "--idempotency-key"):
        assert opt in fb


def test_optimize_and_proposals_help(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_of("optimize", capsys=capsys)
    for opt in ("--minibatch-size", "--max-updates", "--budget-usd", "--model", "--editable"):
        assert opt in out
    assert "GENOPT_MODEL" in out
    out = help_of("proposals", capsys=capsys)
    assert "[list] [PIPELINE] | show ID | reject ID" in out
    for verb in ("list", "show", "reject"):
        assert re.search(rf"^\s+{verb}\s", out, re.M)


def test_rollout_help_documents_the_verbs_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_of("rollout", capsys=capsys)
    for word in ("start", "status", "analyze", "promote", "abort", "pause", "resume", "pin"):
        assert re.search(rf"^\s+{word}\s", out, re.M)
    assert "alpha 0.01" in out and "--fast" in out and "exit codes" in out


START_ONLY = ("--proposal", "--params", "--steps", "--tolerance", "--fast", "--no-gate", "--plan")


def test_a_verb_help_shows_its_own_options_only(capsys: pytest.CaptureFixture[str]) -> None:
    start = help_of("rollout", "start", capsys=capsys)
    assert "usage: genopt rollout start" in start
    for opt in (*START_ONLY, "--gate-runs", "--reason", "--actor", "--json"):
        assert opt in start
    assert "exit codes" in start and "alpha 0.01" in start
    status = help_of("rollout", "status", capsys=capsys)
    assert "usage: genopt rollout status" in status and "--json" in status
    for opt in (*START_ONLY, "--reason", "--actor", "--gate-runs"):
        assert opt not in status
    abort = help_of("rollout", "abort", capsys=capsys)
    assert "--reason" in abort and "--actor" in abort
    assert not any(opt in abort for opt in START_ONLY)
    # the group's own help lists verbs, not every verb's options
    group = help_of("rollout", capsys=capsys)
    assert "--gate-runs" not in group and "--tolerance-mode" not in group
    tune = help_of("instruction", "tune", capsys=capsys)
    assert "--every" in tune and "--force" in tune
    assert "--every" not in help_of("instruction", "show", capsys=capsys)
    harvest = help_of("experiences", "harvest", capsys=capsys)
    assert "--threshold" in harvest and "--limit" not in harvest
    assert "--threshold" not in help_of("experiences", "list", capsys=capsys)
    reject = help_of("proposals", "reject", capsys=capsys)
    assert "--reason" in reject and "--status" not in reject


def parse(line: str) -> dict[str, object]:
    return vars(build_parser().parse_args(shlex.split(line)))


def test_options_before_the_verb_apply_to_it() -> None:
    a = parse("rollout --json status triage")
    assert (a["command"], a["verb"], a["pipeline"], a["json"]) == (
        "rollout",
        "status",
        "triage",
        True,
    )
    assert parse("rollout status triage")["json"] is False
    a = parse("rollout --reason 'incident 7' --actor ops abort triage")
    assert (a["verb"], a["reason"], a["actor"]) == ("abort", "incident 7", "ops")
    a = parse("rollout --kpi ok --fast start triage --params '{}' --gate-runs 3")
    assert (a["kpi"], a["fast"], a["params"], a["gate_runs"]) == ("ok", True, "{}", 3)
    assert parse("rollout start triage --proposal p")["gate_runs"] == 1  # the default
    # given to both, the verb's own wins
    assert parse("rollout --actor a abort triage --actor b")["actor"] == "b"
    a = parse("proposals --status proposed --json triage")
    assert (a["verb"], a["pipeline"], a["status"], a["json"]) == (
        "list",
        "triage",
        "proposed",
        True,
    )
    a = parse("experiences --kpi correct harvest triage")
    assert (a["verb"], a["kpi"], a["direction"]) == ("harvest", "correct", "higher")
    a = parse("export --out r.jsonl reflections")
    assert (a["verb"], a["out"]) == ("reflections", "r.jsonl")
    a = parse("instruction --force tune triage")
    assert (a["verb"], a["force"], a["every"]) == ("tune", True, 5)


@pytest.mark.parametrize(
    ("line", "expect"),
    [
        ('sql "select 1" --json', {"command": "sql", "query": "select 1", "json": True}),
        ("sql - --csv --no-ingest", {"query": "-", "csv": True, "no_ingest": True}),
        ("feedback 8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10 csat 4 --comment slow", {"value": 4.0}),
        ("feedback R review --comment fine", {"value": None, "comment": "fine"}),
        ("ingest", {"command": "ingest"}),
        ("status", {"command": "status"}),
        ("serve --port 4318 --host 0.0.0.0", {"port": 4318, "host": "0.0.0.0"}),
        ("optimize triage --max-updates 2 --editable prompt", {"max_updates": 2, "wait": 30.0}),
        ("proposals", {"verb": "list", "pipeline": None, "limit": 20}),
        ("proposals triage", {"verb": "list", "pipeline": "triage"}),
        ("proposals list triage", {"verb": "list", "pipeline": "triage"}),
        ("proposals list", {"verb": "list", "pipeline": None}),
        ("proposals triage --status proposed", {"pipeline": "triage", "status": "proposed"}),
        ("proposals show pr_1", {"verb": "show", "proposal_id": "pr_1"}),
        ("proposals reject pr_1 --reason 'too long'", {"verb": "reject", "reason": "too long"}),
        ("rollout start triage --proposal pr_1 --kpi correct", {"verb": "start", "kpi": "correct"}),
        ("rollout start triage --params c.json --steps 10,25,50,100", {"steps": "10,25,50,100"}),
        ("rollout start triage --params c.json --min-sample 8", {"min_sample_per_arm": 8}),
        ("rollout status triage", {"verb": "status", "pipeline": "triage"}),
        ("rollout analyze triage --json", {"verb": "analyze", "json": True}),
        ("rollout pin triage ps_01 --reason 'incident 42'", {"param_set_id": "ps_01"}),
        ("rollout pin triage --reason x", {"param_set_id": None}),  # exit 2 from the command
        ("rollout unpin triage --reason ok", {"verb": "unpin"}),
        ("export reflections --out r.jsonl", {"verb": "reflections", "out": "r.jsonl"}),
        ("export reflections --pipeline triage", {"pipeline": "triage", "out": None}),
        (
            "experiences harvest triage --kpi csat --threshold 4 --expires-days 30",
            {"threshold": 4.0},
        ),
        ("experiences list triage", {"verb": "list", "limit": 50, "json": False}),
        ("instruction show triage", {"verb": "show"}),
        ("instruction tune triage --every 5", {"verb": "tune", "every": 5, "force": False}),
        ("--warehouse w.duckdb instruction tune triage --force", {"warehouse": "w.duckdb"}),
    ],
)
def test_command_forms(line: str, expect: dict[str, object]) -> None:
    args = parse(line)
    assert {k: args[k] for k in expect} == expect
    assert callable(args["func"])


def _readme_forms() -> tuple[list[str], list[str]]:
    """(command lines of the README's code blocks, `genopt ...` mentions in its text)."""
    text = (ROOT / "README.md").read_text()
    lines = [
        line.strip()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S)
        for line in block.splitlines()
        if line.startswith("genopt ")
    ]
    mentions = [" ".join(m.split()) for m in re.findall(r"`(genopt [^`]+)`", text, re.S)]
    return lines, mentions


def _expand(line: str) -> list[list[str]]:
    """A README line as argv lists: <placeholders> filled, a|b|c alternatives expanded."""
    line = line.replace("<run_id>", "8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10")
    words = shlex.split(line, comments=True)[1:]
    out: list[list[str]] = [[]]
    for w in words:
        alternatives = w.split("|") if re.fullmatch(r"[a-z]+(\|[a-z]+)+", w) else [w]
        out = [o + [a] for o in out for a in alternatives]
    return out


def test_every_readme_form_parses(capsys: pytest.CaptureFixture[str]) -> None:
    lines, mentions = _readme_forms()
    assert len(lines) >= 15 and any("pause|resume|promote|abort" in x for x in lines)
    for line in lines:
        for argv in _expand(line):
            build_parser().parse_args(argv)  # a full command line: parses
    for mention in mentions:
        for argv in _expand(mention):
            try:
                build_parser().parse_args(argv)
            except SystemExit:  # a mention of a command ("`genopt rollout start` exits 3")
                assert help_of(*argv, capsys=capsys)


def test_main_leaves_the_environment_alone_and_uses_the_warehouse_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    default = tmp_path / "default.duckdb"
    monkeypatch.setenv("GENOPT_WAREHOUSE", str(default))
    given = tmp_path / "given.duckdb"
    env = dict(os.environ)
    w = ["--warehouse", str(given)]
    outs: list[str] = []
    unknown = "unknown pipeline 'triage'"  # said of the given warehouse, which has none
    for argv, code in (
        ([*w, "ingest"], 0),
        ([*w, "status"], 0),
        ([*w, "sql", "select count(*) as n from runs"], 0),
        ([*w, "proposals", "--json"], 0),
        ([*w, "experiences", "list", "triage"], 2),
        ([*w, "export", "reflections"], 0),
        ([*w, "instruction", "show", "triage"], 2),
    ):
        assert main(argv) == code, capsys.readouterr().err
        assert dict(os.environ) == env, argv
        captured = capsys.readouterr()
        outs.append(captured.out)
        assert (unknown in captured.err) == (code == 2), captured.err
    assert f"warehouse: {given}" in "".join(outs)
    assert given.exists()
    assert not default.exists() and not Path(f"{default}.spool").exists()


def test_spool_setting_follows_the_warehouse_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """GENOPT_SPOOL names the spool of the warehouse in use, --warehouse or not (as when
    --warehouse was written to GENOPT_WAREHOUSE)."""
    monkeypatch.setenv("GENOPT_WAREHOUSE", str(tmp_path / "default.duckdb"))
    monkeypatch.setenv("GENOPT_SPOOL", str(tmp_path / "spool"))
    assert main(["--warehouse", str(tmp_path / "given.duckdb"), "status"]) == 0
    assert f"spool:     {tmp_path / 'spool'}" in capsys.readouterr().out


def test_python_m_runs_the_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["genopt", "--version"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("prefect_genopt.cli", run_name="__main__")
    assert exc.value.code == 0 and "prefect-genopt" in capsys.readouterr().out


def test_help_in_a_fresh_process_loads_no_heavy_library() -> None:
    """Smoke test 1 of 2 through the installed script: a verb's help, and the parser loads
    none of Prefect, DuckDB, litellm, OpenTelemetry (the import log says what loaded)."""
    script = Path(sys.executable).with_name("genopt")
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    out = subprocess.run(
        [str(script), "rollout", "start", "--help"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0 and "usage: genopt rollout start" in out.stdout, out.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines()}
    assert "prefect_genopt.cli._utilities" in loaded  # (command modules load by importlib)
    heavy = ("prefect", "duckdb", "litellm", "opentelemetry")
    assert not [m for m in loaded if m.split(".")[0] in heavy]

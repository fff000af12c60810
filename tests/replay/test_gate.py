"""The replay gate: pure judgement, and a bad proposal stopped before any real item sees it."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
import pytest

import prefect_genopt as genopt
from flows.examples.triage import triage
from prefect_genopt.cli import EXIT_GATE_STOPPED, main
from prefect_genopt.optimize import OptimizerSettings, optimize
from prefect_genopt.replay.gate import _replayable, judge
from prefect_genopt.rollout import FAST_PLAN, controller
from tests.optimize import scripted  # noqa: F401  (registers scripted-opt)
from tests.rollout.pipelines import make_pipeline

PLAN = {**FAST_PLAN, "kpi": "correct"}
#: rules for both labels that the keyword model follows: right on most tickets
GOOD_PROMPT = (
    "Classify the ticket as billing, bug or other. billing: invoice, refund, charged, payment, "
    "bill, declined; bug: crash, error, broken, freezes, login"
)


def test_judge_stops_only_beyond_the_tolerance() -> None:
    stable = [1.0] * 8 + [0.0] * 2  # 0.8
    assert judge(stable, [1.0] * 7 + [0.0] * 3, "higher", 0.2).outcome == "passed"  # -12.5%
    worse = judge(stable, [1.0] * 5 + [0.0] * 5, "higher", 0.2)  # -37.5%
    assert worse.outcome == "stopped" and worse.effect == pytest.approx(-0.3)
    assert "on the same 10 items" in worse.reason
    assert judge([2.0, 2.0], [3.0, 3.0], "lower", 0.1).outcome == "stopped"  # slower
    assert judge([0.0, 0.0], [0.05, 0.05], "lower", 0.1, "absolute").outcome == "passed"
    assert judge([], [1.0], "higher", 0.1).outcome == "skipped"


def test_only_whole_recorded_inputs_are_replayed() -> None:
    assert _replayable('{"n": 8, "seed": 3}') == {"n": 8, "seed": 3}
    assert _replayable('{"text": "abc…[truncated 10 of 4000 chars]"}') is None
    assert _replayable('{"token": "[REDACTED]"}') is None
    assert _replayable('{"args": [1], "kwargs": {}}') is None
    assert _replayable(None) is None


def _proposal(mode: str, evidence_run_ids: list[str] | None = None) -> str:
    result = optimize(
        OptimizerSettings(
            pipeline="triage",
            model=f"scripted-opt/{mode}",
            response_format="none",
            starting_artifact={"editable": ["prompt"]},
            minibatch_size=4,
            evidence_run_ids=evidence_run_ids,
            search=False,
        )
    )
    (proposal,) = result.proposals
    return proposal.proposal_id


def test_the_gate_stops_a_bad_proposal_before_any_real_item_sees_it(
    routing: list[str], warehouse_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    routing.append("triage")
    for seed in range(7):
        triage(n=8, seed=seed)
    # evidence from the 4 oldest runs, so the gate replays the 3 newest: the same tickets
    # every time (left to the minibatch sampler, the replayed runs vary with the run ids,
    # and on some draws this weak stable prompt and the swapped one score within 20%)
    runs = genopt.Warehouse().sql("SELECT run_id FROM runs ORDER BY start_time")
    proposal_id = _proposal("swap", [r["run_id"] for r in runs[:4]])
    capsys.readouterr()
    # from the shell (the controller raises GateStopped; the CLI says so with its own code)
    start = ["rollout", "start", "triage", "--proposal", proposal_id, "--fast", "--kpi"]
    assert main([*start, "correct", "--gate-runs", "3"]) == EXIT_GATE_STOPPED == 3
    assert "replay gate stopped" in capsys.readouterr().err
    wh = genopt.Warehouse()
    (prop,) = wh.sql("SELECT status, status_reason, evidence_run_ids FROM proposals")
    assert prop["status"] == "rejected" and "worse than stable" in prop["status_reason"]
    (gate,) = wh.sql("SELECT * FROM replay_gates")
    assert gate["outcome"] == "stopped" and gate["proposal_id"] == proposal_id
    assert gate["n_items"] == 24 and gate["candidate_mean"] < gate["stable_mean"]
    sources = orjson.loads(gate["source_run_ids"])
    assert sources == [r["run_id"] for r in reversed(runs[4:])]  # newest first
    assert not set(sources) & set(orjson.loads(prop["evidence_run_ids"]))
    # the cost: the replayed runs' LLM calls (3 runs of 8 tickets, one call each)
    assert gate["llm_calls"] == 24
    # the gate's outcome rates the proposal's reflection (Retroformer memory)
    (rating,) = wh.sql("SELECT source, outcome, relative_effect FROM proposal_ratings")
    assert (rating["source"], rating["outcome"]) == ("replay_gate", "gate_stopped")
    assert rating["relative_effect"] < -0.2
    # nothing reached production: no canary, no rollout; the replay is on its own arm
    assert controller.get_state("triage").status == "idle"
    assert wh.sql("SELECT count(*) AS n FROM rollouts")[0]["n"] == 0
    arms = wh.sql("SELECT arm, count(*) AS n FROM runs GROUP BY arm ORDER BY arm")
    assert [(a["arm"], a["n"]) for a in arms] == [("replay", 3), ("stable", 7)]


def test_a_good_candidate_passes_the_gate_into_its_canary(
    routing: list[str], warehouse_path: Path
) -> None:
    routing.append("triage")
    for seed in range(3):
        triage(n=8, seed=seed)
    state = controller.start_rollout("triage", values={"prompt": GOOD_PROMPT}, plan=PLAN)
    assert state.status == "running"
    wh = genopt.Warehouse()
    (gate,) = wh.sql("SELECT outcome, reason, proposal_id, replay_run_ids FROM replay_gates")
    assert gate["outcome"] == "passed" and gate["proposal_id"] is None
    (started,) = wh.sql("SELECT reason FROM rollout_events WHERE kind = 'started'")
    assert "replay gate passed" in started["reason"]
    # the replayed flow run is tagged in Prefect, so a UI view can filter replays
    (replayed,) = orjson.loads(gate["replay_run_ids"])
    tags = _flow_run_tags(replayed)
    assert {"genopt", "genopt-replay", "genopt-gate", "genopt-pipeline:triage"} <= tags


def _flow_run_tags(run_id: str) -> set[str]:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return set(client.read_flow_run(UUID(run_id)).tags)


def test_a_pipeline_that_cannot_be_replayed_does_not_start_without_gate_false(
    pipeline_name: str, warehouse_path: Path
) -> None:
    knob = make_pipeline(pipeline_name)  # a flow built in a function: no importable entrypoint
    knob(n=5, batch=0)
    with pytest.raises(controller.GateSkipped, match="cannot import the pipeline's entrypoint"):
        controller.start_rollout(pipeline_name, values={"quality": 0.9}, plan={"kpi": "ok"})
    assert controller.get_state(pipeline_name).status == "idle"
    (gate,) = genopt.Warehouse().sql("SELECT outcome, reason FROM replay_gates")
    assert gate["outcome"] == "skipped" and "cannot import" in gate["reason"]
    state = controller.start_rollout(
        pipeline_name, values={"quality": 0.9}, plan={"kpi": "ok"}, gate=False
    )
    assert state.status == "running"
    assert controller.abort(pipeline_name, "done").status == "idle"


def test_a_flow_defined_in_a_script_run_as_main_is_loaded_from_its_file(tmp_path: Path) -> None:
    from prefect_genopt.replay.gate import load_entrypoint

    script = tmp_path / "my_script.py"
    script.write_text(
        "def my_flow():\n    return 42\n\nif __name__ == '__main__':\n    raise SystemExit(1)\n"
    )
    fn = load_entrypoint({"module": "__main__", "function": "my_flow", "file": str(script)})
    assert fn() == 42  # loaded by file, its __main__ block not run
    with pytest.raises(ImportError, match="file is not found"):
        load_entrypoint({"module": "__main__", "function": "my_flow", "file": "gone.py"})
    # a flow Prefect loaded from a deployment's file path: its module name (the file's stem,
    # or __prefect_loader_<hash>__) does not import by name, so its file is loaded
    for name in ("my_script_stem", "__prefect_loader_0123456789abcdef__"):
        ep = {"module": name, "function": "my_flow", "file": str(script)}
        assert load_entrypoint(ep)() == 42
    # a module that is missing something it imports is not hidden behind its file
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_dependency_xyz\n\ndef my_flow():\n    return 1\n")
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        load_entrypoint({"module": "broken_stem", "function": "my_flow", "file": str(broken)})


def test_the_running_script_s_flows_are_taken_as_they_are_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the process that runs the script, a flow it made at run time (not in the file) is
    found, and the script is not imported a second time."""
    import types

    from prefect_genopt.replay.gate import load_entrypoint

    script = tmp_path / "runner.py"
    script.write_text("def in_file():\n    return 'from the file'\n")
    main = types.ModuleType("__main__")
    main.__file__ = str(script)
    main.made_at_run_time = lambda: "live"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "__main__", main)
    ep = {"module": "__main__", "file": str(script)}
    assert load_entrypoint({**ep, "function": "made_at_run_time"})() == "live"
    # a name the live module lacks still comes from the file
    assert load_entrypoint({**ep, "function": "in_file"})() == "from the file"
    # another script than the running one: from its file, never the live module
    other = tmp_path / "other.py"
    other.write_text("def made_at_run_time():\n    return 'other file'\n")
    assert load_entrypoint({**ep, "file": str(other), "function": "made_at_run_time"})() == (
        "other file"
    )

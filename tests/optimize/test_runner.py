"""The optimizer end to end: real pipeline runs, a real warehouse, a scripted model in litellm."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import prefect_genopt as genopt
from prefect_genopt.optimize import (
    EvidenceError,
    OptimizerSettings,
    OptoPrime,
    collect,
    optimize,
    reject_proposal,
)
from prefect_genopt.optimize.proposals import ProposalError, list_proposals
from prefect_genopt.pipeline import pinned_params
from tests.optimize import scripted

ITEMS = [f"item-{i}" for i in range(6)]


def run_knob(n_runs: int = 2, values: dict | None = None) -> list[float]:
    out = []
    for r in range(n_runs):
        batch = [f"{x}-r{r}" for x in ITEMS]
        if values is None:
            out.append(scripted.knob(batch))
        else:
            with pinned_params(values, arm="eval"):
                out.append(scripted.knob(batch))
    return out


def settings(mode: str = "follow", **kw: object) -> OptimizerSettings:
    return OptimizerSettings(
        pipeline="knob", model=f"scripted-opt/{mode}", response_format="none", search=False, **kw
    )


@pytest.fixture
def knob_runs(prefect_api: str, warehouse_path: Path) -> Path:
    run_knob(2)
    return warehouse_path


def proposals(status: str | None = None) -> list[dict]:
    return list_proposals(genopt.Warehouse(), "knob", status=status, limit=100)


def candidate_values(param_set: str) -> dict:
    row = genopt.Warehouse().sql(
        'SELECT "values" FROM param_sets WHERE param_set_id = ?', [param_set]
    )
    return orjson.loads(row[0]["values"])


def test_the_optimizer_improves_a_pipeline_with_a_known_optimum(knob_runs: Path) -> None:
    """The scripted model computes its answer from #Variables and #Feedback (it is never
    told the optimum); the candidate it proposes, run for real, scores higher, and an
    optimizer run started from the candidate's own runs asks for no further change."""
    before = run_knob(1)[0]
    result = optimize(settings(max_updates=1))
    assert [u.status for u in result.updates] == ["proposed"]
    values = candidate_values(result.proposals[0].candidate_param_set_id)
    after = run_knob(1, values)[0]
    assert before == pytest.approx(0.5)
    assert after > before and after == pytest.approx(1.0)
    assert values["level"] == pytest.approx(scripted.OPTIMUM)
    again = optimize(
        settings(
            max_updates=1,
            starting_artifact={"start_from": "values", "values": values},
            evidence_run_ids=last_eval_runs(),
        )
    )
    assert [u.status for u in again.updates] == ["no_change"]


def last_eval_runs() -> list[str]:
    rows = genopt.Warehouse().sql(
        "SELECT run_id FROM runs WHERE pipeline = 'knob' AND arm = 'eval' "
        "ORDER BY start_time DESC LIMIT 1"
    )
    return [r["run_id"] for r in rows]


def test_a_proposal_is_complete_in_sql_with_its_lineage(knob_runs: Path) -> None:
    result = optimize(settings(minibatch_size=3, max_updates=1))
    p = proposals()[0]
    assert p["proposal_id"] == result.updates[0].proposal_id
    assert p["status"] == "proposed" and p["optimizer"] == "optoprime"
    assert p["model"] == "scripted-opt/follow" and p["response_format"] == "none"
    assert p["input_tokens"] > 0 and p["output_tokens"] > 0
    assert p["cost_usd"] is None  # unpriced model: NULL, not 0
    assert p["kpi"] == "closeness" and p["evidence_units"] == 3
    diff = orjson.loads(p["diff"])
    assert diff["level"]["from"] == 0.2 and diff["level"]["to"] > 0.2
    runs = orjson.loads(p["evidence_run_ids"])
    wh = genopt.Warehouse()
    assert all(wh.sql("SELECT 1 FROM runs WHERE run_id = ?", [r]) for r in runs)
    recorded = orjson.loads(p["settings"])
    assert recorded["minibatch_size"] == 3 and recorded["credit_horizon"]["max_value_chars"] == 400
    lineage = wh.sql(
        "SELECT l.ancestor_param_set_id, ps.source, ps.schema_version FROM param_set_lineage l "
        "JOIN param_sets ps ON ps.param_set_id = l.param_set_id WHERE l.param_set_id = ?",
        [p["candidate_param_set_id"]],
    )
    assert lineage == [
        {
            "ancestor_param_set_id": p["parent_param_set_id"],
            "source": "proposal",
            "schema_version": 1,
        }
    ]
    parent = wh.sql(
        "SELECT count(*) AS n FROM runs WHERE param_set_id = ?", [p["parent_param_set_id"]]
    )
    assert parent[0]["n"] == 2
    events = wh.sql(
        "SELECT status, actor FROM proposal_events WHERE proposal_id = ?", [p["proposal_id"]]
    )
    assert events == [{"status": "proposed", "actor": "optimizer"}]
    # the optimizer's own LLM call is a span in the warehouse, in the proposal's trace
    llm = wh.sql(
        "SELECT llm_model, input_tokens FROM spans WHERE trace_id = ? AND run_type = 'llm'",
        [p["trace_id"]],
    )
    assert llm and llm[0]["llm_model"] == "scripted-opt/follow"


@pytest.mark.parametrize(
    ("mode", "status", "reason", "attempts"),
    [
        ("notjson", "rejected", "unparsable answer: the answer holds no JSON object", 2),
        ("notjson-once", "proposed", None, 2),
        ("fenced", "proposed", None, 1),
        ("prose", "proposed", None, 1),
        ("unknown", "rejected", "no editable parameter in the suggestion: 'model_name'", 2),
        ("oob", "rejected", "level: 7.5 is greater than the maximum of 1.0", 2),
        ("wrongtype", "rejected", "level: 'very high' is not of type 'number'", 2),
        ("empty", "no_change", "the model asked for no change", 1),
        ("unchanged", "no_change", "every suggested value equals the current one", 1),
        ("cutoff", "rejected", "cut off at the token limit", 2),
    ],
)
def test_every_answer_class_gets_the_right_outcome(
    knob_runs: Path, mode: str, status: str, reason: str | None, attempts: int
) -> None:
    scripted.PROMPTS.pop(mode, None)
    scripted.TEMPERATURES.pop(mode, None)
    result = optimize(settings(mode, max_updates=1))
    (u,) = result.updates
    assert (u.status, u.attempts) == (status, attempts)
    if reason:
        assert reason in (u.reason or "")
    row = proposals()[0]
    assert row["status"] == status and row["attempts"] == attempts
    if status != "proposed":
        assert row["candidate_param_set_id"] is None  # never a candidate
    if attempts == 2:  # the retry said what was wrong, at a higher temperature
        retry = scripted.PROMPTS[mode][1][-1]["content"]
        assert retry.startswith("Your previous answer could not be used:")
        assert "level, note" in retry
        assert scripted.TEMPERATURES[mode][-2:] == [0.0, 0.7]


def test_ignored_names_are_counted_on_a_valid_proposal(knob_runs: Path) -> None:
    optimize(settings("unknown-plus", max_updates=1))
    row = proposals()[0]
    assert row["status"] == "proposed"
    assert orjson.loads(row["ignored_keys"]) == ["inputs"]


def test_timeout_is_recorded_and_never_a_candidate(knob_runs: Path) -> None:
    result = optimize(settings("slow", max_updates=1, timeout_s=0.5))
    (u,) = result.updates
    assert u.status == "rejected" and u.reason.startswith("timeout:")
    assert proposals()[0]["candidate_param_set_id"] is None
    scripted.wait_idle()


def test_budget_exhaustion_stops_cleanly_with_a_clear_message(knob_runs: Path) -> None:
    result = optimize(settings("notjson", max_updates=5, budget_tokens=2500))
    assert result.stop_reason.startswith("budget exhausted: token budget")
    assert result.tokens <= 2500
    assert len(result.updates) < 5
    assert result.llm_calls >= 1


def test_no_invalid_value_is_ever_stored_as_a_candidate(knob_runs: Path) -> None:
    for mode in ("oob", "wrongtype", "unknown", "follow", "prose"):
        optimize(settings(mode, max_updates=1))
    wh = genopt.Warehouse()
    rows = wh.sql(
        'SELECT ps."values" FROM proposals p JOIN param_sets ps '
        "ON ps.param_set_id = p.candidate_param_set_id"
    )
    assert len(rows) == 1  # 'prose' gives the same candidate as 'follow': a repeat, not stored
    for r in rows:
        scripted.KnobParams(**orjson.loads(r["values"]))  # validates, or raises


def test_manual_rejection_is_recorded_and_final(knob_runs: Path) -> None:
    result = optimize(settings(max_updates=1))
    pid = result.updates[0].proposal_id
    wh = genopt.Warehouse()
    with pytest.raises(ProposalError, match="give a reason"):
        reject_proposal(wh, pid, " ")
    row = reject_proposal(wh, pid[:-2], "too aggressive", actor="alice")
    assert row["status"] == "rejected" and row["status_reason"] == "too aggressive"
    with pytest.raises(ProposalError, match="cannot become 'rejected'"):
        reject_proposal(wh, pid, "again")
    with pytest.raises(ProposalError, match="no proposal"):
        reject_proposal(wh, "pr_nope", "x")
    events = wh.sql(
        "SELECT status, actor, reason FROM proposal_events WHERE proposal_id = ? "
        "ORDER BY created_at",
        [pid],
    )
    assert [e["status"] for e in events] == ["proposed", "rejected"]
    assert events[1]["actor"] == "alice"


def test_memory_shows_past_proposals_with_their_outcome(knob_runs: Path) -> None:
    first = optimize(settings(max_updates=1))
    cand = first.proposals[0].candidate_param_set_id
    values = orjson.loads(
        genopt.Warehouse().sql('SELECT "values" FROM param_sets WHERE param_set_id = ?', [cand])[0][
            "values"
        ]
    )
    run_knob(1, values)
    scripted.PROMPTS.pop("follow", None)
    optimize(settings(max_updates=1, memory_size=2))
    prompt = scripted.PROMPTS["follow"][-1][1]["content"]
    memory = prompt.split("#Memory (earlier proposals)\n", 1)[1]
    assert "closeness mean" in memory and "with the change" in memory
    assert "status proposed" in memory


def test_no_evidence_is_a_clear_error(prefect_api: str, warehouse_path: Path) -> None:
    with pytest.raises(EvidenceError, match="pipeline 'knob' has no runs"):
        optimize(settings())
    run_knob(1)
    with pytest.raises(EvidenceError, match="no 'speed' feedback"):
        optimize(settings(kpi="speed"))


def test_collect_units_are_items_with_their_span_subtree(knob_runs: Path) -> None:
    ev = collect(genopt.Warehouse(), settings(minibatch_size=2, max_updates=2))
    assert ev.kpi == "closeness" and ev.per_item
    assert ev.population_units == 12 and ev.population_runs == 2
    assert [len(b) for b in ev.minibatches] == [2, 2]
    unit = ev.minibatches[0][0]
    (step,) = unit.steps
    assert step.kind == "task" and step.name == "push"
    assert step.params_read == {"level": 0.2}
    assert step.doc == "Push one item as hard as the level says."
    assert ev.pipeline.tasks == {"push": "Push one item as hard as the level says."}
    assert unit.comments and "too low" in unit.comments[0]


def test_optoprime_is_pluggable(knob_runs: Path) -> None:
    class Terse(OptoPrime):
        name = "terse"
        instruction = "Fix the level."

    scripted.PROMPTS.pop("follow", None)
    optimize(settings(max_updates=1), optimizer=Terse())
    assert scripted.PROMPTS["follow"][-1][1]["content"].startswith("#Instruction\nFix the level.")
    assert proposals()[0]["optimizer"] == "terse"


def test_a_candidate_proposed_before_is_not_proposed_again(knob_runs: Path) -> None:
    first = optimize(settings(max_updates=1))
    again = optimize(settings(max_updates=1))
    (u,) = again.updates
    assert u.status == "no_change" and u.candidate_param_set_id is None
    assert u.reason == f"the candidate repeats proposal {first.updates[0].proposal_id} (proposed)"

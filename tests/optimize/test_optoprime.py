"""The serialized problem: OptoPrime's sections, truncation marks, and what the settings change."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow

import prefect_genopt as genopt
from prefect_genopt.optimize import OptimizerSettings, OptoPrime, collect
from prefect_genopt.optimize.optoprime import SYSTEM_PROMPT, MemoryEntry, answer_schema
from tests.optimize import scripted

SECTIONS = (
    "#Instruction",
    "#Code",
    "#Variables",
    "#Constraints",
    "#Inputs",
    "#Others",
    "#Outputs",
    "#Feedback",
    "#Feedback (this minibatch)",
    "#Memory (earlier proposals)",
    "#Answer",
)


@pytest.fixture
def knob_runs(prefect_api: str, warehouse_path: Path) -> Path:
    for r in range(2):
        scripted.knob([f"item-{i}-r{r}-" + "x" * 300 for i in range(5)])
    return warehouse_path


MEMORY = [
    MemoryEntry("p1", "2026-11-01", {"level": 0.9}, "push harder", "rolled_back", "closeness -0.2")
]


def render(memory: list[MemoryEntry] = MEMORY, **kw: object) -> tuple[str, object]:
    s = OptimizerSettings(pipeline="knob", **kw)
    ev = collect(genopt.Warehouse(), s)
    editable = kw.get("starting_artifact", {}).get("editable") or ["level", "note"]  # type: ignore[union-attr]
    problem = OptoPrime().problem(ev, ev.minibatches[0], memory, s, editable)
    return problem.render(), problem


def test_problem_has_every_optoprime_section_in_order(knob_runs: Path) -> None:
    text, problem = render(minibatch_size=2)
    positions = [text.index(f"\n{s}\n") if i else text.index(s) for i, s in enumerate(SECTIONS)]
    assert positions == sorted(positions)
    assert "(number) level = 0.2" in text
    assert "level: how hard to push each item (>= 0.0; <= 1.0)" in text
    assert "note: a note the steps carry (at most 200 characters)" in text
    assert "task push: Push one item as hard as the level says." in text
    assert "- task push (read params: level)" in text
    assert "closeness = 0.5 (higher is better; equal to the mean 0.5)" in text
    assert "critique: too low" in text
    assert "mean 0.5 over these 2 items" in text and "over 10 items in 2 runs" in text
    assert text.count("## Example") == 2
    assert 'changed {"level":0.9}: status rolled_back; outcome: closeness -0.2' in text
    msgs = OptoPrime().messages(problem)
    assert msgs[0] == {"role": "system", "content": SYSTEM_PROMPT}
    # no earlier proposal: no #Memory section at all (an empty one sways a small model)
    bare, _ = render(memory=[], minibatch_size=2)
    assert "#Memory" not in bare and "#Answer" in bare


def test_credit_horizon_cuts_values_with_a_visible_mark(knob_runs: Path) -> None:
    long_text, long_problem = render(credit_horizon={"max_value_chars": 2000})
    short_text, short_problem = render(credit_horizon={"max_value_chars": 60})
    assert "truncated" not in long_text and long_problem.truncations == 0
    assert "…[truncated" in short_text and short_problem.truncations > 0
    assert len(short_text) < len(long_text)


def test_run_units_and_the_step_horizon_with_a_mark(knob_runs: Path) -> None:
    """A per-run KPI makes runs the units: the whole span tree (flow -> tasks) is shown,
    up to max_steps, and the cut is marked."""
    full, _ = render(kpi="mean_closeness", minibatch_size=1)
    assert "(run " in full and "item" not in full.split("## Example 1", 1)[1].split("\n")[0]
    assert full.count("- task push") == 5 and "more steps truncated" not in full
    cut, problem = render(kpi="mean_closeness", minibatch_size=1, credit_horizon={"max_steps": 3})
    assert "…[3 more steps truncated]" in cut and problem.truncations >= 1
    assert cut.count("- task push") == 2  # the flow span, then two tasks


def test_minibatch_size_changes_how_many_examples(knob_runs: Path) -> None:
    one, _ = render(minibatch_size=1)
    four, _ = render(minibatch_size=4)
    assert one.count("## Example") == 1 and four.count("## Example") == 4


def test_failures_first_includes_one_success_for_contrast(
    prefect_api: str, warehouse_path: Path
) -> None:
    with genopt.pinned_params({"level": 0.7}, arm="stable"):
        scripted.knob(["good-1", "good-2"])
    s = OptimizerSettings(pipeline="knob", minibatch_size=3, max_updates=2)
    ev = collect(genopt.Warehouse(), s)
    assert [len(b) for b in ev.minibatches] == [2, 2]  # only 2 units exist
    values = [u.value for u in ev.minibatches[0]]
    assert values == sorted(values)


def test_editable_fields_limit_variables_and_schema(knob_runs: Path) -> None:
    text, problem = render(starting_artifact={"editable": ["level"]})
    variables = text.split("#Variables\n", 1)[1].split("\n\n", 1)[0]
    assert "(number) level = 0.2" in variables
    assert 'fixed (not editable): note = "keep going"' in variables
    schema = answer_schema(problem.schema, problem.editable)
    assert list(schema["properties"]["suggestion"]["properties"]) == ["level"]


def test_answer_schema_caps_strings() -> None:
    schema = answer_schema({"properties": {"p": {"type": "string"}}}, ["p"])
    assert schema["properties"]["suggestion"]["properties"]["p"]["maxLength"] == 8000
    assert schema["properties"]["reasoning"]["maxLength"] > 0


def test_pass_fail_kpis_say_which_examples_failed(prefect_api: str, warehouse_path: Path) -> None:
    @flow
    @genopt.pipeline(name="quiz", params=scripted.KnobParams)
    def quiz(items: list[str]) -> None:
        for i, item in enumerate(items):
            scripted.push(item)
            genopt.feedback("right", float(i % 2), item_key=item, comment="expected yes")

    quiz(["q0", "q1", "q2", "q3"])
    s = OptimizerSettings(pipeline="quiz", minibatch_size=3)
    ev = collect(genopt.Warehouse(), s)
    assert ev.binary
    text = OptoPrime().problem(ev, ev.minibatches[0], [], s, ["level"]).render()
    assert text.count("this example FAILED (1 is a pass)") == 2
    assert text.count("this example PASSED (1 is a pass)") == 1
    assert "2 of these 3 examples FAILED" in text and "2 of 4 items in 1 runs failed" in text


def test_secrets_never_reach_the_prompt(prefect_api: str, warehouse_path: Path) -> None:
    scripted.knob(["token sk-proj-abcdefghijklmnopqrstuvwxyz123456 in the item"])
    text, _ = render()
    assert "sk-proj-abcdefghijklmnopqrstuvwxyz123456" not in text

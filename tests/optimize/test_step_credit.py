"""Step-level credit (STeCa): blame the first step that went wrong, focus the problem."""

from __future__ import annotations

from pathlib import Path

import orjson

import prefect_genopt as genopt
from flows.examples.steps3 import steps3
from prefect_genopt.optimize import OptimizerSettings, optimize
from prefect_genopt.optimize.evidence import Step
from prefect_genopt.optimize.step_credit import Credit, blame_contrast, blame_expected, focus, ndtw
from tests.optimize import scripted
from tests.optimize.test_runner import candidate_values


def _steps(*outs: tuple[str, str, str]) -> list[Step]:
    return [
        Step(f"s{i}", "task", name, inputs=i_, output=o) for i, (name, i_, o) in enumerate(outs)
    ]


def test_the_first_step_that_loses_the_expected_answer_is_blamed() -> None:
    steps = _steps(
        ("clean", '["Cat", "Garden"]', '["cat", "garden"]'),
        ("select", '["cat", "garden"]', '["garden"]'),
        ("render", '["garden"]', '"garden"'),
    )
    c = blame_expected(steps, "cat, garden", '["Cat", "Garden"]')
    assert (c.step, c.index, c.score) == ("select", 1, 0.5)
    assert "lost the expected answer" in c.reason
    # the answer never appeared: the last step failed to produce it
    gen = _steps(("reason", '"q"', '"think"'), ("extract", '"think"', '"maybe"'))
    c = blame_expected(gen, "yes", '"q"')
    assert (c.step, c.method) == ("extract", "expected") and "did not produce it" in c.reason
    # a step that drops every word lost the answer too (its empty output is not "written")
    empty = _steps(
        ("clean", '["Cat"]', '["cat"]'), ("select", '["cat"]', "[]"), ("render", "[]", '""')
    )
    assert blame_expected(empty, "cat", '["Cat"]', '""').step == "select"
    # a reasoning step (it writes, not extracts) is not blamed for lacking the answer when
    # the question lists every option; the step that picked the wrong option is
    question = '"Do you return? Options: - Yes - No"'
    two = _steps(
        ("reason", question, '"Take 3 steps then turn around and walk"'),
        ("extract", question, '"No"'),
    )
    c = blame_expected(two, "Yes", question, '"No"')
    assert (c.step, c.method) == ("extract", "expected") and "lost the expected" in c.reason
    # ... but a reasoning that states the wrong answer is
    concluded = _steps(
        ("reason", question, '"After the moves we are elsewhere, so no"'),
        ("extract", question, '"No"'),
    )
    c = blame_expected(concluded, "Yes", question, '"No"')
    assert c.step == "reason" and "states the wrong answer" in c.reason
    # nothing lost and the last output has it: no blame
    fine = _steps(("reason", '"q"', '"yes, maybe"'), ("extract", '"yes, maybe"', '"yes"'))
    assert blame_expected(fine, "yes", '"q"') is None


def test_contrast_blames_the_step_that_departs_from_passing_runs() -> None:
    good = [_steps(("a", '"x y"', '"x y"'), ("b", '"x y"', '"x y z"'))]
    bad = _steps(("a", '"x y"', '"x y"'), ("b", '"x y"', '"q"'))
    c = blame_contrast(bad, good)
    assert c is not None and (c.step, c.index, c.method) == ("b", 1, "ndtw")
    assert "nDTW" in c.reason
    assert blame_contrast(good[0], good) is None
    # a step whose input already differed is not blamed for its output differing too
    shifted = _steps(("a", '"x y"', '"p q"'), ("b", '"p q"', '"p q r"'))
    assert blame_contrast(shifted, good).step == "a"


def test_ndtw_aligns_a_retried_step_instead_of_shifting_the_comparison() -> None:
    ref = _steps(
        ("fetch", '"id 7"', '"cat garden"'),
        ("select", '"cat garden"', '"cat"'),
        ("render", '"cat"', '"cat"'),
    )
    # fetch ran twice (a retry), then select lost the word the passing run kept
    retried = _steps(
        ("fetch", '"id 7"', '"cat garden"'),
        ("fetch", '"id 7"', '"cat garden"'),
        ("select", '"cat garden"', '"garden"'),
        ("render", '"garden"', '"garden"'),
    )
    c = blame_contrast(retried, [ref])
    assert (c.step, c.index) == ("select", 2)
    assert ndtw(ref, ref) == 1.0
    assert 0.0 < ndtw(retried, ref) < 1.0
    # the best-aligned of several references is the one compared
    other = _steps(("fetch", '"id 9"', '"dog park"'), ("select", '"dog park"', '"dog"'))
    assert ndtw(retried, ref) > ndtw(retried, other)
    assert blame_contrast(retried, [other, ref]).step == "select"


def test_focus_picks_the_most_blamed_step_that_reads_an_editable_param() -> None:
    cs = [
        Credit("r", "1", "render", 2, "expected", 1.0, "", None, ("sep",)),
        Credit("r", "2", "select", 1, "expected", 1.0, "", None, ("min_len",)),
        Credit("r", "3", "select", 1, "expected", 1.0, "", None, ("min_len",)),
        Credit("r", "4", "io", 0, "expected", 1.0, "", None, ()),
    ]
    assert focus(cs, ["case", "min_len", "sep"]) == ("select", ["min_len"])
    assert focus(cs[:1], ["case"]) is None


def test_step_focused_problem_fixes_the_step_2_fault(
    prefect_api: str, warehouse_path: Path
) -> None:
    steps3(n=8, seed=1)
    scripted.PROMPTS.pop("onevar", None)
    result = optimize(
        OptimizerSettings(
            pipeline="steps3",
            model="scripted-opt/onevar",
            response_format="none",
            minibatch_size=4,
            max_updates=1,
            step_credit=True,
            search=False,
        )
    )
    (proposal,) = result.proposals
    assert proposal.diff is not None and set(proposal.diff) == {"min_len"}
    wh = genopt.Warehouse()
    credits = wh.sql("SELECT step, method, proposal_id, params_read FROM step_credit")
    assert credits and {c["step"] for c in credits} == {"select"}
    assert all(c["method"] == "expected" for c in credits)
    assert credits[0]["proposal_id"] == proposal.proposal_id
    assert orjson.loads(credits[0]["params_read"]) == ["min_len"]
    prompt = scripted.PROMPTS["onevar"][0][-1]["content"]
    assert "Step credit: in the failed examples below" in prompt and "'select'" in prompt
    variables = prompt.split("#Variables\n", 1)[1].split("\n#", 1)[0]
    assert "min_len" in variables and "(string) case" not in variables
    # the candidate passes every item of a fresh batch
    values = candidate_values(proposal.candidate_param_set_id)
    with genopt.pinned_params(values, arm="offline"):
        assert steps3(n=8, seed=99) == 1.0

"""Experiences and verified replay: recorded steps, harvest with checks, replay only
while every validity condition holds."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest

import prefect_genopt as genopt
from prefect_genopt.replay import steps
from prefect_genopt.replay.experiences import ExperienceError, verified_demos
from tests.replay import pipelines
from tests.replay.pipelines import LABELS, RecParams, replayer

ITEMS = [
    ["T1", "my invoice is wrong", "billing"],
    ["T2", "the app crash on start", "bug"],
    ["T3", "a refund please", "billing"],
    ["T4", "thanks for the roadmap", "other"],
    ["T5", "login error again", "bug"],
    ["T6", "dark mode when", "bug"],  # the rules miss it: wrong, never an experience
]


@pytest.fixture
def fresh(warehouse_path: Path, prefect_api: str) -> Path:
    steps.clear_cache()
    steps.reset_stats()
    pipelines.MODEL["name"] = pipelines.keyword_model.MODEL
    return warehouse_path


def _llm_calls(wh: genopt.Warehouse) -> int:
    return wh.sql("SELECT count(*) AS n FROM spans WHERE llm_model IS NOT NULL")[0]["n"]


def test_full_values_are_recorded_and_good_items_become_experiences(fresh: Path) -> None:
    long_text = "invoice " + "x" * 20_000  # longer than any span preview
    replayer([*ITEMS, ["T7", long_text, "billing"]])
    wh = genopt.Warehouse()
    rec = wh.sql(
        "SELECT inputs, output FROM step_values WHERE item_key = 'T7' AND step = 'classify'"
    )
    assert orjson.loads(rec[0]["inputs"])["text"] == long_text  # not truncated
    result = genopt.harvest("replayer", "correct")
    assert (result.verified, result.rejected, result.not_good) == (6, 0, 1)
    wh = genopt.Warehouse()
    exp = wh.sql("SELECT * FROM experiences WHERE item_key = 'T2'")[0]
    assert exp["status"] == "verified" and exp["n_steps"] == 2 and exp["kpi_value"] == 1.0
    checks = orjson.loads(exp["checks"])
    assert checks["classify"]["label_known"] is True and checks["render"]["exact"] is True
    st = wh.sql(
        "SELECT step, model, params_read, output FROM experience_steps "
        "WHERE experience_id = ? ORDER BY seq",
        [exp["experience_id"]],
    )
    assert [s["step"] for s in st] == ["classify", "render"]
    assert st[0]["model"] == pipelines.keyword_model.MODEL and st[1]["model"] is None
    assert set(orjson.loads(st[0]["params_read"])) == {"prompt"}
    assert orjson.loads(st[1]["output"]) == "label=bug"
    # harvesting again stores nothing twice
    again = genopt.harvest("replayer", "correct")
    assert again.verified == 0 and len(genopt.Warehouse().sql("SELECT 1 FROM experiences")) == 6
    demos = verified_demos("replayer", "classify")
    assert {d["output"] for d in demos} == {"billing", "bug", "other"}
    assert all(set(d) == {"id", "input", "output"} for d in demos)


def test_replay_skips_model_calls_on_recurring_inputs(fresh: Path) -> None:
    replayer(ITEMS)
    genopt.harvest("replayer", "correct")
    calls_before = _llm_calls(genopt.Warehouse())
    steps.reset_stats()
    replayer(ITEMS)
    stats = steps.stats()
    # 5 verified items replayed; T6 (wrong, no experience) computed
    assert (stats["replayed"], stats["computed"]) == (5, 1)
    wh = genopt.Warehouse()
    assert _llm_calls(wh) - calls_before == 1
    spans = wh.sql(
        "SELECT item_key, attributes->>'genopt.replay' AS replay, "
        "attributes->>'genopt.replay.experience_id' AS exp FROM spans "
        "WHERE task_name = 'classify' ORDER BY start_time DESC LIMIT 6"
    )
    assert sorted(s["replay"] for s in spans).count("replayed") == 5
    # a replayed step still says which item and arm it served
    assert all(s["item_key"] for s in spans)
    assert all(s["exp"].startswith("exp_") for s in spans if s["replay"] == "replayed")
    # replayed items keep the same outcome and feedback
    last = wh.sql("SELECT run_id FROM runs ORDER BY start_time DESC LIMIT 1")[0]["run_id"]
    fb = wh.sql("SELECT sum(value) AS right FROM feedback WHERE run_id = ?", [last])
    assert fb[0]["right"] == 5


def test_nothing_is_replayed_once_a_validity_condition_breaks(fresh: Path) -> None:
    replayer(ITEMS[:3])
    genopt.harvest("replayer", "correct")

    def replayed() -> int:
        steps.clear_cache()
        steps.reset_stats()
        replayer(ITEMS[:3])
        return steps.stats().get("replayed", 0)

    assert replayed() == 3
    # another prompt (a param classify reads): no replay
    with genopt.pinned_params(
        RecParams(prompt="billing: invoice, refund; bug: crash, error."), arm="x"
    ):
        steps.clear_cache()
        steps.reset_stats()
        replayer(ITEMS[:3])
        assert steps.stats().get("replayed", 0) == 0 and steps.stats()["invalid"] == 3
    # a param classify does not read: still replayed
    with genopt.pinned_params(RecParams(prefix="tag"), arm="x"):
        steps.clear_cache()
        steps.reset_stats()
        replayer(ITEMS[:3])
        assert steps.stats()["replayed"] == 3
    # another model
    pipelines.MODEL["name"] = "genopt-demo/keywords-v2"
    assert replayed() == 0
    wh = genopt.Warehouse()
    why = wh.sql(
        "SELECT DISTINCT attributes->>'genopt.replay' AS why FROM spans "
        "WHERE task_name = 'classify' "
        "AND attributes->>'genopt.replay' LIKE 'computed: the model changed%'"
    )
    assert why, "the span says why nothing was replayed"
    pipelines.MODEL["name"] = pipelines.keyword_model.MODEL
    assert replayed() == 3
    # a check that fails now (registered after the harvest) guards old experiences too
    genopt.check("replayer", step="classify", name="no_billing_today")(
        lambda inputs, output: output != "billing"
    )
    try:
        assert replayed() == 1  # only T2 (bug) still passes every check
    finally:
        genopt.check("replayer", step="classify", name="no_billing_today")(lambda i, o: True)


def test_expired_experiences_are_not_replayed(fresh: Path) -> None:
    replayer(ITEMS[:2])
    genopt.harvest("replayer", "correct", expires_in=timedelta(seconds=-1))
    steps.reset_stats()
    replayer(ITEMS[:2])
    assert steps.stats().get("replayed", 0) == 0 and steps.stats()["invalid"] == 2


def test_failed_checks_reject_and_oversized_records_are_refused(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    genopt.check("replayer", step="render", name="short_prefix")(
        lambda inputs, output: len(output) < 10 or "rendered label too long"
    )
    try:
        replayer(ITEMS[:2])  # "label=billing" is too long, "label=bug" is not
        result = genopt.harvest("replayer", "correct")
    finally:
        genopt.check("replayer", step="render", name="short_prefix")(lambda i, o: True)
    assert (result.verified, result.rejected) == (1, 1)
    (bad,) = genopt.Warehouse().sql("SELECT reason FROM experiences WHERE status = 'rejected'")
    assert "render: short_prefix: rendered label too long" in bad["reason"]
    # a step whose values exceed the cap is not recorded, with a warning on its span
    monkeypatch.setenv("GENOPT_EXPERIENCE_MAX_BYTES", "1000")
    replayer([["T9", "invoice " + "y" * 2000, "billing"]])
    wh = genopt.Warehouse()
    assert not wh.sql("SELECT 1 FROM step_values WHERE item_key = 'T9' AND step = 'classify'")
    refused = wh.sql(
        "SELECT attributes->>'genopt.record.refused' AS why FROM spans "
        "WHERE item_key = 'T9' AND task_name = 'classify'"
    )
    assert "GENOPT_EXPERIENCE_MAX_BYTES is 1000" in refused[0]["why"]


def test_a_graded_kpi_needs_a_threshold(fresh: Path) -> None:
    replayer(ITEMS[:1])
    run_id = genopt.Warehouse().sql("SELECT run_id FROM runs")[0]["run_id"]
    genopt.feedback("csat", 3.5, run_id=run_id)
    with pytest.raises(ExperienceError, match="threshold"):
        genopt.harvest("replayer", "csat")
    with pytest.raises(ExperienceError, match="no feedback"):
        genopt.harvest("replayer", "latency")
    assert genopt.harvest("replayer", "csat", threshold=3.0).verified == 0  # run-level: no steps


def test_the_optimizer_picks_demos_from_verified_experiences(fresh: Path) -> None:
    from prefect_genopt.optimize.flow import optimize_flow
    from tests.optimize import scripted
    from tests.optimize.test_runner import candidate_values

    replayer(ITEMS)
    scripted.PROMPTS.pop("demos", None)
    # the nightly flow harvests first, then optimizes with the fresh experiences
    out = optimize_flow(
        "replayer",
        settings={
            "model": "scripted-opt/demos",
            "response_format": "none",
            "starting_artifact": {"editable": ["examples"]},
            "max_updates": 1,
            "search": False,
        },
        harvest={"kpi": "correct", "expires_in_hours": 24},
    )
    assert out["harvest"]["verified"] > 0
    (candidate,) = out["candidates"]
    prompt = scripted.PROMPTS["demos"][0][-1]["content"]
    assert "#Demo candidates" in prompt and "examples is a list of few-shot demos" in prompt
    wh = genopt.Warehouse()
    values = candidate_values(candidate)
    verified = {
        r["experience_id"]: r
        for r in wh.sql(
            "SELECT experience_id, item_key, expires_at FROM experiences WHERE status = 'verified'"
        )
    }
    assert len(verified) == out["harvest"]["verified"]
    assert all(r["expires_at"] is not None for r in verified.values())  # expires_in_hours
    assert len(values["examples"]) == 2
    for demo in values["examples"]:
        assert demo["experience_id"] in verified
        assert set(demo) == {"input", "output", "experience_id"} and demo["output"] in LABELS


def test_an_unknown_demo_id_is_refused(fresh: Path) -> None:
    from prefect_genopt.optimize.llm import ReplyError
    from prefect_genopt.optimize.runner import resolve_demos

    pool = {"exp_a": {"input": "x", "output": "bug"}}
    assert resolve_demos({"examples": ["exp_a"]}, {"examples": pool})["examples"] == [
        {"input": "x", "output": "bug", "experience_id": "exp_a"}
    ]
    with pytest.raises(ReplyError, match="not among the #Demo candidates"):
        resolve_demos({"examples": ["exp_zzz"]}, {"examples": pool})
    with pytest.raises(ReplyError, match="list of experience ids"):
        resolve_demos({"examples": [{"input": "made up"}]}, {"examples": pool})


def test_the_same_text_under_a_new_item_key_is_a_recurring_input(fresh: Path) -> None:
    replayer(ITEMS[:2])
    genopt.harvest("replayer", "correct")
    steps.reset_stats()
    replayer([["NEW-1", ITEMS[0][1], ITEMS[0][2]], ["NEW-2", "a brand new crash", "bug"]])
    assert (steps.stats()["replayed"], steps.stats()["computed"]) == (1, 1)
    wh = genopt.Warehouse()
    (span,) = wh.sql(
        "SELECT item_key FROM spans WHERE task_name = 'classify' "
        "AND attributes->>'genopt.replay' = 'replayed'"
    )
    assert span["item_key"] == "NEW-1"


def test_a_changed_step_version_is_never_replayed(fresh: Path) -> None:
    from prefect_genopt.context import RunContext
    from prefect_genopt.replay.steps import StepPolicy, step_version, try_replay

    replayer(ITEMS[:1])
    genopt.harvest("replayer", "correct")
    params = RecParams()
    rc = RunContext("replayer", "run-x", params, params.param_set_id, "stable", "replayer")
    policy = StepPolicy(record=True, replay=True, model=pipelines.MODEL["name"], item_key="key")
    bound = {"key": "T1", "text": ITEMS[0][1]}
    current = step_version(pipelines.classify.fn.__wrapped__)
    hit, why = try_replay(policy, rc, "classify", current, bound)
    assert hit is not None and hit.output == "billing" and why == "replayed"
    hit, why = try_replay(policy, rc, "classify", "0123456789abcdef", bound)
    assert hit is None and why == "computed: the step's code changed"

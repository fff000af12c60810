"""The demo's parts: the keyword stand-in model reads few-shot demos, the triage example's
``demos`` param reaches it, the demo's night options mean the settings the benchmark uses,
and the demo records runs until its pools are full, then a night draws demo sets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

import prefect_genopt as genopt
from flows import demo_night
from flows.examples import keyword_model
from flows.examples.tickets import tickets
from flows.examples.triage import TriageParams, demo_turns, triage
from prefect_genopt import testing
from prefect_genopt.cli._app import build_parser
from prefect_genopt.cli.optimize import settings_from_args
from prefect_genopt.optimize import OptimizerSettings
from prefect_genopt.replay import verified_demos

STABLE = TriageParams().prompt


def _call(system: str, turns: list[tuple[str, str]], user: str) -> testing.Call:
    messages = [{"role": "system", "content": system}]
    for text, label in turns:
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": label}]
    messages.append({"role": "user", "content": user})
    return testing.Call(keyword_model.MODEL, "keywords", messages)


def test_without_demos_the_stand_in_answers_by_its_rules_alone() -> None:
    for t in tickets(200, seed=7):
        assert keyword_model.respond(_call(STABLE, [], t.text)) == testing.keyword_label(
            STABLE, t.text
        )


def test_demos_sway_only_the_tickets_the_rules_leave_as_other() -> None:
    demos = [("The app crashes when I open reports", "bug"), ("Send the invoice", "billing")]
    # a rule fires: the demo that shares more words does not change the answer
    assert keyword_model.respond(_call(STABLE, demos, "Please send the invoice")) == "billing"
    assert keyword_model.respond(_call(STABLE, demos, "crash on the reports page")) == "bug"
    # no rule fires: the demo sharing the most words answers; none shared: other
    assert keyword_model.respond(_call(STABLE, demos, "Error 500 on reports")) == "bug"
    assert keyword_model.respond(_call(STABLE, demos, "Send me the roadmap")) == "billing"
    # a tie (one word each: "the"): the earlier demo
    assert keyword_model.respond(_call(STABLE, demos, "Where is the roadmap?")) == "bug"
    assert keyword_model.respond(_call(STABLE, demos, "Dark mode?")) == "other"
    # only the last user message is the ticket: the demos' texts are not part of it
    assert keyword_model.respond(_call("bug: crash", demos, "Dark mode?")) == "other"


def test_demo_turns_put_each_demo_before_the_ticket_as_a_user_and_assistant_turn() -> None:
    demos = [
        {"input": {"ticket_id": "T-1", "text": "refund please"}, "output": "billing"},
        {"input": "it crashed", "output": "bug"},
    ]
    assert demo_turns(demos) == [
        {"role": "user", "content": "refund please"},
        {"role": "assistant", "content": "billing"},
        {"role": "user", "content": "it crashed"},
        {"role": "assistant", "content": "bug"},
    ]
    assert demo_turns([]) == []


def test_the_triage_example_has_a_demos_param_of_classify() -> None:
    spec = TriageParams.model_json_schema()["properties"]["demos"]
    assert spec["genopt_kind"] == "demos" and spec["genopt_step"] == "classify"
    assert TriageParams().demos == [] and spec["default"] == []
    # the default is in the schema, so a rollout's hand-written param set (merged over the
    # schema's defaults) is the one the pipeline runs; and each instance has its own list
    first = TriageParams()
    first.demos.append({"input": "x", "output": "bug"})
    assert TriageParams().demos == []


def test_the_demos_night_options_are_the_settings_the_benchmark_uses() -> None:
    args = build_parser().parse_args(["optimize", "triage", *demo_night.night_options(3)])
    assert args.harvest == demo_night.KPI
    from_shell = OptimizerSettings(pipeline="triage", **settings_from_args(args))
    assert from_shell == demo_night.night_settings(3)
    assert from_shell.search and from_shell.starting_artifact.editable == ["prompt", "demos"]
    assert {k: getattr(from_shell, k) for k in demo_night.POOLS} == demo_night.POOLS


def test_the_demos_pools_can_confirm_a_ten_point_gain() -> None:
    from prefect_genopt.optimize.search.stats import min_confirmation_items, power

    n = demo_night.POOLS["confirmation_items"]
    assert n >= min_confirmation_items()
    assert power(n, 0.10, 0.0) >= 0.9  # what flows/demo_night.py's docstring says


@pytest.mark.prefect
def test_the_demo_records_runs_until_its_pools_are_full_then_a_night_draws_demo_sets(
    prefect_api: str, warehouse_path: Path
) -> None:
    from prefect_genopt.optimize import optimize
    from tests.optimize import scripted  # noqa: F401  (registers scripted-opt)

    small = {"evidence_items": 8, "selection_items": 16, "confirmation_items": 25}
    said: list[str] = []
    accuracy = demo_night.record_runs(0, say=said.append, pools=small, min_runs=2)
    assert 2 <= len(accuracy) < demo_night.MAX_RUNS, said
    assert demo_night.pools_filled(pools=small) is None and "pools are full" in said[-1]
    assert demo_night.pools_filled() is not None  # the demo's own pools want more
    assert genopt.harvest("triage", kpi=demo_night.KPI).verified > 0
    night = optimize(
        demo_night.night_settings(
            0, model="scripted-opt/rules", response_format="none", n_demo_sets=3, **small
        )
    )
    assert night.editable == ["demos", "prompt"], night.notes
    demo_sets = [c for c in night.candidates if c.generator == "demos"]
    assert demo_sets, night.notes
    wh = genopt.Warehouse()
    (row,) = wh.sql("SELECT evidence_run_ids FROM proposals")
    # the demo source: classify's verified experiences of the evidence runs, one per input
    pool = verified_demos("triage", "classify", run_ids=orjson.loads(row["evidence_run_ids"]))
    available = Counter(d["output"] for d in pool)
    for c in demo_sets:
        demos = c.values["demos"]
        # only verified experiences of the evidence pool's runs
        assert 2 <= len(demos) <= 4
        assert {d["experience_id"] for d in demos} <= {d["id"] for d in pool}
        # balanced: two labels differ by more than one only when the rarer ran out
        counts = Counter(d["output"] for d in demos)
        for a in available:
            for b in available:
                if counts[a] > counts[b] + 1:
                    assert counts[b] == available[b], (counts, available)
    # the demo's pipeline runs a demo set for real: pinned, the demos reach the model
    best = max(demo_sets, key=lambda c: len(c.values["demos"]))
    with genopt.pinned_params(best.values, arm="offline"):
        triage(n=4, seed=999)
    (row,) = genopt.Warehouse().sql(
        "SELECT count(*) AS n FROM spans WHERE run_type = 'llm' AND arm = 'offline' "
        "AND inputs LIKE ?",
        [f"%{best.values['demos'][0]['input']['text']}%"],
    )
    assert row["n"] == 4

"""Scores by replay: the recorded entrypoint re-run with the candidate pinned, one replay
per run, the parent's recorded scores, the score cache (reused across evaluators, never
at temperature > 0), the budget, crashes, and side-effecting tasks on the replay arm."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow

import prefect_genopt as genopt
from flows.examples.triage import triage
from prefect_genopt.optimize.search.core import Budget, Candidate
from prefect_genopt.optimize.search.evaluate import (
    ReplayEvaluator,
    ScoreCache,
    code_fingerprint,
    score_cache_path,
)
from prefect_genopt.optimize.search.pools import pool_runs
from prefect_genopt.pipeline import side_effect_stats
from prefect_genopt.replay.gate import load_entrypoint, recorded_entrypoint
from prefect_genopt.testing import keyword_label
from prefect_genopt.tunables import param_set_id
from prefect_genopt.warehouse import Warehouse

#: rules for both labels that the keyword model follows: right on most tickets
GOOD = (
    "Classify the ticket as billing, bug or other. billing: invoice, refund, charged, payment, "
    "bill, declined; bug: crash, error, broken, freezes, login"
)


def _candidate(values: dict, generator: str = "drafts", parent: str = "ps_parent") -> Candidate:
    return Candidate(param_set_id(values), values, generator, parent, tuple(values))


def _evaluator(wh: Warehouse, pipeline: str, kpi: str, **kw: object) -> ReplayEvaluator:
    runs = pool_runs(wh, pipeline, kpi, limit=50)
    entry = recorded_entrypoint(wh, pipeline)
    assert entry is not None
    return ReplayEvaluator(
        wh, pipeline=pipeline, kpi=kpi, flow=load_entrypoint(entry), runs=runs, **kw
    )


def _replays(wh: Warehouse) -> int:
    return wh.sql("SELECT count(*) AS n FROM runs WHERE arm = 'replay'")[0]["n"]


@pytest.fixture
def triage_runs(prefect_api: str, warehouse_path: Path) -> Warehouse:
    for seed in range(3):
        triage(n=8, seed=seed)
    return Warehouse()


def test_a_candidate_is_scored_by_replaying_its_runs_once_each(triage_runs: Warehouse) -> None:
    wh = triage_runs
    budget = Budget(task_calls=1000)
    ev = _evaluator(wh, "triage", "correct", budget=budget)
    stable = wh.sql("SELECT param_set_id FROM runs LIMIT 1")[0]["param_set_id"]
    parent_values = genopt.Warehouse().sql(
        'SELECT "values" FROM param_sets WHERE param_set_id = ?', [stable]
    )[0]["values"]
    assert ev.fingerprint is not None and ev.fingerprint == code_fingerprint(ev.flow)
    # every run was recorded by this code on this model: the parent's scores are recorded
    assert {r.fingerprint for r in ev.runs.values()} == {ev.fingerprint}
    items = ev.items_of(sorted(ev.runs))
    assert len(items) == 24
    import orjson

    parent = Candidate(stable, orjson.loads(parent_values), "parent", stable)
    p_scores = ev.score(parent, items)
    assert len(p_scores) == 24 and set(ev.source_counts(stable)) >= {"recorded"}
    assert ev.source_counts(stable)["recorded"] == 24 and _replays(wh) == 0
    assert budget.used_task_calls == 0
    # a better prompt: each run is replayed once, for all of its items, whatever was asked
    # full values (the parent's, with the good prompt): the id a pinned replay records
    good = _candidate({**orjson.loads(parent_values), "prompt": GOOD, "temperature": 0.0})
    first = ev.score(good, items[:3])  # three items of one run
    assert len(first) == 3 and _replays(wh) == 1 and budget.used_task_calls == 8
    scores = ev.score(good, items)
    assert len(scores) == 24 and _replays(wh) == 3 and budget.used_task_calls == 24
    assert ev.source_counts(good.candidate_id) == {"replay": 24, "recorded": 0, "cache": 0}
    # the replays score as the keyword model answers under the pinned prompt
    texts = {
        f"{r['run_id']}:{r['item_key']}": (r["text"], r["expected"])
        for r in wh.sql(
            "SELECT f.run_id, f.item_key, json_extract_string(f.expected, '$') AS expected, "
            "json_extract_string(s.inputs, '$.text') AS text FROM feedback f JOIN spans s "
            "ON s.run_id = f.run_id AND s.item_key = f.item_key AND s.run_type = 'task' "
            "WHERE f.kpi = 'correct' AND f.arm = 'stable'"
        )
    }
    for iid, value in scores.items():
        text, expected = texts[iid]
        assert value == float(keyword_label(GOOD, text) == expected), iid
    assert sum(scores.values()) > sum(p_scores.values())
    # the replays are on their own arm, with the candidate's param set
    arms = wh.sql("SELECT DISTINCT arm, param_set_id FROM runs WHERE arm = 'replay'")
    assert [(a["arm"], a["param_set_id"]) for a in arms] == [("replay", good.candidate_id)]


def test_the_score_cache_is_shared_by_evaluators_but_not_at_temperature_above_zero(
    triage_runs: Warehouse, tmp_path: Path
) -> None:
    wh = triage_runs
    cache = ScoreCache(score_cache_path(wh.path))
    assert cache.path.name == "warehouse.duckdb.scores.sqlite"
    good = _candidate({"prompt": GOOD, "temperature": 0.0})
    warm = _candidate({"prompt": GOOD, "temperature": 0.5})
    first = _evaluator(wh, "triage", "correct", cache=cache, budget=Budget())
    items = first.items_of(sorted(first.runs))
    a = first.score(good, items)
    first.score(warm, items)
    assert _replays(wh) == 6
    # a second evaluator (another night, another process) reads the cache: no replay, and
    # the cached calls are charged to its budget
    budget = Budget(task_calls=1000)
    second = _evaluator(wh, "triage", "correct", cache=cache, budget=budget)
    assert second.score(good, items) == a
    assert second.source_counts(good.candidate_id)["cache"] == 24 and _replays(wh) == 6
    assert budget.used_task_calls == 24 and second.calls_cached == 24
    # calls at temperature 0.5 were never cached: replayed again
    second.score(warm, items)
    assert second.source_counts(warm.candidate_id)["replay"] == 24 and _replays(wh) == 9
    # another code version (fingerprint) does not see the cache's scores
    third = _evaluator(wh, "triage", "correct", cache=cache, fingerprint="fp_other")
    third.score(good, items[:1])
    assert third.source_counts(good.candidate_id)["replay"] == 8


def test_the_budget_stops_evaluation_cleanly_before_a_replay_it_cannot_pay(
    triage_runs: Warehouse,
) -> None:
    budget = Budget(task_calls=12)
    ev = _evaluator(triage_runs, "triage", "correct", budget=budget)
    items = ev.items_of(sorted(ev.runs))
    scores = ev.score(_candidate({"prompt": GOOD, "temperature": 0.0}), items)
    # one run (8 calls) was replayed; the next would need 8 more of the 4 left
    assert len(scores) == 8 and budget.used_task_calls == 8
    assert ev.stop_reason is not None and "4 call(s) left" in ev.stop_reason
    assert _replays(triage_runs) == 1


# -- a pipeline with a side effect, and one that crashes on a candidate -----------------

SENT: list[str] = []
ITEMS = [["k1", "my invoice", "billing"], ["k2", "app crash", "bug"], ["k3", "hello", "other"]]


class FxParams(genopt.Tunables):
    """Params of the side-effecting pipeline."""

    prompt: str = genopt.prompt("billing: invoice", description="the labeller's rules")


@genopt.task(item_key="key")
def label_of(key: str, text: str) -> str:
    """Label a ticket by the rules (no model)."""
    rules = genopt.current_params(item_key=key).prompt
    if "CRASH" in rules and key == "k2":
        raise RuntimeError("the candidate broke the pipeline")
    return keyword_label(rules, text)


@genopt.task(side_effect=True, item_key="key")
def notify(key: str, label: str) -> str:
    """Tell the customer (a side effect)."""
    SENT.append(key)
    return f"sent {label} to {key}"


@flow(name="sidefx")
@genopt.pipeline(name="sidefx", params=FxParams)
def sidefx(items: list[list[str]]) -> int:
    """Label, notify, score each item."""
    right = 0
    for key, text, expected in items:
        label = label_of(key, text)
        notify(key, label)
        right += label == expected
        genopt.feedback("correct", float(label == expected), item_key=key)
    return right


def test_a_crash_scores_as_a_failure_and_side_effects_are_not_run_on_replay(
    prefect_api: str, warehouse_path: Path
) -> None:
    SENT.clear()
    sidefx(ITEMS)
    assert SENT == ["k1", "k2", "k3"]
    wh = Warehouse()
    ev = _evaluator(wh, "sidefx", "correct")
    items = ev.items_of(sorted(ev.runs))
    before = side_effect_stats()
    both = _candidate({"prompt": "billing: invoice; bug: crash"})
    assert ev.score(both, items) == {i: 1.0 for i in items}
    assert SENT == ["k1", "k2", "k3"]  # notify returned its recorded outputs, never ran
    after = side_effect_stats()
    assert after.get("recorded", 0) - before.get("recorded", 0) == 3
    spans = wh.sql(
        "SELECT json_extract_string(attributes, '$.\"genopt.replay\"') AS why FROM spans "
        "WHERE run_id IN (SELECT run_id FROM runs WHERE arm = 'replay') AND task_name = 'notify'"
    )
    assert len(spans) == 3 and all("did not run" in s["why"] for s in spans)
    # a candidate that crashes the run on k2: k1 scored, k2 and k3 fail
    broken = _candidate({"prompt": "CRASH billing: invoice; bug: crash"})
    scores = ev.score(broken, items)
    assert [scores[i] for i in items] == [1.0, 0.0, 0.0]
    # no recorded output for k2's notify: the replay stops there, its items are skipped
    rw = Warehouse(read_only=False)
    rw.execute("DELETE FROM step_values WHERE step = 'notify' AND item_key = 'k2'")
    rw.close()
    ev2 = _evaluator(Warehouse(), "sidefx", "correct")
    scores = ev2.score(_candidate({"prompt": "bug: crash"}), items)
    assert list(scores) == [items[0]] and scores[items[0]] == 0.0
    assert ev2.skipped[param_set_id({"prompt": "bug: crash"})] == set(items[1:])
    assert SENT == ["k1", "k2", "k3"]


#: three runs of four tickets each for the two-step pipeline: (key, text, expected)
TWOSTEP_RUNS = [
    [
        [f"T{b}{i}", text, label]
        for i, (text, label) in enumerate(
            [
                ("My INVOICE is wrong", "billing"),
                ("The app CRASH on start", "bug"),
                ("Refund for a double charge", "billing"),
                ("Thanks for the roadmap", "other"),
            ]
        )
    ]
    for b in range(3)
]


def test_steps_upstream_of_the_tuned_one_reuse_their_recorded_outputs(
    prefect_api: str, warehouse_path: Path
) -> None:
    from tests.optimize.search import twostep

    for items in TWOSTEP_RUNS:
        twostep.twostep(items)
    wh = Warehouse()
    wh.ingest()
    recorded = len(twostep.SUMMARIZER.calls)
    assert recorded == 12
    stable = wh.sql("SELECT param_set_id FROM runs LIMIT 1")[0]["param_set_id"]
    import orjson

    base = orjson.loads(
        wh.sql('SELECT "values" FROM param_sets WHERE param_set_id = ?', [stable])[0]["values"]
    )
    # tonight's step is classify: a candidate changes its prompt only
    tuned = _candidate({**base, "prompt": GOOD})
    ev = _evaluator(wh, "twostep", "correct", budget=Budget())
    items = ev.items_of(sorted(ev.runs))
    scores = ev.score(tuned, items)
    assert len(scores) == 12 and _replays(wh) == 3
    # the upstream step did not run again: its recorded outputs were returned
    assert len(twostep.SUMMARIZER.calls) == recorded
    assert ev.calls_replayed == 12  # the downstream step's calls only
    reused = wh.sql(
        "SELECT count(*) AS n FROM spans s JOIN runs r USING (run_id) WHERE r.arm = 'replay' "
        """AND json_extract_string(s.attributes, '$."genopt.replay"') LIKE 'reused%'"""
    )[0]["n"]
    assert reused == 12
    # without reuse the upstream step runs on every item, and the scores are the same
    full = _evaluator(wh, "twostep", "correct", budget=Budget(), reuse_recorded=False)
    assert full.score(tuned, items) == scores
    assert len(twostep.SUMMARIZER.calls) == recorded + 12 and full.calls_replayed == 24
    # a candidate that changes the upstream step's param runs it again
    upstream = _candidate({**base, "summary_prompt": "Repeat the ticket, lower case."})
    ev.score(upstream, items)
    assert len(twostep.SUMMARIZER.calls) == recorded + 24

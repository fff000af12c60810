"""The report's data agrees with the warehouse it was read from."""

from __future__ import annotations

import json
from datetime import timedelta

from prefect_genopt.report import report_data
from prefect_genopt.warehouse import Warehouse
from prefect_genopt.warehouse.schema import utcnow
from tests.report.seed import Seeded


def test_kpi_series_are_the_daily_means_per_param_set(seeded: Seeded) -> None:
    wh = Warehouse(seeded.path)
    data = report_data(wh, "triage", days=30)
    [kpi] = data["kpis"]
    assert kpi["kpi"] == "accuracy"
    truth = wh.sql(
        "SELECT param_set_id, CAST(created_at AS DATE)::VARCHAR AS day, count(*) AS n, "
        "avg(value) AS mean, min(value) AS lo, max(value) AS hi FROM feedback "
        "GROUP BY ALL ORDER BY ALL"
    )
    got = [
        (ps["param_set_id"], d["day"], d["n"], round(d["mean"], 9), d["ci"])
        for ps in kpi["param_sets"]
        for d in ps["days"]
    ]
    assert sorted(g[:4] for g in got) == [
        (t["param_set_id"], t["day"], t["n"], round(t["mean"], 9)) for t in truth
    ]
    bounds = {(t["param_set_id"], t["day"]): (t["lo"], t["hi"]) for t in truth}
    for ps, day, _, mean, ci in got:
        if ci is not None:  # an interval around the mean, within the values seen
            lo, hi = bounds[(ps, day)]
            assert lo <= ci[0] <= mean <= ci[1] <= hi
    assert {ps["param_set_id"] for ps in kpi["param_sets"]} == {
        seeded.param_sets["stable"],
        seeded.param_sets["promoted"],
    }


def test_marks_proposals_rollout_start_promotion_and_pin(seeded: Seeded) -> None:
    data = report_data(Warehouse(seeded.path), "triage")
    kinds = [m["kind"] for m in data["marks"]]
    assert kinds.count("proposal") == 2
    assert {"started", "promote", "pin"} <= set(kinds)
    assert [m["at"] for m in data["marks"]] == sorted(m["at"] for m in data["marks"])


def test_rollout_has_its_checks_weights_decisions_and_status(seeded: Seeded) -> None:
    wh = Warehouse(seeded.path)
    [ro] = report_data(wh, "triage")["rollouts"]
    checks = wh.sql("SELECT decision, weight FROM rollout_analyses ORDER BY created_at")
    assert [(c["decision"], c["weight"]) for c in ro["checks"]] == [
        (c["decision"], c["weight"]) for c in checks
    ]
    assert ro["status"] == "promoted"  # its latest event's, not the row written at its start
    assert all(c["ci_canary"] and c["ci_stable"] for c in ro["checks"])
    assert ro["proposal_id"] == seeded.proposal_ids[0]


def test_proposals_carry_evidence_gate_rating_and_lineage(seeded: Seeded) -> None:
    props = {
        p["proposal_id"]: p for p in report_data(Warehouse(seeded.path), "triage")["proposals"]
    }
    good, bad = (props[i] for i in seeded.proposal_ids)
    assert good["status"] == "promoted" and bad["status"] == "rejected"
    assert good["offline_evidence"]["confirmation"]["n"] == 20
    assert "budgets" not in good["offline_evidence"]
    assert bad["gate"]["outcome"] == "stopped" and bad["rating"]["outcome"] == "worse"
    assert "prompt" in bad["diff"]
    # the rejected candidate descends from the promoted one, which came from stable
    ancestors = {(x["ancestor_param_set_id"], x["proposal_id"]) for x in bad["lineage"]}
    assert (seeded.param_sets["stable"], good["proposal_id"]) in ancestors


def test_nights_have_selection_and_confirmation_scores_tokens_and_cost(seeded: Seeded) -> None:
    wh = Warehouse(seeded.path)
    [night] = report_data(wh, "triage")["nights"]
    cands = {c["candidate_id"]: c for c in night["candidates"]}
    truth = wh.sql(
        "SELECT candidate_id, pool, avg(score) AS mean FROM candidate_scores GROUP BY ALL"
    )
    for t in truth:
        assert abs(cands[t["candidate_id"]][t["pool"]]["mean"] - t["mean"]) < 1e-12
    assert cands["c-2"]["confirmation"] is None  # only the winner and the parent confirmed
    assert cands["c-parent"]["parent"] and not cands["c-1"]["parent"]
    assert night["input_tokens"] == 1200 and night["cost_usd"] == 0.0031
    assert night["optimizer_tokens"] == 1500 and night["status"] == "promoted"


def test_traces_hold_the_last_runs_with_llm_messages(seeded: Seeded) -> None:
    wh = Warehouse(seeded.path)
    traces = report_data(wh, "triage", traces=5)["traces"]
    latest = wh.sql("SELECT run_id FROM runs ORDER BY start_time DESC LIMIT 5")
    assert [t["run_id"] for t in traces] == [r["run_id"] for r in latest]
    run = traces[0]
    types = [s["type"] for s in run["spans"]]
    assert "run_start" not in types and "run_end" not in types
    by_id = {s["span_id"]: s for s in run["spans"]}
    llm = [s for s in run["spans"] if s["type"] == "llm"]
    assert llm and len(llm) == run["llm_calls"]
    for s in llm:  # an LLM call sits under its task, which sits under the flow
        task = by_id[s["parent_span_id"]]
        assert task["type"] == "task" and by_id[task["parent_span_id"]]["type"] == "flow"
        messages = json.loads(s["inputs"])
        assert messages[0]["role"] == "system" and json.loads(s["output"])
        assert s["input_tokens"] > 0 and s["model"] == "scripted/triage"
    task = next(s for s in run["spans"] if s["type"] == "task")
    assert task["params_read"] == {"prompt": messages[0]["content"]} and task["item_key"]


def test_usage_per_day_and_model_adds_up_to_the_llm_spans(seeded: Seeded) -> None:
    wh = Warehouse(seeded.path)
    usage = report_data(wh, "triage")["usage"]
    truth = wh.sql(
        "SELECT count(*) AS calls, sum(input_tokens) AS tin, sum(cost_usd) AS cost "
        "FROM spans WHERE run_type = 'llm'"
    )[0]
    assert sum(u["calls"] for u in usage) == truth["calls"]
    assert sum(u["input_tokens"] for u in usage) == truth["tin"]
    assert abs(sum(u["cost_usd"] for u in usage) - truth["cost"]) < 1e-9
    assert len({u["day"] for u in usage}) >= 10


def test_the_window_leaves_older_days_out(seeded: Seeded) -> None:
    wh = Warehouse(seeded.path)
    data = report_data(wh, "triage", days=3)
    since = (utcnow() - timedelta(days=3)).date().isoformat()
    days = [d["day"] for ps in data["kpis"][0]["param_sets"] for d in ps["days"]]
    assert days and min(days) >= since
    assert all(u["day"] >= since for u in data["usage"])
    assert all(t["start_time"] >= since for t in data["traces"])
    assert data["nights"] == [] or all(n["at"] >= since for n in data["nights"])


def test_lineage_ends_on_a_cycle_of_proposals(seeded: Seeded) -> None:
    """A proposal back to an older param set (a cycle), made several times over: the
    report's lineage and the ``param_set_lineage`` view (since schema v11) stay one line."""
    from prefect_genopt import spool
    from prefect_genopt.records import row_record

    ps = seeded.param_sets
    back = [
        row_record(
            "proposals",
            {
                "proposal_id": f"back-{i}",
                "pipeline": "triage",
                "created_at": utcnow().isoformat(),
                "status": "proposed",
                "parent_param_set_id": ps["promoted"],
                "candidate_param_set_id": ps["stable"],
            },
        )
        for i in range(5)
    ]
    spool.append(back, seeded.path.with_name(seeded.path.name + ".spool"))
    wh = Warehouse(seeded.path)
    wh.ingest()
    props = {p["proposal_id"]: p for p in report_data(wh, "triage")["proposals"]}
    line = [x["ancestor_param_set_id"] for x in props["back-0"]["lineage"]]
    assert line == [ps["promoted"]]  # which came from stable, the candidate itself: stop
    good = props[seeded.proposal_ids[0]]["lineage"]
    assert [x["ancestor_param_set_id"] for x in good] == [ps["stable"]]
    # the view: each param set's line follows its first proposal and stops on the cycle
    view = wh.sql(
        "SELECT param_set_id AS ps, ancestor_param_set_id AS anc, depth "
        "FROM param_set_lineage WHERE pipeline = 'triage'"
    )
    pairs = [(r["ps"], r["anc"]) for r in view]
    assert len(pairs) == len(set(pairs)) and all(a != p for p, a in pairs)
    assert (ps["promoted"], ps["stable"]) in pairs and (ps["stable"], ps["promoted"]) in pairs
    assert max(r["depth"] for r in view) <= len(set(ps.values()))

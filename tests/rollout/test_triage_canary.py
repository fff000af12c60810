"""The whole loop on the example pipeline: runs -> optimizer proposal -> canary -> promote,
and a deliberately bad hand-written prompt -> rollback. Real flows, real Prefect API,
a real warehouse; the optimizer is the scripted litellm model that writes rules from the
failed tickets it is shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import prefect_genopt as genopt
from flows.examples.triage import triage
from prefect_genopt.optimize import OptimizerSettings, optimize
from prefect_genopt.rollout import FAST_PLAN, controller
from prefect_genopt.rollout.flow import canary_flow
from tests.optimize import scripted  # noqa: F401  (registers scripted-opt)

PLAN = {**FAST_PLAN, "kpi": "correct"}
#: a person's prompt with the labels' cue words swapped: almost every ticket goes wrong
BAD_PROMPT = (
    "Route tickets. other: invoice, refund, charged, payment, bill; billing: crash, error, "
    "broken, freezes, login; bug: dark mode, invite, thanks, student, roadmap"
)


def _drive(first_seed: int, max_runs: int = 30, n: int = 16) -> list[dict[str, Any]]:
    """Run the pipeline (``n`` tickets a run), then the canary flow, until the rollout ends."""
    results = []
    for seed in range(first_seed, first_seed + max_runs):
        triage(n=n, seed=seed)
        out = canary_flow("triage")
        results.append(out)
        if out["decision"] in ("promote", "abort", "pause"):
            break
    return results


def test_a_proposal_is_promoted_through_the_canary(
    routing: list[str], warehouse_path: Path
) -> None:
    routing.append("triage")
    for seed in range(4):
        triage(n=8, seed=seed)
    result = optimize(
        OptimizerSettings(
            pipeline="triage",
            model="scripted-opt/rules",
            response_format="none",
            starting_artifact={"editable": ["prompt"]},
            # from 6 failed tickets the rules lift accuracy ~5 points (0.47 -> 0.52 on 2000
            # tickets), too little for the fast plan to prove; from 8, ~25 points (-> 0.73)
            minibatch_size=8,
            search=False,
        )
    )
    (proposal,) = result.proposals
    # the replay gate is tested in tests/replay; here the canary alone judges
    state = controller.start_rollout(
        "triage", proposal_id=proposal.proposal_id, plan=PLAN, gate=False
    )
    assert state.proposal_id == proposal.proposal_id and state.weight == 0.3
    wh = genopt.Warehouse()
    assert wh.sql("SELECT status FROM proposals")[0]["status"] == "canary"

    # 48 tickets a run: the verdict came in 2-5 canary checks in 10 runs (with 16: 4-11 in 6)
    steps = _drive(100, n=48)
    decisions = [s["decision"] for s in steps]
    assert decisions[-1] == "promote", steps[-1]
    assert "advance" in decisions
    final = controller.get_state("triage")
    assert final.stable == proposal.candidate_param_set_id and final.status == "idle"
    wh = genopt.Warehouse()
    (prop,) = wh.sql("SELECT status, status_reason FROM proposals")
    assert prop["status"] == "promoted" and "promote after the last step" in prop["status_reason"]
    (rating,) = wh.sql("SELECT source, outcome, relative_effect FROM proposal_ratings")
    assert (rating["source"], rating["outcome"]) == ("canary", "promoted")
    assert rating["relative_effect"] > 0
    # both arms were measured on the same period, on per-ticket feedback
    arms = wh.sql(
        "SELECT arm, avg(value) AS acc, count(*) AS n FROM feedback WHERE kpi = 'correct' "
        "AND created_at >= (SELECT created_at FROM rollouts) GROUP BY arm ORDER BY arm"
    )
    assert [a["arm"] for a in arms] == ["canary", "stable"]
    assert arms[0]["acc"] > arms[1]["acc"]
    # the canary flow left its artifact
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["genopt-canary-triage"]))
        )
    assert artifacts and "Rollout of `triage`" in str(artifacts[0].data)


def test_a_bad_hand_written_prompt_is_rolled_back(routing: list[str], warehouse_path: Path) -> None:
    routing.append("triage")
    for seed in range(2):
        triage(n=8, seed=seed)
    bad = {"prompt": BAD_PROMPT}
    # the replay gate would stop it before any real item (tests/replay); here it is off, so
    # the canary has to catch it on real traffic
    controller.start_rollout("triage", values=bad, plan=PLAN, reason="a person's idea", gate=False)
    steps = _drive(200)
    assert steps[-1]["decision"] == "abort", steps[-1]
    state = controller.get_state("triage")
    assert state.canary is None and state.status == "idle" and state.last_outcome == "aborted"
    wh = genopt.Warehouse()
    (ro,) = wh.sql("SELECT status, reason, proposal_id FROM rollouts")
    assert (ro["status"], ro["proposal_id"]) == ("aborted", None)
    assert ro["reason"] == "a person's idea"
    # stable was never edited: the next run is all on the original prompt
    triage(n=8, seed=999)
    wh = genopt.Warehouse()
    (last,) = wh.sql("SELECT run_id, arm FROM runs ORDER BY start_time DESC LIMIT 1")
    arms = wh.sql(
        "SELECT DISTINCT arm FROM feedback WHERE run_id = ? AND kpi = 'correct'", [last["run_id"]]
    )
    assert (last["arm"], arms) == ("stable", [{"arm": "stable"}])

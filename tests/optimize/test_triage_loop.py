"""The demo's loop offline: the example pipeline, the optimizer, the candidate run for real.

The scripted optimizer writes rules from the failed tickets it is shown (it reads #Variables and
the critiques in #Feedback; it never sees the tickets the candidate is then scored on).
"""

from __future__ import annotations

from pathlib import Path

import orjson

import prefect_genopt as genopt
from flows.examples.triage import TriageParams, triage
from prefect_genopt.optimize import OptimizerSettings, optimize
from tests.optimize import scripted  # noqa: F401  (registers scripted-opt)


def test_the_example_pipeline_improves_on_held_out_tickets(
    prefect_api: str, warehouse_path: Path
) -> None:
    before = [triage(n=8, seed=s) for s in range(4)]
    result = optimize(
        OptimizerSettings(
            pipeline="triage",
            model="scripted-opt/rules",
            response_format="none",
            starting_artifact={"editable": ["prompt"]},
            # from 6 failed tickets the rules lift accuracy ~5 points, and which 6 are shown
            # (ties among failures) varies with the run ids: a rule such as 'billing: june'
            # once left the held-out score equal; from 8, ~25 points (tests/rollout's
            # triage canary test measured both)
            minibatch_size=8,
            search=False,
        )
    )
    (proposal,) = result.proposals
    wh = genopt.Warehouse()
    values = orjson.loads(
        wh.sql(
            'SELECT "values" FROM param_sets WHERE param_set_id = ?',
            [proposal.candidate_param_set_id],
        )[0]["values"]
    )
    assert values["prompt"].startswith(TriageParams().prompt)
    held_out = range(100, 106)
    stable = [triage(n=8, seed=s) for s in held_out]
    with genopt.pinned_params(values, arm="offline"):
        candidate = [triage(n=8, seed=s) for s in held_out]
    assert sum(candidate) > sum(stable), (before, stable, candidate, values["prompt"])
    # a new Warehouse ingests what ran since the last one was opened
    arms = genopt.Warehouse().sql(
        "SELECT arm, param_set_id, count(*) AS n FROM runs GROUP BY ALL ORDER BY arm"
    )
    assert [(a["arm"], a["n"]) for a in arms] == [("offline", 6), ("stable", 10)]
    assert arms[0]["param_set_id"] == proposal.candidate_param_set_id

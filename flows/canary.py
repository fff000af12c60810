"""The canary analysis flow (deployed by deployments/prefect.yaml).

Run one check now:
    python flows/canary.py triage
    genopt rollout analyze triage     (the same check, without a flow run)

It compares the KPI of the canary and stable arms of the pipeline's rollout and
continues, advances, promotes, aborts or pauses it: ``genopt rollout status triage``.
"""

from __future__ import annotations

import sys

from prefect import tags

from prefect_genopt.rollout.flow import canary_flow, run_tags

#: the deployment entrypoint: flows/canary.py:canary
canary = canary_flow

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        raise SystemExit("usage: python flows/canary.py PIPELINE   (see: genopt rollout --help)")
    with tags(*run_tags(sys.argv[1])):  # as the deployment's runs: genopt, genopt-canary
        print(canary(sys.argv[1]))

"""The nightly optimizer flow (deployed by deployments/prefect.yaml).

Run it now:
    python flows/optimize.py triage
    genopt optimize triage          (the same flow, with more options)

It reads the pipeline's runs and feedback from the warehouse, asks an LLM
(GENOPT_MODEL, else the embedded local model) for better param values, checks
them and records proposals: ``genopt proposals triage`` lists them.
"""

from __future__ import annotations

import sys

from prefect import tags

from prefect_genopt.optimize.flow import optimize_flow, run_tags

#: the deployment entrypoint: flows/optimize.py:optimize
optimize = optimize_flow

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        raise SystemExit("usage: python flows/optimize.py PIPELINE   (see: genopt optimize --help)")
    with tags(*run_tags(sys.argv[1])):  # as the deployment's runs: genopt, genopt-optimizer
        print(optimize(sys.argv[1]))

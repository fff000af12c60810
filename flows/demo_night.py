"""The demo's night: how many tickets the demo records, its pool sizes, the night's options.

``make demo`` (:mod:`flows.demo`) and ``python -m bench.bench_demo`` both use these, so the
benchmark measures the demo as it runs. The demo's pools are smaller than the library's
defaults (30 / 48 / 150 labelled items) so the demo fits in a few minutes:

* evidence 20 items: what the optimizer reads, and where the demo sets come from;
* selection 32 items: successive halving scores every candidate on 16, the best 4 on 32;
* confirmation 80 items: the winner against its parent, one-sided exact sign test at
  alpha 0.05. A candidate right on 10% more of the tickets and never worse is confirmed
  with probability 0.91 on 80 items (0.73 on 60, 0.37 on 40:
  :func:`prefect_genopt.optimize.search.stats.power`); the test needs at least 25 items
  at all (:func:`~prefect_genopt.optimize.search.stats.min_confirmation_items`).

The pipeline records 16-ticket runs until the three pools are full (a run's pool is
decided by a hash of its random run id, so how many runs that takes varies), at least
:data:`MIN_RUNS` and at most :data:`MAX_RUNS` of them.

Example:
    >>> night_options(seed=3)[:4]
    ['--editable', 'prompt,demos', '--harvest', 'correct']
    >>> sum(POOLS.values())
    132
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "POOLS",
    "TICKETS_PER_RUN",
    "MIN_RUNS",
    "MAX_RUNS",
    "DRAFTS",
    "OPTIMIZER_CALLS",
    "EDITABLE",
    "KPI",
    "pools_filled",
    "record_runs",
    "night_options",
    "night_settings",
]

#: the demo's pool sizes, in labelled items (OptimizerSettings fields)
POOLS: dict[str, int] = {"evidence_items": 20, "selection_items": 32, "confirmation_items": 80}
#: tickets per recorded run of the triage example
TICKETS_PER_RUN = 16
#: fewest and most runs recorded before the night
MIN_RUNS, MAX_RUNS = 8, 24
#: instruction drafts asked of the optimizer model, and the night's optimizer-call budget:
#: the drafts only. The OptoPrime update, the night's one other optimizer call, writes a long
#: JSON answer that takes the embedded model 2-3 minutes on 2 cores; the budget leaves it out
#: (the night says so) to keep the demo short. Raise it with a faster GENOPT_MODEL.
DRAFTS = OPTIMIZER_CALLS = 4
#: what the night may change: the classifier's prompt and its few-shot demos
EDITABLE = ("prompt", "demos")
#: the per-ticket KPI (0/1), also what ``--harvest`` keeps experiences by
KPI = "correct"


def pools_filled(
    pipeline: str = "triage", pools: Mapping[str, int] | None = None
) -> dict[str, tuple[int, int]] | None:
    """The pools tonight's night would get from the recorded runs: ``{pool: (wanted,
    got)}``, or None when every pool is full. ``pools``: sizes other than :data:`POOLS`."""
    sizes = {**POOLS, **(pools or {})}
    import prefect_genopt as genopt
    from prefect_genopt.optimize.search.pools import assign_pools, pool_runs

    runs = pool_runs(genopt.Warehouse(), pipeline, KPI, limit=MAX_RUNS * 2)
    split = assign_pools(
        runs,
        pipeline=pipeline,
        evidence=sizes["evidence_items"],
        selection=sizes["selection_items"],
        confirmation=sizes["confirmation_items"],
    )
    if all(got >= wanted for wanted, got in split.sizes.values()):
        return None
    return dict(split.sizes)


def record_runs(
    first_seed: int,
    say: Callable[[str], None] = print,
    *,
    pools: Mapping[str, int] | None = None,
    min_runs: int | None = None,
) -> list[float]:
    """Run the triage example (16 tickets a run, ticket seeds ``first_seed + i``) until the
    night's pools (``pools``, else :data:`POOLS`) are full: at least ``min_runs`` (default
    :data:`MIN_RUNS`), at most :data:`MAX_RUNS` runs. Returns each run's accuracy."""
    from flows.examples.triage import triage

    accuracy: list[float] = []
    for i in range(MAX_RUNS):
        accuracy.append(triage(n=TICKETS_PER_RUN, seed=first_seed + i))
        say(f"  run {i + 1}: accuracy {accuracy[-1]:.2f}")
        if i + 1 >= (MIN_RUNS if min_runs is None else min_runs) and (
            pools_filled(pools=pools) is None
        ):
            say(f"  the night's pools are full after {i + 1} runs")
            break
    else:
        short = pools_filled(pools=pools)
        say(f"  {MAX_RUNS} runs: pools still short {short}; the night uses what there is")
    return accuracy


def night_options(seed: int) -> list[str]:
    """The demo's ``genopt optimize triage`` options (the search, the demo's pools)."""
    return [
        "--editable",
        ",".join(EDITABLE),
        "--harvest",
        KPI,
        "--evidence-items",
        str(POOLS["evidence_items"]),
        "--selection-items",
        str(POOLS["selection_items"]),
        "--confirmation-items",
        str(POOLS["confirmation_items"]),
        "--drafts",
        str(DRAFTS),
        "--optimizer-call-budget",
        str(OPTIMIZER_CALLS),
        "--seed",
        str(seed),
    ]


def night_settings(seed: int, **overrides: Any) -> Any:
    """The same night as :func:`night_options`, as ``OptimizerSettings`` (harvest first
    with ``genopt.harvest("triage", kpi="correct")``, as ``--harvest`` does)."""
    from prefect_genopt.optimize import OptimizerSettings

    return OptimizerSettings(
        pipeline="triage",
        starting_artifact={"editable": list(EDITABLE)},
        **{
            "seed": seed,
            "n_drafts": DRAFTS,
            "optimizer_call_budget": OPTIMIZER_CALLS,
            **POOLS,
            **overrides,
        },
    )

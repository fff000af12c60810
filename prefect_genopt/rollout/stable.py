"""The stable param set of a pipeline: one answer for the optimizer and the controller.

The optimizer needs it as the param set whose runs are its evidence and whose values
it starts from; the rollout controller as the param set a canary is compared with and
the pointer keeps. Both ask :func:`stable_param_set`:

1. the routing state's ``stable`` pointer in the Prefect API, whenever it names one:
   it is what every worker routes by (docs/architecture.md, decision 3);
2. else the param set of the pipeline's latest run on the ``stable`` arm: until a
   canary is promoted the pointer names none, and runs use the Tunables defaults,
   which the warehouse records with each run.

The optimizer also accepts, when no run is on the stable arm, the latest run's param
set on any arm (``any_arm=True``): a pipeline only ever run pinned (offline
evaluation, a benchmark) still has evidence to learn from. The controller does not: a
pinned, replayed or canary run is not what stable traffic runs on.

It reads the routing state and the warehouse, so it sits in the warehouse layer,
beside the routing state it reads (docs/architecture.md, the layers).

Example:
    >>> import tempfile, pathlib
    >>> from prefect_genopt.warehouse import Warehouse
    >>> from prefect_genopt.rollout.state import RoutingState
    >>> wh = Warehouse(pathlib.Path(tempfile.mkdtemp()) / "w.duckdb")
    >>> stable_param_set(wh, "triage", state=RoutingState(pipeline="triage", stable="ps_1"))
    'ps_1'
    >>> stable_param_set(wh, "triage", state=RoutingState(pipeline="triage")) is None
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect_genopt.rollout import store
from prefect_genopt.warehouse.param_sets import latest_run_param_set

if TYPE_CHECKING:
    from prefect_genopt.rollout.state import RoutingState
    from prefect_genopt.warehouse.warehouse import Warehouse

__all__ = ["stable_param_set"]


def stable_param_set(
    wh: Warehouse,
    pipeline: str,
    *,
    state: RoutingState | None = None,
    any_arm: bool = False,
) -> str | None:
    """The id of the param set the pipeline's stable arm runs on now (see the module).

    Args:
        wh: The warehouse (read-only is enough).
        pipeline: The pipeline.
        state: The routing state the caller has read already (the controller reads it
            under its lock). Without it the pointer is read here, and a Prefect API
            that cannot be reached counts as a pointer naming no stable param set.
        any_arm: With no run on the stable arm, take the latest run's on any arm.

    Returns:
        The param-set id, or None when neither the pointer nor a run names one.
    """
    if state is None:
        try:
            state = store.read_state(pipeline)
        except store.RoutingUnavailable:
            state = None
    if state is not None and state.stable:
        return state.stable
    return latest_run_param_set(wh, pipeline, any_arm=any_arm)

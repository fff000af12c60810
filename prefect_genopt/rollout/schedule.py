"""The canary check's schedule runs only while a rollout is running.

The ``genopt-canary`` deployments of a pipeline (``deployments/prefect.yaml``:
``canary-triage``, every 10 minutes) would otherwise start a no-op flow run every 10
minutes of every idle day. So the controller turns their schedules on when a rollout
starts or resumes and off when it ends or pauses (:func:`sync`, called with every
transition that changes whether a rollout is running), and a canary run that finds no
running rollout turns them off too (so a schedule left on by a fresh ``prefect deploy``
costs one no-op run). Turning a schedule off deletes the runs Prefect had queued for it.

Why a schedule paused when idle rather than an Automation: the controller is the only
writer of the rollout state and toggles the schedule in the same step, with no
dependency on event delivery or on the server's triggers service (off in embedded mode
and in the test harness); the schedule keeps checks at a steady cadence whatever the
pipeline's traffic, and the deployment's history shows every check. The toggle is best
effort: a failure is logged, never fails the rollout command (``genopt rollout analyze``
checks by hand).

A deployment belongs to a pipeline when it runs the ``genopt-canary`` flow with that
``pipeline`` parameter.

Example:
    >>> CANARY_FLOW
    'genopt-canary'
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["CANARY_FLOW", "canary_deployments", "sync"]

logger = logging.getLogger("prefect_genopt.rollout")

#: the flow name of the canary check (``rollout.flow.canary_flow``)
CANARY_FLOW = "genopt-canary"


def canary_deployments(client: Any, pipeline: str) -> list[Any]:
    """The deployments of the canary flow that check ``pipeline`` (a sync Prefect client)."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    found = client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[CANARY_FLOW])))
    return [d for d in found if (d.parameters or {}).get("pipeline") == pipeline]


def sync(pipeline: str, running: bool) -> list[str]:
    """Turn the schedules of ``pipeline``'s canary deployments on (``running``) or off.

    Returns:
        The names of the deployments whose schedules changed (none when they were as
        wanted already, or when the Prefect API could not be reached: logged).
    """
    from prefect.client.orchestration import get_client

    changed: list[str] = []
    try:
        with get_client(sync_client=True) as client:
            for dep in canary_deployments(client, pipeline):
                flipped = [s for s in dep.schedules if s.active != running]
                for s in flipped:
                    client.update_deployment_schedule(dep.id, s.id, active=running)
                if flipped:
                    changed.append(f"{CANARY_FLOW}/{dep.name}")
    except Exception as exc:  # noqa: BLE001 - best effort: the rollout itself is recorded
        what = "resume" if running else "pause"
        logger.warning(
            "could not %s the canary schedule of %r: %s%s",
            what,
            pipeline,
            exc,
            " (check by hand: genopt rollout analyze)" if running else "",
        )
        return changed
    for name in changed:
        logger.info(
            "canary schedule %s %s", name, "resumed: a rollout is running" if running else "paused"
        )
    return changed

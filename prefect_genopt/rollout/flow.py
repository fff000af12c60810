"""The canary analysis as a Prefect flow: ``genopt-canary``.

Deploy it on a short schedule (``deployments/prefect.yaml``), trigger it with an
Automation when a pipeline run completes, or run one check now with
``genopt rollout analyze PIPELINE``. Each run makes one check of the pipeline's
rollout (see :func:`prefect_genopt.rollout.controller.analyze`) and leaves a
Markdown artifact ``genopt-canary-<pipeline>`` with the arms, the decision and why, a
table artifact ``genopt-canary-<pipeline>-arms`` with both arms at every check of the
rollout, and a link to the published report when ``GENOPT_REPORT_URL`` is set
(:mod:`prefect_genopt.rollout.artifacts`). A run that finds no rollout running turns
the schedules of the pipeline's canary deployments off (:mod:`prefect_genopt.rollout.schedule`;
the controller turns them on when a rollout starts).

Runs carry the tags of :func:`run_tags` (``genopt``, ``genopt-canary``,
``genopt-pipeline:<name>``): the deployment sets them, and ``python flows/canary.py``
calls the flow inside :func:`prefect.tags`.

Example:
    >>> run_tags("triage")
    ['genopt', 'genopt-canary', 'genopt-pipeline:triage']
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from prefect_genopt.locks import LockTimeout, slug
from prefect_genopt.rollout import schedule
from prefect_genopt.rollout.artifacts import publish_arms, publish_report_link
from prefect_genopt.rollout.controller import analyze
from prefect_genopt.rollout.report import markdown, rollout_status
from prefect_genopt.warehouse import Warehouse

__all__ = ["canary_flow", "run_tags"]


def run_tags(pipeline: str) -> list[str]:
    """The tags of a canary run of ``pipeline`` (filter on them in the Prefect UI)."""
    return ["genopt", "genopt-canary", f"genopt-pipeline:{pipeline}"]


@flow(name="genopt-canary", log_prints=False)
def canary_flow(pipeline: str, warehouse: str | None = None) -> dict[str, Any]:
    """Check ``pipeline``'s canary once: continue, advance, promote, abort or pause.

    Args:
        pipeline: The pipeline whose rollout to check.
        warehouse: The warehouse file (default: GENOPT_WAREHOUSE).
    """
    logger = get_run_logger()
    try:
        result = analyze(pipeline, warehouse=warehouse)
    except LockTimeout as exc:
        logger.warning("skipped: %s", exc)
        return {"pipeline": pipeline, "decision": "skipped", "reason": str(exc)}
    logger.info(result.summary())
    if result.state.status != "running":
        schedule.sync(pipeline, running=False)  # no rollout to check: no more no-op runs
    wh = Warehouse(warehouse)
    status = rollout_status(pipeline, wh)
    create_markdown_artifact(
        markdown=markdown(status),
        key=f"genopt-canary-{slug(pipeline)}",
        description=f"genopt canary of {pipeline}: {result.decision.kind}",
    )
    publish_arms(wh, pipeline, result.state.rollout_id or result.state.last_rollout_id)
    publish_report_link(pipeline)
    a = result.assessment
    return {
        "pipeline": pipeline,
        "decision": result.decision.kind,
        "reason": result.decision.reason,
        "applied": result.applied,
        "verdict": a.verdict if a else None,
        "n_stable": a.stable.n if a else 0,
        "n_canary": a.canary.n if a else 0,
        "status": result.state.status,
        "weight": result.state.weight,
        "revision": result.state.revision,
    }

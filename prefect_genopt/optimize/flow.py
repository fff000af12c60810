"""The optimizer as a Prefect flow: ``genopt-optimize``.

Deploy it nightly (``deployments/prefect.yaml``), or run it now with
``genopt optimize PIPELINE`` / ``python flows/optimize.py PIPELINE``. It logs
progress, never overlaps itself for one pipeline (a Prefect global concurrency
limit ``genopt-optimize-<pipeline>`` of 1, created when missing: Prefect's
``concurrency()`` on a limit that does not exist silently does nothing), and
leaves a Markdown artifact of its proposals on the flow run. With ``harvest``, it
first stores the pipeline's new good, checked runs as experiences (what verified
replay and ``demos`` fields draw on), so the nightly job keeps them fresh. Besides the
Markdown it leaves a table artifact of the pipeline's daily KPI per param set and arm
(``genopt-optimize-<pipeline>-kpi``) and, when ``GENOPT_REPORT_URL`` is set, a link to
the published report (:mod:`prefect_genopt.rollout.artifacts`).

Runs carry the tags of :func:`run_tags` (``genopt``, ``genopt-optimizer``,
``genopt-pipeline:<name>``): the nightly deployment sets them, and ``genopt optimize``
and ``python flows/optimize.py`` call the flow inside :func:`prefect.tags`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from prefect_genopt import locks
from prefect_genopt.errors import UnavailableError
from prefect_genopt.optimize.config import OptimizerSettings
from prefect_genopt.optimize.runner import optimize
from prefect_genopt.proposals.proposals import markdown
from prefect_genopt.replay.experiences import harvest as harvest_experiences
from prefect_genopt.rollout.artifacts import publish_kpi, publish_report_link
from prefect_genopt.rollout.controller import RolloutError, start_rollout
from prefect_genopt.warehouse import Warehouse

__all__ = ["optimize_flow", "lock_name", "run_tags"]


def run_tags(pipeline: str) -> list[str]:
    """The tags of an optimizer run of ``pipeline`` (filter on them in the Prefect UI).

    Example:
        >>> run_tags("triage")
        ['genopt', 'genopt-optimizer', 'genopt-pipeline:triage']
    """
    return ["genopt", "genopt-optimizer", f"genopt-pipeline:{pipeline}"]


def lock_name(pipeline: str) -> str:
    """The global concurrency limit guarding one pipeline's optimizer runs.

    Example:
        >>> lock_name("Ticket Triage")
        'genopt-optimize-ticket-triage'
    """
    return locks.lock_name("optimize", pipeline)


@flow(name="genopt-optimize", log_prints=False)
def optimize_flow(
    pipeline: str,
    settings: dict[str, Any] | None = None,
    wait_seconds: float = 30.0,
    warehouse: str | None = None,
    harvest: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Propose better params for ``pipeline`` from the warehouse's evidence.

    Args:
        pipeline: The pipeline to optimize.
        settings: :class:`~prefect_genopt.optimize.OptimizerSettings` fields
            (minibatch_size, max_updates, budget_usd, model...).
        wait_seconds: How long to wait for another optimizer run of the same
            pipeline to finish before skipping this one.
        warehouse: The warehouse file (default: GENOPT_WAREHOUSE).
        harvest: Before optimizing, harvest experiences with these
            :func:`~prefect_genopt.harvest` arguments (``kpi``, and ``threshold``,
            ``direction``, ``expires_in_hours`` as needed), e.g. ``{"kpi": "correct"}``.
    """
    logger = get_run_logger()
    config = OptimizerSettings(pipeline=pipeline, **(settings or {}))
    name = lock_name(pipeline)
    ctx = FlowRunContext.get()
    run_id = str(ctx.flow_run.id) if ctx and ctx.flow_run else None
    try:
        with locks.pipeline_lock("optimize", pipeline, wait_seconds):
            harvested = _harvest(pipeline, harvest, warehouse, logger) if harvest else None
            result = optimize(
                config,
                warehouse=warehouse,
                progress=logger.info,
                optimizer_run_id=run_id,
            )
    except locks.LockTimeout:
        msg = f"skipped: another optimizer run for {pipeline!r} held {name!r} for {wait_seconds:g}s"
        logger.warning(msg)
        return {"pipeline": pipeline, "skipped": True, "reason": msg}
    rollout = _auto_rollout(config, result, warehouse, logger) if config.rollout == "auto" else None
    ids = [u.proposal_id for u in result.updates]
    rows = (
        Warehouse(warehouse).sql(
            "SELECT * FROM proposals WHERE list_contains(?, proposal_id) ORDER BY update_index",
            [ids],
        )
        if ids
        else []
    )
    create_markdown_artifact(
        markdown=markdown(rows, title=f"Optimizer proposals for {pipeline}")
        + f"\n\n_{result.summary()}_\n",
        key=name,
        description=f"genopt optimizer run for {pipeline}: {result.summary()}",
    )
    publish_kpi(Warehouse(warehouse), pipeline, config.window_days)
    publish_report_link(pipeline)
    return {
        "pipeline": pipeline,
        "skipped": False,
        "proposals": [u.proposal_id for u in result.proposals],
        "candidates": [u.candidate_param_set_id for u in result.proposals],
        "updates": [
            {"proposal_id": u.proposal_id, "status": u.status, "reason": u.reason}
            for u in result.updates
        ],
        "stop_reason": result.stop_reason,
        "tokens": result.tokens,
        "cost_usd": result.cost_usd,
        "llm_calls": result.llm_calls,
        "seconds": round(result.seconds, 3),
        "llm_seconds": round(result.llm_seconds, 3),
        "model": result.model,
        "rollout": rollout,
        "harvest": harvested,
    }


def _harvest(
    pipeline: str, args: dict[str, Any], warehouse: str | None, logger: Any
) -> dict[str, Any]:
    """Harvest experiences before optimizing (see ``optimize_flow``'s ``harvest``)."""
    args = dict(args)
    hours = args.pop("expires_in_hours", None)
    unknown = set(args) - {"kpi", "threshold", "direction"}
    if "kpi" not in args or unknown:
        raise ValueError(
            "harvest takes kpi (required), threshold, direction and expires_in_hours"
            + (f"; unknown: {', '.join(sorted(unknown))}" if unknown else "")
        )
    result = harvest_experiences(
        pipeline,
        expires_in=timedelta(hours=hours) if hours is not None else None,
        warehouse=warehouse,
        **args,
    )
    logger.info("harvested %s", result)
    return {
        "verified": result.verified,
        "rejected": result.rejected,
        "refused": result.refused,
        "not_good": result.not_good,
    }


def _auto_rollout(
    config: OptimizerSettings, result: Any, warehouse: str | None, logger: Any
) -> dict[str, Any] | None:
    """Start a canary of the run's latest proposal (policy ``rollout='auto'``)."""
    if not result.proposals:
        return None
    proposal = result.proposals[-1]
    plan = dict(config.rollout_plan or {})
    if config.kpi:
        plan.setdefault("kpi", config.kpi)  # else the proposal's KPI
    plan.setdefault("direction", config.direction)
    try:
        state = start_rollout(
            config.pipeline,
            proposal_id=proposal.proposal_id,
            plan=plan,
            actor="genopt-optimize",
            reason="the optimizer's rollout policy is 'auto'",
            warehouse=warehouse,
        )
    except (RolloutError, locks.LockTimeout, UnavailableError) as exc:
        # the proposal stays on record: a person (or tomorrow's run) can start it
        logger.warning("no canary started for %s: %s", proposal.proposal_id, exc)
        return {"started": False, "reason": str(exc)}
    logger.info(
        "canary %s started for %s at %.0f%%",
        state.rollout_id,
        proposal.proposal_id,
        100 * state.weight,
    )
    return {"started": True, "rollout_id": state.rollout_id, "weight": state.weight}

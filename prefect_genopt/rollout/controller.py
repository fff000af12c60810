"""The rollout controller: start, check, promote, abort, pause, resume, pin.

Every verb runs under the pipeline's ``genopt-rollout-<pipeline>`` lock (a Prefect
global concurrency limit), reads the pointer from the Prefect API, computes the next
state with the pure functions of :mod:`prefect_genopt.rollout.state`, writes the
pointer only if its revision is unchanged, and appends the history (``rollouts``,
``rollout_events``, ``rollout_analyses``) to the warehouse through the spool. Each
change emits a Prefect event ``genopt.rollout.<kind>`` (``started``, ``advanced``,
``promoted``, ``aborted``, ``paused``, ``resumed``, ``pinned``, ``unpinned``; every
check also emits ``genopt.rollout.checked``) so Automations can notify or gate.

Before a canary starts, :func:`start_rollout` checks that it can decide: the KPI
must be one the pipeline emitted in its recent runs (``allow_new_kpi`` overrides), and
per item when the pipeline routes items one by one (``allow_run_kpi`` overrides); and
the replay gate must run (``gate=False`` skips it): a gate that cannot run is an error
(:class:`GateSkipped`, exit 4), not a silent start without a safety net.

Commands that reach the Prefect API (the lock, the pointer) say "Prefect API
unreachable at URL" (:class:`~prefect_genopt.rollout.store.PrefectUnavailable`, exit 2)
when it is down, not a traceback.

A check (:func:`analyze`) measures the rollout's KPI per arm since it started
(feedback rows whose arm and param set match the arm), asks
:func:`~prefect_genopt.rollout.analysis.assess` for a verdict and
:func:`~prefect_genopt.rollout.state.decide` for the decision. A check with no new
data changes nothing, so running it twice never advances twice.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from prefect_genopt import events, spool
from prefect_genopt.errors import BadInputError, GateSkippedError, GateStoppedError
from prefect_genopt.locks import pipeline_lock
from prefect_genopt.proposals import ProposalError, get_proposal, rating_row, set_status
from prefect_genopt.records import current_user, row_record
from prefect_genopt.redaction import clean
from prefect_genopt.replay.gate import gate_proposal
from prefect_genopt.rollout import schedule, store
from prefect_genopt.rollout import state as sm
from prefect_genopt.rollout.analysis import ArmStats, Assessment, assess, mann_whitney
from prefect_genopt.rollout.plan import RolloutPlan
from prefect_genopt.rollout.stable import stable_param_set
from prefect_genopt.settings import get_settings
from prefect_genopt.tunables import param_set_id as compute_param_set_id
from prefect_genopt.warehouse import Warehouse, as_warehouse
from prefect_genopt.warehouse.param_sets import param_set_values
from prefect_genopt.warehouse.schema import utcnow

__all__ = [
    "RolloutError",
    "GateStopped",
    "GateSkipped",
    "CheckResult",
    "start_rollout",
    "analyze",
    "promote",
    "abort",
    "pause",
    "resume",
    "pin",
    "unpin",
    "get_state",
    "measure",
    "check_kpi",
    "Measurement",
    "EVENT_NAMES",
    "flush_events",
]

logger = logging.getLogger("prefect_genopt.rollout")

#: decision kind -> the Prefect event it emits
EVENT_NAMES = {
    "started": "genopt.rollout.started",
    "advance": "genopt.rollout.advanced",
    "promote": "genopt.rollout.promoted",
    "abort": "genopt.rollout.aborted",
    "withdraw": "genopt.rollout.withdrawn",
    "pause": "genopt.rollout.paused",
    "resume": "genopt.rollout.resumed",
    "pin": "genopt.rollout.pinned",
    "unpin": "genopt.rollout.unpinned",
}
CHECKED_EVENT = "genopt.rollout.checked"
_PROPOSAL_STATUS = {
    "started": "canary",
    "promote": "promoted",
    "abort": "rolled_back",
    "withdraw": "proposed",  # never judged: it can enter a canary again
}
#: the recent runs whose feedback says which KPIs a pipeline emits
RECENT_RUNS = 200


class RolloutError(BadInputError, ValueError):
    """A rollout command that cannot be carried out as asked (the message says why)."""


class GateStopped(GateStoppedError, RolloutError):
    """The replay gate found the candidate worse than stable: it was not rolled out."""


class GateSkipped(GateSkippedError, RolloutError):
    """The replay gate could not run (the message says why): nothing was rolled out, and
    a proposal stays ``proposed``. Start with ``gate=False`` (``--no-gate``) to go on
    without it."""


def _not_active(state: sm.RoutingState) -> None:
    if state.active:
        raise RolloutError(
            f"rollout {state.rollout_id} of {state.pipeline!r} is already {state.status}; "
            f"promote or abort it first (`genopt rollout status {state.pipeline}`)"
        )


@dataclass(frozen=True)
class CheckResult:
    """One analysis: the assessment, the decision and whether it was applied."""

    pipeline: str
    state: sm.RoutingState
    decision: sm.Decision
    assessment: Assessment | None = None
    analysis_id: str | None = None
    applied: bool = False

    def summary(self) -> str:
        """One line for logs and the CLI."""
        return f"{self.pipeline}: {self.decision.kind}: {self.decision.reason}"


#: seconds a rollout command's lock lease lasts if its holder dies (its work takes seconds)
LOCK_LEASE_SECONDS = 120.0


@contextlib.contextmanager
def _lock(pipeline: str) -> Iterator[str]:
    """The pipeline's rollout lock; "the Prefect API is down" errors in the block become
    :class:`~prefect_genopt.rollout.store.PrefectUnavailable`."""
    with store.reaching_api(f"the rollout of {pipeline!r}"):
        with pipeline_lock(
            "rollout", pipeline, get_settings().canary_wait, lease_seconds=LOCK_LEASE_SECONDS
        ) as name:
            yield name


def _now() -> datetime:
    return utcnow()


def get_state(pipeline: str) -> sm.RoutingState:
    """The pipeline's pointer as the Prefect API holds it now.

    Raises:
        PrefectUnavailable: The API cannot be reached ("Prefect API unreachable at URL").
        RolloutError: The API holds a malformed pointer.
    """
    try:
        return store.read_state(pipeline)
    except store.PrefectUnavailable:
        raise
    except store.RoutingUnavailable as exc:
        raise RolloutError(str(exc)) from exc


def _emit(kind: str, state: sm.RoutingState, reason: str, extra: Mapping[str, Any]) -> None:
    related = []
    rollout_id = state.rollout_id or state.last_rollout_id
    if rollout_id:
        related.append(
            {
                "prefect.resource.id": f"genopt.rollout.{rollout_id}",
                "prefect.resource.role": "rollout",
            }
        )
    events.emit(
        EVENT_NAMES.get(kind, CHECKED_EVENT if kind == "checked" else f"genopt.rollout.{kind}"),
        events.pipeline_resource(state.pipeline),
        related,
        {
            "reason": reason,
            "status": state.status,
            "weight": state.weight,
            "step": state.step + 1,
            "stable": state.stable,
            "canary": state.canary,
            "pinned": state.pinned,
            "revision": state.revision,
            **extra,
        },
    )


def flush_events(timeout: float = 5.0) -> None:
    """Wait, at most ``timeout`` seconds, until Prefect has sent the events this process
    emitted (:func:`prefect_genopt.events.flush`). A short-lived process (a ``genopt``
    command) would otherwise exit with them still queued, and Prefect's exit-time drain
    warns "Still processing items"."""
    events.flush(timeout)


def _event_row(
    state: sm.RoutingState,
    decision: sm.Decision,
    actor: str,
    rollout_id: str | None,
    now: datetime,
    analysis_id: str | None = None,
) -> dict[str, Any]:
    status = {"promote": "promoted", "abort": "aborted", "withdraw": "withdrawn"}.get(
        decision.kind, state.status
    )
    return row_record(
        "rollout_events",
        {
            "event_id": uuid.uuid4().hex,
            "rollout_id": rollout_id,
            "pipeline": state.pipeline,
            "created_at": now.isoformat(),
            "kind": decision.kind,
            "status": status,
            "actor": actor,
            "reason": clean(decision.reason, 4000),
            "revision": state.revision,
            "step": state.step + 1,
            "weight": state.weight,
            "stable_param_set_id": state.stable,
            "canary_param_set_id": state.canary,
            "pinned_param_set_id": state.pinned,
            "analysis_id": analysis_id,
        },
    )


def _proposal_status(
    wh: Warehouse, proposal_id: str | None, kind: str, reason: str, actor: str
) -> None:
    status = _PROPOSAL_STATUS.get(kind)
    if not proposal_id or not status:
        return
    try:
        set_status(wh, proposal_id, status, reason=reason, actor=actor)
    except ProposalError as exc:
        logger.warning("proposal %s not moved to %s: %s", proposal_id, status, exc)


def _apply(
    wh: Warehouse,
    before: sm.RoutingState,
    after: sm.RoutingState,
    decision: sm.Decision,
    actor: str,
    rows: list[dict[str, Any]] | None = None,
    analysis_id: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write the pointer (revision-checked), then the history rows and the events."""
    if decision.changed:
        store.write_state(after, expected_revision=before.revision)
    now = _now()
    rollout_id = before.rollout_id or after.rollout_id
    out = list(rows or [])
    if decision.changed:
        out.append(_event_row(after, decision, actor, rollout_id, now, analysis_id))
    if out:
        spool.append(out, wh.spool_dir)
    _proposal_status(
        wh, before.proposal_id or after.proposal_id, decision.kind, decision.reason, actor
    )
    wh.ingest_if_free()
    if decision.changed:
        # sent by Prefect's events worker thread (drained at process exit)
        _emit(decision.kind, after, decision.reason, {"actor": actor, **(extra or {})})
        running = after.status == "running"
        if running != (before.status == "running"):
            schedule.sync(after.pipeline, running)  # the canary check runs only meanwhile


def _values_of(wh: Warehouse, pipeline: str, ps_id: str) -> dict[str, Any]:
    values = param_set_values(wh, pipeline, ps_id)
    if values is None:
        raise RolloutError(f"param set {ps_id} of {pipeline!r} is not in the warehouse")
    return values


def _check_values(wh: Warehouse, pipeline: str, values: Any) -> dict[str, Any]:
    """A hand-written param set, checked against the pipeline's latest Tunables schema."""
    if not isinstance(values, dict) or not values:
        raise RolloutError("a param set must be a non-empty JSON object of Tunables values")
    rows = wh.sql(
        "SELECT schema FROM pipelines WHERE pipeline = ? ORDER BY version DESC LIMIT 1", [pipeline]
    )
    if not rows:
        raise RolloutError(f"no pipeline {pipeline!r} in the warehouse; run it once first")
    schema = orjson.loads(rows[0]["schema"])
    props = schema.get("properties", {})
    unknown = sorted(set(values) - set(props))
    if unknown:
        raise RolloutError(
            f"unknown param(s) {', '.join(unknown)} for {pipeline!r}; its params are "
            f"{', '.join(sorted(props))}"
        )
    import jsonschema

    merged = {k: p.get("default") for k, p in props.items() if "default" in p}
    merged.update(values)
    try:
        jsonschema.validate(merged, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "values"
        raise RolloutError(f"param set does not fit {pipeline!r}: {where}: {exc.message}") from None
    return merged


def _stable_of(wh: Warehouse, state: sm.RoutingState) -> str:
    """The stable param set the canary is compared with: the pointer's, else the latest
    stable-arm run's (never a pinned, replayed or canary run's)."""
    stable = stable_param_set(wh, state.pipeline, state=state)
    if stable is None:
        raise RolloutError(
            f"no stable run of {state.pipeline!r} in the warehouse: run the pipeline at least "
            "once so its stable param set is known"
        )
    return stable


def _plan(plan: RolloutPlan | Mapping[str, Any] | None, kpi: str | None) -> RolloutPlan:
    if isinstance(plan, RolloutPlan):
        return plan
    fields = dict(plan or {})
    if kpi and "kpi" not in fields:
        fields["kpi"] = kpi
    if "kpi" not in fields:
        raise RolloutError("the rollout needs a KPI to judge (--kpi NAME)")
    try:
        return RolloutPlan(**fields)
    except ValueError as exc:
        raise RolloutError(f"invalid rollout plan: {exc}") from None


def start_rollout(
    pipeline: str,
    *,
    proposal_id: str | None = None,
    values: Mapping[str, Any] | None = None,
    plan: RolloutPlan | Mapping[str, Any] | None = None,
    actor: str | None = None,
    reason: str | None = None,
    warehouse: Warehouse | str | Path | None = None,
    gate: bool = True,
    gate_runs: int = 1,
    allow_new_kpi: bool = False,
    allow_run_kpi: bool = False,
) -> sm.RoutingState:
    """Start a canary of a proposal's candidate, or of a hand-written param set.

    First the plan's KPI is checked (see :func:`check_kpi`): one the pipeline has not
    emitted in its recent runs, or one with only run-level values while items are
    routed one by one, would never reach a verdict. Then the replay gate
    (:mod:`prefect_genopt.replay.gate`) replays ``gate_runs`` recorded stable runs (not
    the proposal's evidence) with the candidate, offline; a candidate worse than stable
    on the same items by more than the plan's tolerance is stopped there (a proposal is
    rejected) and never sees a real item. A gate that cannot run stops the start too
    (:class:`GateSkipped`; the proposal stays ``proposed``) unless ``gate=False``.

    Args:
        pipeline: The pipeline.
        proposal_id: A ``proposed`` proposal (a unique prefix is enough).
        values: Or: param values written by a person (merged over the defaults,
            checked against the pipeline's Tunables schema).
        plan: A :class:`RolloutPlan` or its fields; the KPI defaults to the
            proposal's KPI.
        actor: Who starts it (default: the login name).
        reason: Why (recorded).
        warehouse: The warehouse (default: GENOPT_WAREHOUSE).
        gate: Run the replay gate first (default); False starts without it.
        gate_runs: Recorded runs the gate replays (each costs one pipeline run).
        allow_new_kpi: Accept a KPI the pipeline has not emitted in its recent runs.
        allow_run_kpi: Accept a KPI with only run-level values while items are routed
            one by one.

    Raises:
        GateStopped: The replay gate stopped the candidate.
        GateSkipped: The replay gate could not run (and ``gate`` is True).
        RolloutError: Unknown or unusable proposal, values that do not fit, a
            rollout already active, no stable run yet, a KPI that cannot decide.
        PrefectUnavailable: The Prefect API cannot be reached.
    """
    if (proposal_id is None) == (values is None):
        raise RolloutError("give exactly one of a proposal id (--proposal) or values (--params)")
    wh = as_warehouse(warehouse)
    actor = actor or current_user()
    _not_active(get_state(pipeline))  # fail fast, before the gate runs
    source = "manual"
    kpi = None
    evidence: list[str] = []
    if proposal_id is not None:
        try:
            prop = get_proposal(wh, proposal_id)
        except ProposalError as exc:
            raise RolloutError(str(exc)) from None
        if prop["pipeline"] != pipeline:
            raise RolloutError(f"proposal {prop['proposal_id']} is for {prop['pipeline']!r}")
        if prop["status"] != "proposed":
            raise RolloutError(
                f"proposal {prop['proposal_id']} is {prop['status']!r}; only a 'proposed' "
                "one can enter a canary"
            )
        proposal_id = str(prop["proposal_id"])
        canary = str(prop["candidate_param_set_id"])
        canary_values = _values_of(wh, pipeline, canary)
        kpi = prop.get("kpi")
        evidence = list(orjson.loads(prop["evidence_run_ids"] or "[]"))
        source = "proposal"
    else:
        canary_values = _check_values(wh, pipeline, dict(values or {}))
        canary = compute_param_set_id(canary_values)
    the_plan = _plan(plan, kpi)
    stable = _stable_of(wh, get_state(pipeline))
    if canary == stable:
        raise RolloutError(f"the candidate {canary} is the stable param set already")
    check_kpi(wh, pipeline, the_plan, allow_new_kpi=allow_new_kpi, allow_run_kpi=allow_run_kpi)
    gate_note = "replay gate off"
    if gate:
        g = gate_proposal(
            pipeline,
            canary_values,
            kpi=the_plan.kpi,
            stable_param_set_id=stable,
            candidate_param_set_id=canary,
            proposal_id=proposal_id,
            actor=actor,
            direction=the_plan.direction,
            tolerance=the_plan.tolerance,
            tolerance_mode=the_plan.tolerance_mode,
            exclude_run_ids=evidence,
            runs=gate_runs,
            warehouse=wh,
        )
        gate_note = f"replay gate {g.outcome}: {g.reason}"
        if g.stopped:
            raise GateStopped(f"{canary} was not rolled out: {gate_note}")
        if g.outcome != "passed":
            raise GateSkipped(
                f"{canary} was not rolled out: the replay gate could not run: {g.reason}. "
                "Fix that, or start with --no-gate (gate=False): the canary is then the "
                "only check"
            )
    with _lock(pipeline):
        before = get_state(pipeline)
        _not_active(before)
        if before.stable and before.stable != stable:
            raise RolloutError(
                f"the stable param set of {pipeline!r} changed to {before.stable} while the "
                "replay gate ran; start again"
            )
        stable_values = _values_of(wh, pipeline, stable)
        store.save_param_set(pipeline, stable, stable_values)
        store.save_param_set(pipeline, canary, canary_values)
        rollout_id = f"ro_{utcnow():%Y%m%d%H%M%S}_{uuid.uuid4().hex[:6]}"
        now = _now()
        try:
            after, decision = sm.start(
                before.model_copy(update={"stable": stable}),
                rollout_id,
                canary,
                the_plan,
                now.isoformat(),
                proposal_id=proposal_id,
            )
        except sm.RolloutStateError as exc:
            raise RolloutError(str(exc)) from None
        why = f"{decision.reason}; {gate_note}" + (f"; {reason}" if reason else "")
        decision = decision.model_copy(update={"reason": why})
        after = after.model_copy(update={"last_reason": f"{after.last_reason}; {gate_note}"[:1500]})
        rows = [
            row_record(
                "param_sets",
                {
                    "pipeline": pipeline,
                    "param_set_id": canary,
                    "values": canary_values,
                    "source": source,
                    "created_at": now.isoformat(),
                },
            ),
            row_record(
                "rollouts",
                {
                    "rollout_id": rollout_id,
                    "pipeline": pipeline,
                    "created_at": now.isoformat(),
                    "proposal_id": proposal_id,
                    "stable_param_set_id": stable,
                    "canary_param_set_id": canary,
                    "plan": the_plan.model_dump(mode="json"),
                    "actor": actor,
                    "reason": clean(reason, 4000) if reason else None,
                    "status": "running",
                    "status_at": now.isoformat(),
                },
            ),
        ]
        _apply(wh, before, after, decision, actor, rows, extra={"plan": the_plan.describe()})
        logger.info("rollout %s of %s started: %s", rollout_id, pipeline, the_plan.describe())
        return after


def check_kpi(
    wh: Warehouse,
    pipeline: str,
    plan: RolloutPlan,
    *,
    allow_new_kpi: bool = False,
    allow_run_kpi: bool = False,
) -> None:
    """Refuse a KPI a rollout could never decide on.

    * A KPI with no value in the pipeline's last :data:`RECENT_RUNS` runs (a typo, or
      one the code does not emit): the canary would wait for values that never come.
    * A KPI with only run-level values (no ``item_key``) while the pipeline routes items
      one by one (its task spans carry item keys): a run-level value counts for an arm
      only when all the run's items went to that arm, and at a 10% canary weight almost
      no run has all its items on the canary, so the canary would get almost no values.

    Raises:
        RolloutError: Either case, unless allowed (``allow_new_kpi``, ``allow_run_kpi``).
    """
    kpi = plan.kpi
    recent = "SELECT run_id FROM runs WHERE pipeline = ? ORDER BY start_time DESC LIMIT ?"
    rows = wh.sql(
        f"""
        SELECT f.kpi, count(*) AS n, count(f.item_key) AS per_item
        FROM feedback f
        WHERE f.run_id IN ({recent}) AND f.value IS NOT NULL
        GROUP BY f.kpi ORDER BY f.kpi
        """,
        [pipeline, RECENT_RUNS],
    )
    emitted = {r["kpi"]: r for r in rows}
    if kpi not in emitted:
        if allow_new_kpi:
            return
        others = ", ".join(sorted(emitted)) or "none"
        raise RolloutError(
            f"{pipeline!r} has not emitted the KPI {kpi!r} in its last {RECENT_RUNS} runs "
            f"(the KPIs with values there: {others}): the rollout would wait for values that "
            "never come. Check the name, or give --allow-new-kpi (allow_new_kpi=True) if the "
            "pipeline emits it from now on"
        )
    if emitted[kpi]["per_item"] or allow_run_kpi:
        return
    (items,) = wh.sql(
        f"SELECT count(*) AS n FROM spans WHERE run_id IN ({recent}) AND item_key IS NOT NULL",
        [pipeline, RECENT_RUNS],
    )
    if not items["n"]:
        return  # runs are routed whole: a run-level KPI gets the run's arm
    raise RolloutError(
        f"the KPI {kpi!r} of {pipeline!r} has only run-level values (no item_key), while "
        "the pipeline routes its items one by one (current_params(item_key=...)): a "
        "run-level value counts for an arm only when all the run's items went to it, and "
        f"at a {plan.steps[0]:.0%} canary weight almost no run has all its items on the "
        "canary, so the rollout would hardly ever reach a verdict. Judge by a per-item KPI "
        "(feedback(kpi, value, item_key=...)), or give --allow-run-kpi (allow_run_kpi=True)"
    )


@dataclass(frozen=True)
class Measurement:
    """A rollout's KPI values per arm since it started, and per step."""

    stable: list[float]
    canary: list[float]
    #: (stable values, canary values) of each step, in order
    steps: list[tuple[list[float], list[float]]]
    first: datetime | None
    last: datetime | None

    def strata(self) -> list[tuple[ArmStats, ArmStats]]:
        """Per-step arm stats, for :func:`~prefect_genopt.rollout.analysis.assess`."""
        return [(ArmStats.from_values(s), ArmStats.from_values(c)) for s, c in self.steps]

    def assess(self, plan: RolloutPlan) -> Assessment:
        """The check's assessment: the arms compared within steps, with Mann-Whitney."""
        return assess(
            ArmStats.from_values(self.stable),
            ArmStats.from_values(self.canary),
            plan,
            mann_whitney(self.stable, self.canary, plan.direction),
            self.strata(),
        )


def measure(wh: Warehouse, state: sm.RoutingState) -> Measurement:
    """The rollout's KPI values since it started, per arm and per step.

    A value counts for an arm when its feedback row carries that arm and the
    arm's param set id (so values from before the rollout, from offline runs or
    from a pinned period never mix in); it belongs to the step during which its
    feedback was given.
    """
    plan = state.get_plan()
    rows = wh.sql(
        """
        SELECT arm, value, created_at FROM feedback
        WHERE pipeline = ? AND kpi = ? AND value IS NOT NULL AND created_at >= ?
          AND ((arm = 'stable' AND param_set_id = ?) OR (arm = 'canary' AND param_set_id = ?))
        ORDER BY created_at
        """,
        [state.pipeline, plan.kpi, state.started_at, state.stable, state.canary],
    )
    starts = [datetime.fromisoformat(t) for t in (state.step_starts or (state.started_at or "",))]
    steps: list[tuple[list[float], list[float]]] = [([], []) for _ in starts]
    for r in rows:
        k = max(bisect.bisect_right(starts, r["created_at"]) - 1, 0)
        steps[k][1 if r["arm"] == "canary" else 0].append(float(r["value"]))
    return Measurement(
        stable=[v for s, _ in steps for v in s],
        canary=[v for _, c in steps for v in c],
        steps=steps,
        first=rows[0]["created_at"] if rows else None,
        last=rows[-1]["created_at"] if rows else None,
    )


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _analysis_row(
    analysis_id: str,
    before: sm.RoutingState,
    after: sm.RoutingState,
    a: Assessment,
    decision: sm.Decision,
    plan: RolloutPlan,
    window: tuple[datetime | None, datetime | None],
    now: datetime,
) -> dict[str, Any]:
    mw = a.mann_whitney
    return row_record(
        "rollout_analyses",
        {
            "analysis_id": analysis_id,
            "rollout_id": before.rollout_id,
            "pipeline": before.pipeline,
            "created_at": now.isoformat(),
            "revision": before.revision,
            "step": before.step + 1,
            "weight": before.weight,
            "kpi": plan.kpi,
            "direction": plan.direction,
            "verdict": a.verdict,
            "decision": decision.kind,
            "reason": clean(decision.reason, 4000),
            "applied": decision.changed,
            "n_stable": a.stable.n,
            "n_canary": a.canary.n,
            "mean_stable": _finite(a.stable.mean),
            "mean_canary": _finite(a.canary.mean),
            "ci_stable": [_finite(x) for x in a.stable.interval()],
            "ci_canary": [_finite(x) for x in a.canary.interval()],
            "effect": _finite(a.effect),
            "relative_effect": _finite(a.relative_effect),
            "margin": _finite(a.margin),
            "se": _finite(a.se),
            "log_lr_harm": _finite(a.log_lr_harm),
            "log_lr_safe": _finite(a.log_lr_safe),
            "harm_threshold": _finite(a.harm_threshold),
            "safe_threshold": _finite(a.safe_threshold),
            "p_one_look": _finite(a.p_one_look),
            "mw_superiority": _finite(mw.superiority) if mw else None,
            "mw_p_worse": _finite(mw.p_worse) if mw else None,
            "failed_checks": after.failed_checks,
            "inconclusive_checks": after.inconclusive_checks,
            "window_start": window[0].isoformat() if window[0] else None,
            "window_end": window[1].isoformat() if window[1] else None,
        },
    )


def analyze(
    pipeline: str,
    *,
    warehouse: Warehouse | str | Path | None = None,
    actor: str = "controller",
) -> CheckResult:
    """Run one check of the pipeline's rollout now and apply its decision.

    Returns a result with decision ``none`` when no rollout is running (paused
    rollouts are measured but not acted on). Two overlapping calls are
    serialized by the pipeline's lock; a decision computed from a pointer that
    changed meanwhile is dropped (``applied=False``).
    """
    with _lock(pipeline):
        before = get_state(pipeline)
        if not before.active:
            why = f"no rollout is active for {pipeline!r}"
            if before.last_rollout_id:
                why += f" (the last, {before.last_rollout_id}, was {before.last_outcome})"
            return CheckResult(
                pipeline, before, sm.Decision(kind="none", reason=why, changed=False)
            )
        plan = before.get_plan()
        wh = as_warehouse(warehouse)
        m = measure(wh, before)
        assessment = m.assess(plan)
        first, last = m.first, m.last
        now = _now()
        after, decision = sm.decide(before, assessment, now.isoformat())
        if decision.kind == "wait":
            return CheckResult(pipeline, before, decision, assessment)
        analysis_id = uuid.uuid4().hex
        row = _analysis_row(
            analysis_id, before, after, assessment, decision, plan, (first, last), now
        )
        try:
            _apply(
                wh,
                before,
                after,
                decision,
                actor,
                [row, *_rating_rows(wh, before, assessment, decision.kind)],
                analysis_id=analysis_id,
                extra={"verdict": assessment.verdict, "kpi": plan.kpi},
            )
        except store.StaleStateError as exc:
            logger.warning("check of %s dropped: %s", pipeline, exc)
            return CheckResult(pipeline, before, decision, assessment, analysis_id, applied=False)
        if decision.kind in ("continue",):
            _emit("checked", after, decision.reason, {"verdict": assessment.verdict})
        logger.info("%s: %s", pipeline, decision.reason)
        return CheckResult(
            pipeline, after, decision, assessment, analysis_id, applied=decision.changed
        )


def _rating_rows(
    wh: Warehouse, state: sm.RoutingState, a: Assessment | None, kind: str
) -> list[dict[str, Any]]:
    """The rating of the rollout's proposal by its canary (the KPI delta against stable),
    when the rollout ends with a proposal; written with the decision's other rows."""
    if kind not in ("promote", "abort") or not state.proposal_id:
        return []
    plan = state.get_plan()
    if a is None:
        a = measure(wh, state).assess(plan)
    return [
        rating_row(
            state.proposal_id,
            state.pipeline,
            "canary",
            "promoted" if kind == "promote" else "rolled_back",
            plan.kpi,
            plan.direction,
            _finite(a.effect),
            _finite(a.relative_effect),
            a.stable.n,
            a.canary.n,
        )
    ]


def _manual(
    pipeline: str,
    verb: str,
    reason: str,
    actor: str | None,
    warehouse: Warehouse | str | Path | None,
    **kwargs: Any,
) -> sm.RoutingState:
    if not reason or not reason.strip():
        raise RolloutError(f"give a reason to {verb} (--reason TEXT); it is recorded")
    fn = getattr(sm, verb)
    actor = actor or current_user()
    with _lock(pipeline):
        before = get_state(pipeline)
        wh = as_warehouse(warehouse)
        if verb == "pin":
            ps_id = kwargs["param_set_id"]
            values = _values_of(wh, pipeline, ps_id)
            store.save_param_set(pipeline, ps_id, values)
        now = _now().isoformat()
        try:
            if verb == "abort" and before.active and _canary_values(wh, before) == 0:
                verb = "withdraw"  # never judged: its proposal can be tried again
                after, decision = sm.withdraw(before, reason.strip(), now, canary_values=0)
            else:
                after, decision = fn(before, *kwargs.values(), reason.strip(), now)
        except sm.RolloutStateError as exc:
            raise RolloutError(str(exc)) from None
        _apply(wh, before, after, decision, actor, _rating_rows(wh, before, None, verb))
        logger.info("%s: %s", pipeline, decision.reason)
        return after


def _canary_values(wh: Warehouse, state: sm.RoutingState) -> int:
    """How many values of the rollout's KPI the canary has, after loading the spool (so
    a value another process just sent counts, when the warehouse lock allows)."""
    wh.ingest_if_free()
    return len(measure(wh, state).canary)


def promote(
    pipeline: str, reason: str, *, actor: str | None = None, warehouse: Any = None
) -> sm.RoutingState:
    """Promote the canary now (it becomes stable)."""
    return _manual(pipeline, "promote", reason, actor, warehouse)


def abort(
    pipeline: str, reason: str, *, actor: str | None = None, warehouse: Any = None
) -> sm.RoutingState:
    """Roll back now: every item goes to stable.

    A rollout aborted before any value of its KPI was recorded on the canary ends
    ``withdrawn`` (:func:`~prefect_genopt.rollout.state.withdraw`): its candidate was
    never judged, so its proposal is ``proposed`` again and can be started later.
    """
    return _manual(pipeline, "abort", reason, actor, warehouse)


def pause(
    pipeline: str, reason: str, *, actor: str | None = None, warehouse: Any = None
) -> sm.RoutingState:
    """Stop automatic decisions; traffic stays as it is."""
    return _manual(pipeline, "pause", reason, actor, warehouse)


def resume(
    pipeline: str, reason: str, *, actor: str | None = None, warehouse: Any = None
) -> sm.RoutingState:
    """Let checks decide again."""
    return _manual(pipeline, "resume", reason, actor, warehouse)


def pin(
    pipeline: str,
    param_set_id: str,
    reason: str,
    *,
    actor: str | None = None,
    warehouse: Any = None,
) -> sm.RoutingState:
    """The kill switch: every item of every run uses ``param_set_id`` until unpinned."""
    return _manual(pipeline, "pin", reason, actor, warehouse, param_set_id=param_set_id)


def unpin(
    pipeline: str, reason: str, *, actor: str | None = None, warehouse: Any = None
) -> sm.RoutingState:
    """Route normally again."""
    return _manual(pipeline, "unpin", reason, actor, warehouse)

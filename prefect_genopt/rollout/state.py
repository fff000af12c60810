"""The routing state of one pipeline and the rollout state machine over it.

:class:`RoutingState` is the small pointer every worker reads through the Prefect
API (a Variable, see :mod:`prefect_genopt.rollout.store`): which param set is
stable, which is the canary and with what weight, a pin, plus the controller's
bookkeeping. The functions here are pure: each takes a state and returns the next
one with the decision it made, and bumps ``revision`` whenever anything changes.

States and transitions::

    idle     --start-->            running   (canary at the first step's weight)
    running  --check: advance-->   running   (next weight; step counters reset)
    running  --check: promote-->   idle      (stable := canary; the old stable is kept as is)
    running  --check: abort-->     idle      (canary dropped, weight 0; stable untouched)
    running  --check: pause-->     paused    (no verdict for too long; the weight stays)
    running  --check: continue-->  running   (counters updated, nothing else)
    running  --check: wait-->      running   (no new data since the last check: no change at all)
    running|paused --promote|abort (a person)-->  idle
    running|paused --withdraw (a person, no canary value yet)-->  idle  (outcome
                   ``withdrawn``: the candidate was never judged; its proposal is
                   ``proposed`` again and can be started later)
    running  --pause (a person)-->  paused;   paused --resume--> running
    any      --pin ID / unpin-->    same state, every item on ID while pinned

Promote and abort flip pointers; a param set's values are never edited.

Example:
    >>> from prefect_genopt.rollout.plan import RolloutPlan
    >>> s = RoutingState(pipeline="triage", stable="ps_a")
    >>> s, d = start(s, "ro_1", "ps_b", RolloutPlan(kpi="correct"), "2026-12-02T00:00:00")
    >>> s.status, s.weight, s.revision, d.kind
    ('running', 0.1, 1, 'started')
    >>> s, d = abort(s, "looks wrong", "2026-12-02T01:00:00")
    >>> s.status, s.canary, s.stable, s.last_outcome
    ('idle', None, 'ps_a', 'aborted')
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prefect_genopt.errors import ConflictError
from prefect_genopt.rollout.analysis import Assessment
from prefect_genopt.rollout.plan import RolloutPlan

__all__ = [
    "RoutingState",
    "Decision",
    "RolloutStateError",
    "start",
    "decide",
    "promote",
    "abort",
    "withdraw",
    "pause",
    "resume",
    "pin",
    "unpin",
    "STATES",
    "DECISIONS",
]

STATES = ("idle", "running", "paused")
DECISIONS = (
    "started",
    "continue",
    "wait",
    "advance",
    "promote",
    "abort",
    "withdraw",
    "pause",
    "resume",
    "pin",
    "unpin",
    "none",
)


#: reasons kept in the pointer are cut here (the full text is in the warehouse)
MAX_REASON_CHARS = 1500


class RolloutStateError(ConflictError, ValueError):
    """A transition the current state does not allow (e.g. a second start)."""


class RoutingState(BaseModel):
    """The pointer: what workers route by, and the controller's counters."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    pipeline: str
    revision: int = Field(default=0, description="Bumped on every change; writes check it.")
    stable: str | None = Field(
        default=None, description="The stable param set id; None: the pipeline's code defaults."
    )
    status: Literal["idle", "running", "paused"] = "idle"
    rollout_id: str | None = None
    canary: str | None = Field(default=None, description="The candidate param set id.")
    weight: float = Field(default=0.0, description="Share of items (or runs) on the canary.")
    step: int = 0
    pinned: str | None = Field(
        default=None, description="Kill switch: every item uses this param set while set."
    )
    plan: dict[str, Any] | None = None
    proposal_id: str | None = None
    started_at: str | None = None
    step_started_at: str | None = None
    step_starts: tuple[str, ...] = Field(
        default=(), description="When each step began (the analysis compares arms within steps)."
    )
    step_base: tuple[int, int] = Field(
        default=(0, 0), description="(stable, canary) sample counts when the step began."
    )
    last_counts: tuple[int, int] = Field(
        default=(-1, -1), description="(stable, canary) sample counts at the last check."
    )
    checks: int = 0
    failed_checks: int = 0
    inconclusive_checks: int = 0
    inconclusive_base: tuple[int, int] = Field(
        default=(0, 0),
        description="(stable, canary) counts when the last inconclusive check "
        "was counted (or the step began).",
    )
    last_decision: str | None = None
    last_reason: str | None = None
    last_rollout_id: str | None = None
    last_outcome: str | None = None
    updated_at: str | None = None

    @property
    def active(self) -> bool:
        """A rollout is running or paused."""
        return self.status in ("running", "paused")

    def get_plan(self) -> RolloutPlan:
        """The running rollout's plan."""
        if self.plan is None:
            raise RolloutStateError(f"no rollout is active for {self.pipeline!r}")
        return RolloutPlan(**self.plan)

    def bump(self, now: str, **changes: Any) -> RoutingState:
        """A copy with ``changes``, the next revision and ``updated_at = now``."""
        if changes.get("last_reason") and len(changes["last_reason"]) > MAX_REASON_CHARS:
            changes["last_reason"] = changes["last_reason"][: MAX_REASON_CHARS - 1] + "…"
        return self.model_copy(update={**changes, "revision": self.revision + 1, "updated_at": now})


class Decision(BaseModel):
    """What a transition decided, and why (one ``rollout_events`` row)."""

    model_config = ConfigDict(frozen=True)

    kind: str
    reason: str
    changed: bool = True


def _need(state: RoutingState, allowed: tuple[str, ...], verb: str) -> None:
    if state.status not in allowed:
        what = f"rollout {state.rollout_id}" if state.rollout_id else "no rollout"
        raise RolloutStateError(
            f"cannot {verb} {state.pipeline!r}: {what} is {state.status} "
            f"(allowed when {' or '.join(allowed)})"
        )


def start(
    state: RoutingState,
    rollout_id: str,
    canary: str,
    plan: RolloutPlan,
    now: str,
    proposal_id: str | None = None,
) -> tuple[RoutingState, Decision]:
    """Begin a rollout at the plan's first weight. One rollout per pipeline at a time."""
    if state.active:
        raise RolloutStateError(
            f"rollout {state.rollout_id} of {state.pipeline!r} is already {state.status}; "
            "promote or abort it before starting another (`genopt rollout status "
            f"{state.pipeline}`)"
        )
    if canary == state.stable:
        raise RolloutStateError(f"param set {canary} is already stable for {state.pipeline!r}")
    new = state.bump(
        now,
        status="running",
        rollout_id=rollout_id,
        canary=canary,
        weight=plan.steps[0],
        step=0,
        plan=plan.model_dump(mode="json"),
        proposal_id=proposal_id,
        started_at=now,
        step_started_at=now,
        step_starts=(now,),
        step_base=(0, 0),
        last_counts=(-1, -1),
        checks=0,
        failed_checks=0,
        inconclusive_checks=0,
        inconclusive_base=(0, 0),
        last_decision="started",
        last_reason=plan.describe(),
    )
    return new, Decision(kind="started", reason=f"started: {plan.describe()}")


#: how a rollout ended -> the decision that ended it
_ENDING_DECISION = {"promoted": "promote", "aborted": "abort", "withdrawn": "withdraw"}


def _ended(
    state: RoutingState, now: str, outcome: str, reason: str, **changes: Any
) -> RoutingState:
    return state.bump(
        now,
        status="idle",
        canary=None,
        weight=0.0,
        rollout_id=None,
        plan=None,
        proposal_id=None,
        last_rollout_id=state.rollout_id,
        last_outcome=outcome,
        last_decision=_ENDING_DECISION[outcome],
        last_reason=reason,
        **changes,
    )


def decide(state: RoutingState, assessment: Assessment, now: str) -> tuple[RoutingState, Decision]:
    """One check: the next state from an assessment of the arms (counts since the start).

    A check with the same sample counts as the previous one changes nothing
    (``wait``): the same analysis twice never advances twice.
    """
    if state.status != "running":
        return state, Decision(
            kind="none", reason=f"rollout is {state.status}: checks do not act", changed=False
        )
    plan = state.get_plan()
    counts = (assessment.stable.n, assessment.canary.n)
    if counts == state.last_counts:
        return state, Decision(
            kind="wait", reason=f"no new {plan.kpi} values since the last check", changed=False
        )
    checks = state.checks + 1
    common: dict[str, Any] = {"last_counts": counts, "checks": checks}
    final = state.step >= len(plan.steps) - 1
    new_s, new_c = counts[0] - state.step_base[0], counts[1] - state.step_base[1]
    step_ready = min(new_s, new_c) >= plan.step_min_samples
    why = assessment.reason

    if assessment.verdict == "fail":
        failed = state.failed_checks + 1
        if failed >= plan.failure_limit:
            reason = f"abort on failed check {failed} of {plan.failure_limit}: {why}"
            return _ended(state, now, "aborted", reason, failed_checks=failed, **common), Decision(
                kind="abort", reason=reason
            )
        reason = (
            f"failed check {failed} of {plan.failure_limit} (abort at {plan.failure_limit}): {why}"
        )
        new = state.bump(
            now,
            failed_checks=failed,
            inconclusive_checks=0,
            inconclusive_base=counts,
            last_decision="continue",
            last_reason=reason,
            **common,
        )
        return new, Decision(kind="continue", reason=reason)

    if step_ready and assessment.verdict in ("pass", "unproven") and not final:
        weight = plan.steps[state.step + 1]
        reason = (
            f"advance to {weight:.0%} after {new_c} new canary values at {state.weight:.0%}: {why}"
        )
        new = state.bump(
            now,
            step=state.step + 1,
            weight=weight,
            step_started_at=now,
            step_starts=(*state.step_starts, now),
            step_base=counts,
            inconclusive_checks=0,
            inconclusive_base=counts,
            last_decision="advance",
            last_reason=reason,
            **common,
        )
        return new, Decision(kind="advance", reason=reason)
    if step_ready and assessment.verdict == "pass" and final:
        reason = f"promote after the last step ({state.weight:.0%}): {why}"
        return _ended(state, now, "promoted", reason, stable=state.canary, **common), Decision(
            kind="promote", reason=reason
        )

    # A check without a verdict counts toward the pause only once a batch of new values
    # arrived since the last counted one (step_min_samples canary values, or, when the
    # canary is starved, twice what stable should collect meanwhile), so the limit does
    # not depend on how often checks run.
    gain_s = counts[0] - state.inconclusive_base[0]
    gain_c = counts[1] - state.inconclusive_base[1]
    starved = gain_c < plan.step_min_samples and gain_s >= 2 * plan.step_min_samples * (
        (1 - state.weight) / max(state.weight, 1e-9)
    )
    counted = gain_c >= plan.step_min_samples or starved
    inconclusive = state.inconclusive_checks + (1 if counted else 0)
    if assessment.verdict == "insufficient":
        waiting = why
    elif not step_ready:
        waiting = (
            f"step {state.step + 1} has {new_s} stable and {new_c} canary new values, "
            f"needs {plan.step_min_samples} each; {why}"
        )
    else:
        waiting = why
    if starved:
        waiting = f"the canary got {gain_c} values while stable got {gain_s}; {waiting}"
    base = counts if counted else state.inconclusive_base
    if inconclusive >= plan.inconclusive_limit:
        reason = f"pause: {inconclusive} checks in a row without a verdict; {waiting}"
        new = state.bump(
            now,
            status="paused",
            inconclusive_checks=inconclusive,
            inconclusive_base=base,
            last_decision="pause",
            last_reason=reason,
            **common,
        )
        return new, Decision(kind="pause", reason=reason)
    reason = f"continue ({inconclusive}/{plan.inconclusive_limit} without a verdict): {waiting}"
    new = state.bump(
        now,
        inconclusive_checks=inconclusive,
        inconclusive_base=base,
        last_decision="continue",
        last_reason=reason,
        **common,
    )
    return new, Decision(kind="continue", reason=reason)


def promote(state: RoutingState, reason: str, now: str) -> tuple[RoutingState, Decision]:
    """A person promotes the canary: it becomes stable now."""
    _need(state, ("running", "paused"), "promote")
    why = f"promoted by hand: {reason}"
    return _ended(state, now, "promoted", why, stable=state.canary), Decision(
        kind="promote", reason=why
    )


def abort(state: RoutingState, reason: str, now: str) -> tuple[RoutingState, Decision]:
    """Roll back: every item goes to stable again."""
    _need(state, ("running", "paused"), "abort")
    why = f"aborted by hand: {reason}"
    return _ended(state, now, "aborted", why), Decision(kind="abort", reason=why)


def withdraw(
    state: RoutingState, reason: str, now: str, canary_values: int
) -> tuple[RoutingState, Decision]:
    """Abort a rollout before any canary value was recorded (``canary_values`` is how
    many the rollout's KPI has on the canary arm): every item goes to stable again, and
    since the candidate was never judged, the rollout ends ``withdrawn``, not ``aborted``
    (its proposal can enter a canary again).

    Example:
        >>> from prefect_genopt.rollout.plan import RolloutPlan
        >>> s = RoutingState(pipeline="triage", stable="ps_a")
        >>> s, _ = start(s, "ro_1", "ps_b", RolloutPlan(kpi="correct"), "t0")
        >>> s, d = withdraw(s, "wrong KPI", "t1", canary_values=0)
        >>> s.status, s.canary, s.last_outcome, d.kind
        ('idle', None, 'withdrawn', 'withdraw')

    Raises:
        RolloutStateError: No rollout is active, or the canary has values already
            (abort it: its data is a verdict on the candidate).
    """
    _need(state, ("running", "paused"), "withdraw")
    if canary_values > 0:
        raise RolloutStateError(
            f"rollout {state.rollout_id} of {state.pipeline!r} has {canary_values} canary "
            "value(s): abort it instead (it cannot be withdrawn once the canary was measured)"
        )
    why = f"withdrawn by hand before any canary value: {reason}"
    return _ended(state, now, "withdrawn", why), Decision(kind="withdraw", reason=why)


def pause(state: RoutingState, reason: str, now: str) -> tuple[RoutingState, Decision]:
    """Stop automatic decisions; the canary keeps its weight."""
    _need(state, ("running",), "pause")
    why = f"paused by hand: {reason}"
    new = state.bump(now, status="paused", last_decision="pause", last_reason=why)
    return new, Decision(kind="pause", reason=why)


def resume(state: RoutingState, reason: str, now: str) -> tuple[RoutingState, Decision]:
    """Let checks act again (the inconclusive count starts over)."""
    _need(state, ("paused",), "resume")
    why = f"resumed: {reason}"
    new = state.bump(
        now,
        status="running",
        inconclusive_checks=0,
        inconclusive_base=state.last_counts if state.last_counts[0] >= 0 else (0, 0),
        last_decision="resume",
        last_reason=why,
    )
    return new, Decision(kind="resume", reason=why)


def pin(
    state: RoutingState, param_set_id: str, reason: str, now: str
) -> tuple[RoutingState, Decision]:
    """The kill switch: every item uses ``param_set_id`` until :func:`unpin`."""
    why = f"pinned to {param_set_id}: {reason}"
    new = state.bump(now, pinned=param_set_id, last_decision="pin", last_reason=why)
    return new, Decision(kind="pin", reason=why)


def unpin(state: RoutingState, reason: str, now: str) -> tuple[RoutingState, Decision]:
    """Route normally again."""
    if state.pinned is None:
        raise RolloutStateError(f"{state.pipeline!r} is not pinned")
    why = f"unpinned (was {state.pinned}): {reason}"
    new = state.bump(now, pinned=None, last_decision="unpin", last_reason=why)
    return new, Decision(kind="unpin", reason=why)

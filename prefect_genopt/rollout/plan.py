"""A rollout plan: the steps of weights and the rules that judge each step.

The defaults are the safe plan: 10% -> 25% -> 50% of the items on the candidate,
then promotion (100%), judged on a KPI where higher is better, catching a 5%
relative regression: such a candidate is promoted with probability at most
``beta`` (5%) and otherwise rolled back, or paused when the evidence stays thin; a
candidate as good as stable is rolled back with probability at most ``alpha`` (1%).
Measured by simulation in ``bench/bench_canary.py``.

Example:
    >>> plan = RolloutPlan(kpi="correct")
    >>> plan.steps, plan.tolerance, plan.alpha, plan.failure_limit
    ((0.1, 0.25, 0.5), 0.05, 0.01, 2)
    >>> RolloutPlan(kpi="latency_s", direction="lower", steps=[10, 50, 100]).steps
    (0.1, 0.5)
    >>> try:
    ...     RolloutPlan(kpi="correct", steps=[0.5, 0.2])
    ... except ValueError as exc:
    ...     print(exc.errors()[0]["msg"])
    Value error, steps must increase, got [0.5, 0.2]
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["RolloutPlan", "FAST_PLAN"]


class RolloutPlan(BaseModel):
    """How a candidate param set earns production traffic.

    A check (one analysis) compares the KPI of the canary arm with the stable
    arm over the same period (since the rollout started). Its verdict is one of
    ``fail`` (the candidate is worse, beyond chance under repeated looks),
    ``pass`` (the candidate is shown to be no worse than stable by more than
    ``tolerance``), ``unproven`` (no harm seen, nothing proven yet) or
    ``insufficient`` (an arm has fewer than ``min_sample_per_arm`` values).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kpi: str = Field(
        description="The feedback KPI that judges the arms (per item when items split)."
    )
    direction: Literal["higher", "lower"] = Field(
        default="higher", description="Whether a higher or a lower KPI value is better."
    )
    steps: tuple[float, ...] = Field(
        default=(0.1, 0.25, 0.5),
        description="Canary weights in order, as fractions (0.1) or percents (10). A final "
        "100% is the promotion itself and may be written or left out.",
    )
    tolerance: float = Field(
        default=0.05,
        ge=0,
        description="The regression the canary must catch: a candidate worse than stable by "
        "this much (relative to stable's mean, or absolute: see tolerance_mode) is promoted "
        "with probability at most `beta`; anything better than that may pass.",
    )
    tolerance_mode: Literal["relative", "absolute"] = Field(
        default="relative", description="Whether `tolerance` is a fraction of stable's mean."
    )
    alpha: float = Field(
        default=0.01,
        gt=0,
        lt=0.5,
        description="Bound on false rollbacks: the chance that a candidate as good as stable "
        "ever fails a check, however many checks run (an always-valid sequential test).",
    )
    beta: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="Bound on the chance of promoting a candidate worse than stable by "
        "`tolerance`.",
    )
    min_sample_per_arm: int = Field(
        default=100, ge=2, description="No verdict before each arm has this many KPI values."
    )
    step_min_samples: int = Field(
        default=100,
        ge=1,
        description="New KPI values each arm must collect in a step before the rollout "
        "advances past it or is promoted.",
    )
    failure_limit: int = Field(
        default=2,
        ge=1,
        description="Abort on the N-th failed check (N = failure_limit; checks N-1 and fewer "
        "only warn).",
    )
    inconclusive_limit: int = Field(
        default=50,
        ge=1,
        description="Pause after this many checks in a row without a verdict that moves the "
        "rollout. A check counts only when a batch of `step_min_samples` new canary values "
        "arrived since the last counted one (or stable got twice its share while the canary "
        "got none), so the limit does not depend on how often checks run.",
    )

    @field_validator("steps", mode="before")
    @classmethod
    def _fractions(cls, v: Any) -> tuple[float, ...]:
        if isinstance(v, str):
            v = [s for s in v.replace("->", ",").replace("%", "").split(",") if s.strip()]
        steps = [float(x) for x in v]
        if any(x > 1 for x in steps):
            steps = [x / 100 for x in steps]
        if not steps or any(not 0 < x <= 1 for x in steps):
            raise ValueError(f"steps must be weights in (0, 1] (or percents), got {list(v)}")
        if any(b <= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"steps must increase, got {list(v)}")
        if steps[-1] == 1.0:
            steps = steps[:-1]
        if not steps:
            raise ValueError("steps need at least one weight below 100%")
        return tuple(steps)

    @field_validator("kpi")
    @classmethod
    def _kpi(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("kpi must be a non-empty KPI name")
        return v.strip()

    def describe(self) -> str:
        """One line: ``10% -> 25% -> 50% -> 100%, correct higher, tol 5%``."""
        weights = " -> ".join(f"{w:.0%}" for w in (*self.steps, 1.0))
        tol = (
            f"{self.tolerance:.0%}" if self.tolerance_mode == "relative" else f"{self.tolerance:g}"
        )
        return (
            f"{weights}; {self.kpi} ({self.direction} is better), tolerance {tol}, "
            f"alpha {self.alpha:g}, min {self.min_sample_per_arm}/arm, "
            f"abort on failed check {self.failure_limit}"
        )


#: A plan for demos and small pipelines: two quick steps with small samples. It
#: trades safety for speed (a 5% regression is often missed at these sizes);
#: never the default.
FAST_PLAN: dict[str, Any] = {
    "steps": (0.3, 0.5),
    "min_sample_per_arm": 8,
    "step_min_samples": 8,
    "tolerance": 0.2,
    "alpha": 0.05,
    "beta": 0.2,
    "failure_limit": 1,
    "inconclusive_limit": 12,
}

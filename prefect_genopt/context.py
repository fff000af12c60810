"""The run context: which pipeline run, param set and arm the current code serves.

Set by :func:`prefect_genopt.pipeline` for the duration of a flow run and read
by :func:`~prefect_genopt.current_params`, :func:`~prefect_genopt.feedback`
and the span processor. It is a ``contextvars.ContextVar``, so it follows
Prefect tasks onto thread pools (Prefect copies the context) and async tasks.

:func:`pinned_params` sets the param values the runs started inside it use (offline
evaluation, the replay gate); it lives here, beside the run context it feeds, so that
what pins a run (the replay gate) does not import the pipeline decorators.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prefect_genopt.tunables import Tunables

__all__ = [
    "RunContext",
    "StepState",
    "current_run",
    "run_var",
    "item_var",
    "step_var",
    "pin_var",
    "pinned_params",
]


@dataclass(frozen=True)
class RunContext:
    """What genopt knows about the pipeline run in progress."""

    pipeline: str
    run_id: str
    params: Tunables
    param_set_id: str
    arm: str
    flow_name: str
    routing_error: str | None = None
    #: the run's routing snapshot (a ``prefect_genopt.rollout.router.Route``), None when pinned
    route: Any = None

    def for_item(self, item_key: str | None) -> tuple[Tunables, str, str]:
        """``(params, param_set_id, arm)`` of one item of this run (the run's own without a key)."""
        route = self.route
        if item_key is None or route is None or not route.splitting:
            return self.params, self.param_set_id, self.arm
        arm = route.item_arm(str(item_key))
        params = route.params_for(arm)
        return params, params.param_set_id, arm


run_var: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "genopt_run", default=None
)


#: ``(run_id, param_set_id, arm)`` of the item the current code serves, set by
#: ``current_params(item_key=...)`` so that later spans (LLM calls) carry the item's arm
item_var: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar(
    "genopt_item", default=None
)


def current_run() -> RunContext | None:
    """The pipeline run in progress in this context, or None."""
    return run_var.get()


@dataclass
class StepState:
    """What the task in progress did, for its step record: the item it served (set by
    ``current_params(item_key=...)``) and the LLM models it called (set by the LLM spans)."""

    item_key: str | None = None
    models: list[str] = field(default_factory=list)


#: the running ``@genopt.task``'s :class:`StepState` (None outside a task)
step_var: contextvars.ContextVar[StepState | None] = contextvars.ContextVar(
    "genopt_step", default=None
)


#: ``(values, arm)`` pinned by :func:`pinned_params` for the runs started in its block
pin_var: contextvars.ContextVar[tuple[dict[str, Any], str] | None] = contextvars.ContextVar(
    "genopt_pinned_params", default=None
)


@contextlib.contextmanager
def pinned_params(values: dict[str, Any] | Tunables, arm: str = "offline") -> Iterator[None]:
    """Run pipelines with these param values (on arm ``arm``) inside the block.

    For offline evaluation and backtests of a candidate param set: runs started
    in the block (in this thread or its context) use ``values`` merged over the
    Tunables defaults, and are recorded with ``arm`` so they never mix with
    production arms.

    Example:
        >>> with pinned_params({"threshold": 0.7}, arm="eval"):
        ...     pin_var.get()
        ({'threshold': 0.7}, 'eval')
        >>> pin_var.get() is None
        True
    """
    if isinstance(values, Tunables):
        values = values.values()
    token = pin_var.set((dict(values), arm))
    try:
        yield
    finally:
        pin_var.reset(token)

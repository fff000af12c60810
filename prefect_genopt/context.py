"""The run context: which pipeline run, param set and arm the current code serves.

Set by :func:`prefect_genopt.pipeline` for the duration of a flow run and read
by :func:`~prefect_genopt.current_params`, :func:`~prefect_genopt.feedback`
and the span processor. It is a ``contextvars.ContextVar``, so it follows
Prefect tasks onto thread pools (Prefect copies the context) and async tasks.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from prefect_genopt.tunables import Tunables

__all__ = ["RunContext", "current_run", "run_var"]


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


run_var: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "genopt_run", default=None
)


def current_run() -> RunContext | None:
    """The pipeline run in progress in this context, or None."""
    return run_var.get()

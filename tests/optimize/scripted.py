"""The scripted optimizer model the tests call, and a synthetic pipeline with a known optimum.

``scripted-opt/<mode>`` is :func:`prefect_genopt.testing.scripted_optimizer` registered
with litellm: in mode ``follow`` it *computes* its answer from the prompt it receives,
like a careful optimizer would (the current ``level`` from #Variables, the KPI value and
"too low"/"too high" critique of each #Feedback example); it never knows the optimum.
The other modes produce each malformed answer class the runner must handle
(see :data:`MODES`). :data:`PROMPTS` and :data:`TEMPERATURES` record, per mode, what
the optimizer sent.

The ``knob`` pipeline's optimum is ``level = 0.7``: each item's ``closeness``
is ``1 - |level - 0.7|``, with a critique telling the direction.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from prefect import flow

import prefect_genopt as genopt
from prefect_genopt import testing
from prefect_genopt.testing import OPTIMIZER_MODES as MODES
from prefect_genopt.testing import Call, Reply, follow, meta, onevar, pick_demos, rules, swap

__all__ = [
    "PROVIDER",
    "OPTIMUM",
    "MODES",
    "PROMPTS",
    "TEMPERATURES",
    "register",
    "follow",
    "rules",
    "onevar",
    "pick_demos",
    "meta",
    "swap",
    "KnobParams",
    "push",
    "knob",
]

PROVIDER = "scripted-opt"
OPTIMUM = 0.7

#: every prompt the model received, per mode (tests read what the optimizer sent)
PROMPTS: dict[str, list[list[dict[str, Any]]]] = {}
#: the temperature of every call, per mode
TEMPERATURES: dict[str, list[float | None]] = {}
_lock = threading.Lock()


def _respond(call: Call) -> Reply:
    with _lock:
        PROMPTS.setdefault(call.route, []).append(call.messages)
        TEMPERATURES.setdefault(call.route, []).append(call.temperature)
    return testing.scripted_optimizer(call)


_handler: testing.ScriptedProvider | None = None


def register() -> None:
    """Register ``scripted-opt/<mode>`` with litellm (again: replaces the handler)."""
    global _handler
    _handler = testing.register(PROVIDER, _respond)


def wait_idle() -> None:
    """Wait for calls a timeout abandoned (mode ``slow``) to finish, so their LLM spans
    end in the test that made them, not in a later test's warehouse."""
    assert _handler is not None and _handler.wait_idle(30)
    time.sleep(0.05)  # the span ends in the same thread just after the provider returns


register()


class KnobParams(genopt.Tunables):
    """The synthetic pipeline's one knob."""

    level: float = genopt.numeric(0.2, ge=0.0, le=1.0, description="how hard to push each item")
    note: str = genopt.prompt("keep going", description="a note the steps carry", max_length=200)


@genopt.task
def push(item: str) -> float:
    """Push one item as hard as the level says."""
    return genopt.current_params(item_key=item).level


@flow
@genopt.pipeline(name="knob", params=KnobParams)
def knob(items: list[str]) -> float:
    """Push each item and score how close the level is to what the items need."""
    if not genopt.current_params().note.strip():  # the flow body reads the note (editable)
        raise ValueError("the knob needs a note")
    total = 0.0
    for item in items:
        level = push(item)
        closeness = 1.0 - abs(level - OPTIMUM)
        total += closeness
        critique = "too low" if level < OPTIMUM else "too high"
        genopt.feedback(
            "closeness",
            closeness,
            item_key=item,
            comment=None
            if abs(level - OPTIMUM) < 1e-9
            else f"{critique}: item {item} needed more care",
        )
    genopt.feedback("mean_closeness", total / len(items))
    return total / len(items)

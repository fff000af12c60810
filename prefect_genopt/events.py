"""Prefect events genopt emits, best effort: the record is the warehouse, an event is a
signal for Automations (``genopt.rollout.*``, ``genopt.proposal.*``).

:func:`emit` sends one event through Prefect's events worker and never raises (an
event that cannot be sent is logged). A short-lived process (a ``genopt`` command) calls
:func:`flush` before it exits, so the events it emitted are sent rather than dropped
with a "Still processing items" warning.

Resource ids follow one pattern, so an Automation can match them with a wildcard
(``genopt.proposal.*``):

Example:
    >>> pipeline_resource("triage")
    {'prefect.resource.id': 'genopt.pipeline.triage', 'prefect.resource.name': 'triage'}
    >>> pipeline_resource("triage", role="pipeline")["prefect.resource.role"]
    'pipeline'
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["emit", "flush", "pipeline_resource", "server_known"]

logger = logging.getLogger("prefect_genopt.events")

#: set once this process has emitted an event (see :func:`flush`)
_emitted = threading.Event()


def pipeline_resource(pipeline: str, role: str | None = None) -> dict[str, str]:
    """The resource (or, with a ``role``, the related resource) of a pipeline."""
    out = {"prefect.resource.id": f"genopt.pipeline.{pipeline}", "prefect.resource.name": pipeline}
    if role:
        out["prefect.resource.role"] = role
    return out


def server_known() -> bool:
    """Whether events have a Prefect server to go to without starting one: an API URL is
    set, or this code runs inside a flow or task run (whose server is up). Prefect's
    events worker would otherwise start an ephemeral server (seconds) just to emit."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext
        from prefect.settings import PREFECT_API_URL

        return bool(PREFECT_API_URL.value()) or bool(FlowRunContext.get() or TaskRunContext.get())
    except Exception:  # noqa: BLE001 - no Prefect settings: no server
        return False


def emit(
    event: str,
    resource: Mapping[str, str],
    related: Sequence[Mapping[str, str]] = (),
    payload: Mapping[str, Any] | None = None,
) -> bool:
    """Emit one Prefect event; False (and a warning) when it could not be sent."""
    try:
        from prefect.events import emit_event

        _emitted.set()
        emit_event(
            event=event,
            resource=dict(resource),
            related=[dict(r) for r in related],
            payload=dict(payload or {}),
        )
        return True
    except Exception as exc:  # noqa: BLE001 - events are best effort; the record is the warehouse
        logger.warning("could not emit the %s event: %s", event, exc)
        return False


def flush(timeout: float = 5.0) -> None:
    """Wait, at most ``timeout`` seconds, until Prefect has sent the events this process
    emitted (nothing to do when it emitted none)."""
    if not _emitted.is_set():
        return
    from prefect.events.worker import EventsWorker

    try:
        worker = EventsWorker.instance()
    except Exception:  # noqa: BLE001 - best effort: the record is in the warehouse anyway
        return
    waiter = threading.Thread(target=worker.wait_until_empty, daemon=True)
    waiter.start()
    waiter.join(timeout)

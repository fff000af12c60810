"""Per-pipeline locks held in the Prefect API (global concurrency limits of 1).

The optimizer and the rollout controller of one pipeline never overlap with
themselves, on any machine: each holds ``genopt-<kind>-<pipeline>`` while it works.
The limit is created when missing (Prefect's ``concurrency()`` on a limit that does
not exist silently does nothing).

Example:
    >>> lock_name("optimize", "Ticket Triage")
    'genopt-optimize-ticket-triage'
    >>> slug("Ticket Triage/v2")
    'ticket-triage-v2'
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

__all__ = ["slug", "lock_name", "pipeline_lock", "LockTimeout"]


class LockTimeout(TimeoutError):
    """Another holder kept the lock longer than we were willing to wait."""


def slug(name: str) -> str:
    """A pipeline name as lowercase letters, digits and dashes (for Prefect object names)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x"


def lock_name(kind: str, pipeline: str) -> str:
    """The global concurrency limit guarding ``kind`` work on ``pipeline``."""
    return f"genopt-{kind}-{slug(pipeline)}"


@contextlib.contextmanager
def pipeline_lock(kind: str, pipeline: str, wait_seconds: float) -> Iterator[str]:
    """Hold ``genopt-<kind>-<pipeline>`` for the block; yields the lock's name.

    Raises:
        LockTimeout: Not acquired within ``wait_seconds``.
    """
    from prefect.client.orchestration import get_client
    from prefect.concurrency.sync import concurrency

    name = lock_name(kind, pipeline)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    try:
        with concurrency(name, occupy=1, timeout_seconds=wait_seconds, strict=True):
            yield name
    except TimeoutError as exc:
        if isinstance(exc, LockTimeout):
            raise
        raise LockTimeout(
            f"{name!r} is held by another {kind} run of {pipeline!r}; waited {wait_seconds:g}s"
        ) from exc

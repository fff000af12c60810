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
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from prefect_genopt.errors import BusyError

__all__ = ["slug", "lock_name", "pipeline_lock", "LockTimeout"]

logger = logging.getLogger("prefect_genopt.locks")


class LockTimeout(BusyError, TimeoutError):
    """Another holder kept the lock longer than we were willing to wait."""


def slug(name: str) -> str:
    """A pipeline name as lowercase letters, digits and dashes (for Prefect object names)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x"


def lock_name(kind: str, pipeline: str) -> str:
    """The global concurrency limit guarding ``kind`` work on ``pipeline``."""
    return f"genopt-{kind}-{slug(pipeline)}"


@contextlib.contextmanager
def pipeline_lock(
    kind: str, pipeline: str, wait_seconds: float, lease_seconds: float | None = None
) -> Iterator[str]:
    """Hold ``genopt-<kind>-<pipeline>`` for the block; yields the lock's name.

    Args:
        kind: What is locked (``optimize``, ``rollout``).
        pipeline: The pipeline.
        wait_seconds: How long to wait for another holder.
        lease_seconds: For short work: a lease this long, taken and released with
            direct API calls and polled every 0.25 s (a holder that dies frees the lock
            when its lease ends). None: Prefect's ``concurrency()`` context, which
            renews its lease while the block runs (for long work such as the optimizer).

    Raises:
        LockTimeout: Not acquired within ``wait_seconds``.
    """
    from prefect.client.orchestration import get_client

    name = lock_name(kind, pipeline)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    if lease_seconds is None:
        from prefect.concurrency.sync import concurrency

        try:
            with concurrency(name, occupy=1, timeout_seconds=wait_seconds, strict=True):
                yield name
        except TimeoutError as exc:
            if isinstance(exc, LockTimeout):
                raise
            raise _timeout(name, kind, pipeline, wait_seconds) from exc
        return
    with get_client(sync_client=True) as client:
        lease_id = _acquire(client, name, wait_seconds, lease_seconds, kind, pipeline)
        try:
            yield name
        finally:
            _release(client, lease_id, name)


def _timeout(name: str, kind: str, pipeline: str, waited: float) -> LockTimeout:
    return LockTimeout(
        f"{name!r} is held by another {kind} run of {pipeline!r}; waited {waited:g}s"
    )


def _acquire(
    client: Any, name: str, wait_seconds: float, lease_seconds: float, kind: str, pipeline: str
) -> Any:
    from prefect.exceptions import PrefectHTTPStatusError

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            resp = client.increment_concurrency_slots_with_lease(
                [name], 1, "concurrency", lease_duration=lease_seconds
            )
            return resp.json()["lease_id"]
        except PrefectHTTPStatusError as exc:
            if exc.response.status_code != 423:  # 423 Locked: held by someone else
                raise
        if time.monotonic() >= deadline:
            raise _timeout(name, kind, pipeline, wait_seconds)
        time.sleep(min(0.25, max(deadline - time.monotonic(), 0.0)))


def _release(client: Any, lease_id: Any, name: str) -> None:
    for attempt in range(3):
        try:
            client.release_concurrency_slots_with_lease(lease_id)
            return
        except Exception as exc:  # noqa: BLE001 - the lease expires on its own anyway
            if attempt == 2:
                logger.warning("could not release %s (its lease will expire): %s", name, exc)
            time.sleep(0.2)

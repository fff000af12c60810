"""Rollout fixtures: a fresh routing state per test, read on every run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from prefect_genopt.rollout import store


def _clear_caches() -> None:
    with store._cache_lock:
        store._state_cache.clear()
        store._values_cache.clear()


def delete_routing(pipeline: str) -> None:
    """Remove a pipeline's pointer Variable from the Prefect API, if any."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        if client.read_variable_by_name(store.variable_name(pipeline)) is not None:
            client.delete_variable_by_name(store.variable_name(pipeline))


@pytest.fixture
def routing(prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every pipeline run reads the pointer afresh; pointers of listed pipelines are
    deleted after the test (the Prefect API is shared by the whole session)."""
    monkeypatch.setenv("GENOPT_ROUTING_TTL", "0")
    monkeypatch.setenv("GENOPT_CANARY_WAIT", "60")
    _clear_caches()
    pipelines: list[str] = []
    yield pipelines
    for name in pipelines:
        delete_routing(name)
    _clear_caches()


@pytest.fixture
def pipeline_name(routing: list[str]) -> str:
    """A pipeline name no other test uses (its pointer is cleaned up)."""
    name = f"knob-{uuid.uuid4().hex[:8]}"
    routing.append(name)
    return name

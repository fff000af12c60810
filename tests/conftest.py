"""Shared fixtures: one Prefect test harness per session, a fresh warehouse per test.

The environment (a private PREFECT_HOME, quiet logs, offline litellm) is set
by the root ``conftest.py`` before anything imports Prefect.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect test harness (a real local API server) for the whole session.

    Yields the API URL, which child processes receive as ``PREFECT_API_URL``.
    """
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield str(ps.PREFECT_API_URL.value())


def _flush_tracing() -> None:
    """Write out spans the process-wide processor still queues, to the warehouse they
    were made for: its spool follows ``GENOPT_WAREHOUSE`` at write time, so spans an
    earlier test left queued would otherwise land in the next test's warehouse."""
    tracing = sys.modules.get("prefect_genopt.tracing")
    processor = tracing.get_processor() if tracing is not None else None
    if processor is not None:
        processor.force_flush()


@pytest.fixture
def warehouse_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh, empty warehouse location for this test (``GENOPT_WAREHOUSE``)."""
    path = tmp_path / "warehouse.duckdb"
    _flush_tracing()
    monkeypatch.setenv("GENOPT_WAREHOUSE", str(path))
    yield path
    _flush_tracing()


@pytest.fixture
def child_env(prefect_api: str, warehouse_path: Path) -> dict[str, str]:
    """Environment for a child process: same warehouse, same Prefect API."""
    env = dict(os.environ)
    env["PREFECT_API_URL"] = prefect_api
    env["GENOPT_WAREHOUSE"] = str(warehouse_path)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


PYTHON = sys.executable


def _clear_caches() -> None:
    from prefect_genopt.rollout import store

    with store._cache_lock:
        store._state_cache.clear()
        store._values_cache.clear()


def delete_routing(pipeline: str) -> None:
    """Remove a pipeline's pointer Variable from the Prefect API, if any."""
    from prefect.client.orchestration import get_client

    from prefect_genopt.rollout import store

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the Prefect test harness ``prefect`` (``make test-fast``
    deselects them, with the ``e2e`` ones, for a quick unit lane)."""
    for item in items:
        if "prefect_api" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.prefect)

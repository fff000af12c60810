"""The optimizer flow: a real Prefect flow with a concurrency guard and a Markdown artifact."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

import prefect_genopt as genopt
from prefect_genopt.optimize.flow import lock_name, optimize_flow
from tests.optimize import scripted


@pytest.fixture
def knob_runs(prefect_api: str, warehouse_path: Path) -> Path:
    scripted.knob([f"item-{i}" for i in range(4)])
    return warehouse_path


def run_in_threads(*calls: dict[str, Any]) -> list[dict[str, Any]]:
    results: list[Any] = [None] * len(calls)

    def target(i: int, kwargs: dict[str, Any]) -> None:
        results[i] = optimize_flow(**kwargs)

    threads = [threading.Thread(target=target, args=(i, kw)) for i, kw in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


SLOW = {"model": "scripted-opt/slow", "response_format": "none", "max_updates": 1, "search": False}


def optimizer_spans() -> list[dict[str, Any]]:
    return genopt.Warehouse().sql(
        "SELECT trace_id, start_time, end_time FROM spans WHERE name = 'genopt.optimize' "
        "ORDER BY start_time"
    )


def test_two_overlapping_runs_never_overlap_the_second_waits(knob_runs: Path) -> None:
    results = run_in_threads(
        {"pipeline": "knob", "settings": SLOW, "wait_seconds": 60},
        {"pipeline": "knob", "settings": SLOW, "wait_seconds": 60},
    )
    assert [r["skipped"] for r in results] == [False, False]
    spans = optimizer_spans()
    assert len(spans) == 2
    assert spans[0]["end_time"] <= spans[1]["start_time"], spans


def test_a_run_that_cannot_get_the_lock_in_time_is_skipped_with_a_reason(knob_runs: Path) -> None:
    calls_before = len(scripted.PROMPTS.get("slow", []))
    first: list[Any] = []
    t = threading.Thread(
        target=lambda: first.append(optimize_flow(pipeline="knob", settings=SLOW, wait_seconds=60))
    )
    t.start()
    deadline = time.monotonic() + 60
    while len(scripted.PROMPTS.get("slow", [])) == calls_before:  # the first holds the lock
        assert time.monotonic() < deadline
        time.sleep(0.05)
    second = optimize_flow(pipeline="knob", settings=SLOW, wait_seconds=0.5)
    t.join(timeout=60)
    assert second["skipped"] is True
    assert "another optimizer run for 'knob'" in second["reason"]
    assert first[0]["skipped"] is False
    assert len(optimizer_spans()) == 1


def test_the_guard_limit_exists_with_one_slot(knob_runs: Path) -> None:
    optimize_flow("knob", settings={**SLOW, "model": "scripted-opt/follow"})
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name(lock_name("knob"))
    assert limit.limit == 1 and limit.active_slots == 0


def test_flow_result_and_markdown_artifact(knob_runs: Path) -> None:
    out = optimize_flow("knob", settings={**SLOW, "model": "scripted-opt/follow"})
    assert out["skipped"] is False and len(out["proposals"]) == 1
    assert out["llm_calls"] == 1 and out["tokens"] > 0 and out["cost_usd"] is None
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts(artifact_filter=None, sort="CREATED_DESC", limit=50)
    mine = [a for a in artifact if a.key == lock_name("knob")]
    assert mine, [a.key for a in artifact]
    text = mine[0].data
    assert out["proposals"][0] in text
    assert "| `level` | 0.2 |" in text and "**Reasoning.**" in text


def test_invalid_settings_fail_the_flow_clearly(knob_runs: Path) -> None:
    with pytest.raises(ValueError, match="minibatch_size"):
        optimize_flow("knob", settings={"minibatch_size": 0})


def test_a_harvest_without_a_kpi_fails_the_flow_clearly(knob_runs: Path) -> None:
    with pytest.raises(ValueError, match=r"harvest takes kpi \(required\).*unknown: kip"):
        optimize_flow("knob", settings=SLOW, harvest={"kip": "closeness"})

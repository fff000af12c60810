"""Proposals emit Prefect events (``genopt.proposal.*``), read back from the test server."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from prefect_genopt import events
from prefect_genopt.proposals import record_proposal, reject_proposal
from prefect_genopt.proposals.events import emit_proposal_event
from prefect_genopt.warehouse import Warehouse


def _record(wh: Warehouse, pipeline: str, status: str) -> str:
    pid = f"pr_test_{uuid.uuid4().hex[:10]}"
    candidate = "ps_" + uuid.uuid4().hex[:16] if status == "proposed" else None
    record_proposal(
        wh,
        {
            "proposal_id": pid,
            "pipeline": pipeline,
            "status": status,
            "status_reason": None if status == "proposed" else f"why {status}",
            "kpi": "correct",
            "direction": "higher",
            "diff": {"prompt": {"from": "a", "to": "b"}} if candidate else {},
            "parent_param_set_id": "ps_parent000000000",
            "candidate_param_set_id": candidate,
            "model": "scripted-opt/follow",
            "evidence_run_ids": [],
        },
        {"prompt": "b"} if candidate else None,
        1,
    )
    return pid


def _read_events(pipeline: str, want: int) -> list[Any]:
    """The genopt.proposal.* events related to ``pipeline`` (waits for ``want`` of them)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    flt = EventFilter(
        event=EventNameFilter(prefix=["genopt.proposal."]),
        related=EventRelatedFilter(id=[f"genopt.pipeline.{pipeline}"]),
    )
    found: list[Any] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        events.flush()
        with get_client(sync_client=True) as client:
            found = list(client.read_events(filter=flt, limit=50).events)
        if len(found) >= want:
            break
        time.sleep(1)
    return found


def test_created_rejected_and_not_better_events_reach_the_prefect_api(
    prefect_api: str, warehouse_path: Path
) -> None:
    pipeline = f"events-{uuid.uuid4().hex[:8]}"
    wh = Warehouse()
    created = _record(wh, pipeline, "proposed")
    not_better = _record(wh, pipeline, "not_better")
    invalid = _record(wh, pipeline, "rejected")
    wh.ingest()
    reject_proposal(wh, created, "drops the refund rule", actor="ana")

    got = _read_events(pipeline, 4)
    by = sorted((e.event, e.resource.id) for e in got)
    assert by == sorted(
        [
            ("genopt.proposal.created", f"genopt.proposal.{created}"),
            ("genopt.proposal.rejected", f"genopt.proposal.{created}"),
            ("genopt.proposal.not_better", f"genopt.proposal.{not_better}"),
            ("genopt.proposal.rejected", f"genopt.proposal.{invalid}"),
        ]
    )
    (later,) = [e for e in got if e.event.endswith("rejected") and created in e.resource.id]
    assert later.payload["reason"] == "drops the refund rule" and later.payload["actor"] == "ana"
    assert later.payload["params"] == ["prompt"]
    roles = {r.role: r.id for r in later.related}
    assert roles["pipeline"] == f"genopt.pipeline.{pipeline}"
    assert roles["parent-param-set"] == "genopt.param-set.ps_parent000000000"
    (nb,) = [e for e in got if e.event == "genopt.proposal.not_better"]
    assert nb.payload["reason"] == "why not_better" and nb.payload["status"] == "not_better"


def test_statuses_without_an_event_emit_none() -> None:
    row = {"proposal_id": "pr_x", "pipeline": "triage"}
    assert emit_proposal_event(row, "canary") is False
    assert emit_proposal_event(row, "promoted") is False


def test_no_server_is_started_just_to_emit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PREFECT_API_URL and outside a run, an event is skipped, not sent through an
    ephemeral server started for it."""
    import prefect.settings as ps

    started: list[str] = []
    monkeypatch.setattr(events, "emit", lambda *a, **k: started.append(a[0]) or True)
    with ps.temporary_settings(restore_defaults={ps.PREFECT_API_URL}):
        assert events.server_known() is False
        assert emit_proposal_event({"proposal_id": "pr_x", "pipeline": "t"}, "proposed") is False
    assert started == []
    with ps.temporary_settings({ps.PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert events.server_known() is True
        assert emit_proposal_event({"proposal_id": "pr_x", "pipeline": "t"}, "proposed") is True
    assert started == ["genopt.proposal.created"]

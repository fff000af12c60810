"""The Prefect events of proposals, for Automations ("a new proposal tonight").

* ``genopt.proposal.created``: the optimizer recorded a proposal with a candidate
  (status ``proposed``);
* ``genopt.proposal.rejected``: an invalid suggestion was recorded, or a proposal was
  rejected later (by a person, or by the replay gate);
* ``genopt.proposal.not_better``: a night of the search whose best candidate the paired
  test did not confirm;
* ``genopt.proposal.no_change``: the model asked for no change.

The resource is the proposal (``genopt.proposal.<id>``), the pipeline is a related
resource (``genopt.pipeline.<name>``, role ``pipeline``) and so are the parent and
candidate param sets. Later moves (``canary``, ``promoted``, ``rolled_back``) are the
rollout's ``genopt.rollout.*`` events.

Example:
    >>> event_name("proposed"), event_name("not_better"), event_name("canary")
    ('genopt.proposal.created', 'genopt.proposal.not_better', None)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from prefect_genopt import events

__all__ = ["EVENT_NAMES", "event_name", "emit_proposal_event"]

#: proposal status -> the Prefect event it emits
EVENT_NAMES = {
    "proposed": "genopt.proposal.created",
    "rejected": "genopt.proposal.rejected",
    "not_better": "genopt.proposal.not_better",
    "no_change": "genopt.proposal.no_change",
}


def event_name(status: str) -> str | None:
    """The event a proposal reaching ``status`` emits (None: it emits none)."""
    return EVENT_NAMES.get(status)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def emit_proposal_event(
    row: Mapping[str, Any], status: str, reason: str | None = None, actor: str | None = None
) -> bool:
    """Emit the event of ``row`` (a ``proposals`` row) reaching ``status``, if it has one.

    Returns:
        Whether an event was sent (False for a status without one, when no Prefect server
        is known (:func:`prefect_genopt.events.server_known`: the optimizer called from
        plain Python without PREFECT_API_URL does not start one to emit), or when Prefect
        could not take it: events are best effort, the record is the warehouse).
    """
    name = event_name(status)
    if name is None or not events.server_known():
        return False
    pid = row["proposal_id"]
    related = [events.pipeline_resource(row["pipeline"], role="pipeline")]
    for role in ("parent", "candidate"):
        ps = row.get(f"{role}_param_set_id")
        if ps:
            related.append(
                {
                    "prefect.resource.id": f"genopt.param-set.{ps}",
                    "prefect.resource.role": f"{role}-param-set",
                }
            )
    diff = _json(row.get("diff")) or {}
    payload = {
        "proposal_id": pid,
        "pipeline": row["pipeline"],
        "status": status,
        "reason": reason if reason is not None else row.get("status_reason"),
        "actor": actor,
        "kpi": row.get("kpi"),
        "params": sorted(diff) if isinstance(diff, dict) else [],
        "model": row.get("model"),
        "cost_usd": row.get("cost_usd"),
        "optimizer_run_id": row.get("optimizer_run_id"),
    }
    return events.emit(
        name,
        {
            "prefect.resource.id": f"genopt.proposal.{pid}",
            "prefect.resource.name": pid,
            "genopt.pipeline": row["pipeline"],
        },
        related,
        payload,
    )

"""Ratings of proposals: the outcome that rates a reflection (Retroformer).

Every proposal's reasoning is a reflection on the evidence it was shown. When its
replay gate or its canary ends, the candidate's KPI delta against stable (in the
better direction, relative to stable's mean) rates it: a ``proposal_ratings`` row.
The optimizer's memory then shows the best- and the worst-rated past reflections
for the pipeline, and ``genopt export reflections`` writes (evidence, reflection,
rating) records for fine-tuning a retrospective model.

Example:
    >>> rating_row("pr_1", "triage", "canary", "promoted", "correct", "higher",
    ...            0.1, 0.2, 100, 90)["body"]["relative_effect"]
    0.2
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from prefect_genopt import spool
from prefect_genopt.records import row_record
from prefect_genopt.warehouse import Warehouse
from prefect_genopt.warehouse.schema import utcnow

__all__ = ["rating_row", "rate", "reflections", "best_and_worst"]

#: which rating counts when a proposal has several (the canary saw real traffic)
SOURCE_RANK = {"canary": 0, "replay_gate": 1}


def rating_row(
    proposal_id: str,
    pipeline: str,
    source: str,
    outcome: str,
    kpi: str | None,
    direction: str | None,
    effect: float | None,
    relative_effect: float | None,
    n_stable: int | None,
    n_candidate: int | None,
) -> dict[str, Any]:
    """The spool record of one rating."""
    return row_record(
        "proposal_ratings",
        {
            "rating_id": uuid.uuid4().hex,
            "proposal_id": proposal_id,
            "pipeline": pipeline,
            "created_at": utcnow().isoformat(),
            "source": source,
            "outcome": outcome,
            "kpi": kpi,
            "direction": direction,
            "effect": effect,
            "relative_effect": relative_effect,
            "n_stable": n_stable,
            "n_candidate": n_candidate,
        },
    )


def rate(wh: Warehouse, *args: Any) -> None:
    """Append one rating (the arguments of :func:`rating_row`) to the warehouse's spool."""
    spool.append([rating_row(*args)], wh.spool_dir)


_RATED = """
SELECT p.proposal_id, p.pipeline, p.created_at, p.kpi, p.direction, p.reasoning, p.diff,
       p.suggestion, p.parent_param_set_id, p.candidate_param_set_id, p.evidence_kpi_mean,
       p.evidence_units, p.evidence_run_ids, p.evidence_item_keys, p.model, p.status,
       r.source, r.outcome, r.effect, r.relative_effect, r.n_stable, r.n_candidate
FROM proposals p
JOIN (SELECT *, row_number() OVER (
          PARTITION BY proposal_id
          ORDER BY CASE source WHEN 'canary' THEN 0 ELSE 1 END, created_at DESC) AS k
      FROM proposal_ratings) r
  ON r.proposal_id = p.proposal_id AND r.k = 1
"""


def reflections(wh: Warehouse, pipeline: str | None = None) -> Iterator[dict[str, Any]]:
    """(evidence, reflection, rating) records of every rated proposal, oldest first."""
    where = " WHERE p.pipeline = ?" if pipeline else ""
    rows = wh.sql(_RATED + where + " ORDER BY p.created_at", [pipeline] if pipeline else [])
    for r in rows:
        yield {
            "proposal_id": r["proposal_id"],
            "pipeline": r["pipeline"],
            "created_at": r["created_at"].isoformat() if r["created_at"] else None,
            "evidence": {
                "kpi": r["kpi"],
                "direction": r["direction"],
                "kpi_mean": r["evidence_kpi_mean"],
                "units": r["evidence_units"],
                "run_ids": orjson.loads(r["evidence_run_ids"] or "[]"),
                "item_keys": orjson.loads(r["evidence_item_keys"] or "[]"),
                "parent_param_set_id": r["parent_param_set_id"],
            },
            "reflection": r["reasoning"],
            "suggestion": orjson.loads(r["suggestion"]) if r["suggestion"] else None,
            "model": r["model"],
            "rating": {
                "source": r["source"],
                "outcome": r["outcome"],
                "effect": r["effect"],
                "relative_effect": r["relative_effect"],
                "n_stable": r["n_stable"],
                "n_candidate": r["n_candidate"],
            },
        }


def best_and_worst(
    rated: Iterable[dict[str, Any]], best: int, worst: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``best`` highest- and the ``worst`` lowest-rated of :func:`reflections`'
    records by relative effect (records without one left out; none in both), each list
    best first.

    Example:
        >>> recs = [{"id": i, "rating": {"relative_effect": e}} for i, e in
        ...         enumerate([0.1, None, -0.3, 0.2, 0.0])]
        >>> top, bottom = best_and_worst(recs, 1, 2)
        >>> [r["id"] for r in top], [r["id"] for r in bottom]
        ([3], [4, 2])
    """
    ranked = sorted(
        (r for r in rated if r["rating"]["relative_effect"] is not None),
        key=lambda r: -r["rating"]["relative_effect"],
    )
    top = ranked[:best]
    bottom = ranked[len(top) :][-worst:] if worst > 0 else []
    return top, bottom

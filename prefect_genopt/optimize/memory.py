"""The optimizer's memory: which past proposals its ``#Memory`` section shows.

Retroformer's retrospective memory: first the best- and the worst-rated past
reflections of the pipeline (a proposal's reasoning, rated by its replay gate or
canary: see :mod:`prefect_genopt.proposals.ratings`), then the most recent other
proposals with the KPI their candidate scored where it ran. The optimizer is shown
what worked and what did not, not a plain FIFO of its last answers.
"""

from __future__ import annotations

import orjson

from prefect_genopt.optimize.optoprime import MemoryEntry
from prefect_genopt.proposals.ratings import best_and_worst, reflections
from prefect_genopt.warehouse import Warehouse

__all__ = ["memory"]


def _rated_memory(wh: Warehouse, pipeline: str, size: int) -> list[MemoryEntry]:
    """The best- and the worst-rated past reflections (Retroformer), best first."""
    best, worst = best_and_worst(reflections(wh, pipeline), (size + 1) // 2, size // 2)
    out = []
    for r in [*best, *worst]:
        g = r["rating"]
        n = f" on {g['n_candidate']} items" if g["n_candidate"] else ""
        out.append(
            MemoryEntry(
                proposal_id=r["proposal_id"],
                created_at=(r["created_at"] or "?")[:10],
                diff=r["suggestion"] or {},
                reasoning=r["reflection"] or "",
                status=g["outcome"] or "",
                outcome=f"rated by its {g['source'].replace('_', ' ')}: "
                f"{r['evidence']['kpi']} {g['relative_effect']:+.1%} vs stable{n} "
                f"({g['outcome']})",
            )
        )
    return out


def memory(wh: Warehouse, pipeline: str, size: int) -> list[MemoryEntry]:
    """Past proposals with a change, and their outcomes, for the optimizer's #Memory.

    First the best- and the worst-rated past reflections (a proposal is rated when
    its replay gate or canary ends: its KPI delta against stable); the rest of the
    ``size`` slots go to the most recent other proposals, whose outcome is the KPI
    mean of the candidate's runs next to the parent's where the candidate ran,
    else their status.
    """
    if size <= 0:
        return []
    rated = _rated_memory(wh, pipeline, size)
    seen = {m.proposal_id for m in rated}
    return (
        rated
        + [m for m in _recent_memory(wh, pipeline, size + len(seen)) if m.proposal_id not in seen][
            : size - len(rated)
        ]
    )


def _recent_memory(wh: Warehouse, pipeline: str, size: int) -> list[MemoryEntry]:
    rows = wh.sql(
        """
        SELECT p.proposal_id, p.created_at, p.diff, p.reasoning, p.status, p.status_reason,
               p.kpi, c.mean AS cand_mean, c.n AS cand_n, b.mean AS parent_mean, b.n AS parent_n
        FROM proposals p
        LEFT JOIN (SELECT param_set_id, kpi, avg(value) AS mean, count(*) AS n FROM feedback
                   WHERE pipeline = ? AND value IS NOT NULL GROUP BY ALL) c
          ON c.param_set_id = p.candidate_param_set_id AND c.kpi = p.kpi
        LEFT JOIN (SELECT param_set_id, kpi, avg(value) AS mean, count(*) AS n FROM feedback
                   WHERE pipeline = ? AND value IS NOT NULL GROUP BY ALL) b
          ON b.param_set_id = p.parent_param_set_id AND b.kpi = p.kpi
        WHERE p.pipeline = ? AND p.diff IS NOT NULL AND p.diff::VARCHAR <> 'null'
        ORDER BY p.created_at DESC LIMIT ?
        """,
        [pipeline, pipeline, pipeline, size],
    )
    out = []
    for r in rows:
        outcome = None
        if r["cand_n"]:
            outcome = f"{r['kpi']} mean {r['cand_mean']:.3g} over {r['cand_n']} with the change"
            if r["parent_n"]:
                outcome += f" vs {r['parent_mean']:.3g} over {r['parent_n']} before"
        elif r["status_reason"] and r["status"] in ("rejected", "rolled_back"):
            outcome = r["status_reason"]
        out.append(
            MemoryEntry(
                proposal_id=r["proposal_id"],
                created_at=f"{r['created_at']:%Y-%m-%d}" if r["created_at"] else "?",
                diff=(orjson.loads(r["diff"]) if r["diff"] else None) or {},
                reasoning=r["reasoning"] or "",
                status=r["status"],
                outcome=outcome,
            )
        )
    return out

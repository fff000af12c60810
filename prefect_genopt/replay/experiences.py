"""Experiences (AgentRR): recorded runs or items with good feedback whose checks pass.

:func:`harvest` turns recorded steps (``@genopt.task(record=True)`` or
``replay=True``) into rows of ``experiences`` (one per run, or per item when the
feedback has an ``item_key``) and ``experience_steps`` (the steps, in order, with
their full redacted values and validity conditions). A unit becomes an
experience when:

* its feedback on ``kpi`` is good (every value at or past ``threshold``);
* every step passes the built-in and the pipeline's registered check functions
  (the pipeline's entrypoint is imported so its ``@genopt.check`` functions are
  registered);
* its recorded values fit ``GENOPT_EXPERIENCE_MAX_BYTES`` (else it is refused,
  and the row says so).

A unit that fails its checks is kept with status ``rejected`` and the failures,
so ``SELECT * FROM experiences`` shows why. Only ``verified`` experiences are
replayed or offered as demos. Harvesting twice stores each unit once, and units
whose every step was itself a replay are skipped (nothing new was learned).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> print(harvest("triage", "correct", threshold=1.0, warehouse=d / "w.duckdb"))
    triage: 0 verified, 0 rejected, 0 refused experiences (0 units without good feedback)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from prefect_genopt import spool
from prefect_genopt.errors import BadInputError
from prefect_genopt.records import row_record
from prefect_genopt.replay.checks import failed, run_checks
from prefect_genopt.replay.steps import clear_cache, params_fingerprint
from prefect_genopt.settings import get_settings
from prefect_genopt.warehouse.schema import utcnow
from prefect_genopt.warehouse.warehouse import Warehouse, as_warehouse

__all__ = ["harvest", "HarvestResult", "ExperienceError", "verified_demos", "list_experiences"]

logger = logging.getLogger("prefect_genopt.replay")


class ExperienceError(BadInputError, ValueError):
    """Harvesting cannot proceed as asked (an unknown KPI, a threshold that is needed)."""


@dataclass
class HarvestResult:
    """What one harvest stored."""

    pipeline: str
    verified: int = 0
    rejected: int = 0
    refused: int = 0
    not_good: int = 0
    experience_ids: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"{self.pipeline}: {self.verified} verified, {self.rejected} rejected, "
            f"{self.refused} refused experiences ({self.not_good} units without good feedback)"
        )


_UNITS_SQL = """
WITH units AS (
    SELECT run_id, item_key, count(*) AS n_steps, count(replayed_from) AS n_replayed,
           sum(size_bytes) AS size_bytes
    FROM step_values
    WHERE pipeline = $pipeline AND ($since IS NULL OR created_at >= $since)
    GROUP BY run_id, item_key
), scored AS (
    SELECT u.*, {agg}(f.value) AS kpi_value, count(f.value) AS n_feedback
    FROM units u JOIN feedback f
      ON f.run_id = u.run_id AND f.kpi = $kpi AND f.value IS NOT NULL
     AND f.item_key IS NOT DISTINCT FROM u.item_key AND f.step IS NULL
    GROUP BY ALL
)
SELECT s.*, r.trace_id, r.param_set_id
FROM scored s JOIN runs r USING (run_id)
WHERE s.n_replayed < s.n_steps
  AND NOT EXISTS (SELECT 1 FROM experiences e WHERE e.run_id = s.run_id
                  AND e.item_key IS NOT DISTINCT FROM s.item_key)
ORDER BY r.start_time, s.item_key
"""


def _threshold(wh: Warehouse, pipeline: str, kpi: str, direction: str) -> float:
    (row,) = wh.sql(
        "SELECT count(*) AS n, count(*) FILTER (WHERE value NOT IN (0, 1)) AS graded "
        "FROM feedback WHERE pipeline = ? AND kpi = ? AND value IS NOT NULL",
        [pipeline, kpi],
    )
    if row["n"] == 0:
        raise ExperienceError(f"no feedback on KPI {kpi!r} for pipeline {pipeline!r} yet")
    if row["graded"]:
        raise ExperienceError(
            f"KPI {kpi!r} is not 0/1: say which values are good with threshold= (--threshold)"
        )
    return 1.0 if direction == "higher" else 0.0


def _load_checks(wh: Warehouse, pipeline: str) -> str | None:
    """Import the pipeline's entrypoint so its check functions register; None or why not."""
    from prefect_genopt.replay.gate import load_entrypoint

    rows = wh.sql(
        "SELECT entrypoint FROM pipelines WHERE pipeline = ? ORDER BY version DESC LIMIT 1",
        [pipeline],
    )
    if not rows or not rows[0]["entrypoint"]:
        return f"no recorded entrypoint for {pipeline!r}: its check functions cannot be loaded"
    try:
        load_entrypoint(rows[0]["entrypoint"])
    except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
        return f"the entrypoint of {pipeline!r} does not import here ({exc}): checks not loaded"
    return None


def harvest(
    pipeline: str,
    kpi: str,
    *,
    threshold: float | None = None,
    direction: str = "higher",
    since: datetime | None = None,
    expires_in: timedelta | None = None,
    warehouse: Warehouse | str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> HarvestResult:
    """Store the pipeline's good, checked recorded runs (or items) as experiences.

    Args:
        pipeline: The pipeline.
        kpi: The KPI whose feedback says a unit was good.
        threshold: The worst good value (default: 1.0 for a 0/1 KPI, else required).
        direction: ``higher`` (values at or above the threshold are good) or ``lower``.
        since: Only steps recorded since then (UTC).
        expires_in: Experiences stop being replayed this long after the harvest.
        warehouse: The warehouse (default: GENOPT_WAREHOUSE).
        progress: Called with (units done, units in all) as the units are checked.

    Raises:
        ExperienceError: No feedback on ``kpi`` yet, or a graded KPI without a threshold.
    """
    if direction not in ("higher", "lower"):
        raise ExperienceError(f"direction must be 'higher' or 'lower', got {direction!r}")
    wh = as_warehouse(warehouse)
    result = HarvestResult(pipeline)
    if not wh.sql("SELECT 1 FROM step_values WHERE pipeline = ? LIMIT 1", [pipeline]):
        return result
    if threshold is None:
        threshold = _threshold(wh, pipeline, kpi, direction)
    agg = "min" if direction == "higher" else "max"
    units = wh.sql(_UNITS_SQL.format(agg=agg), {"pipeline": pipeline, "kpi": kpi, "since": since})
    checks_note = _load_checks(wh, pipeline) if units else None
    cap = get_settings().experience_max_bytes
    now = utcnow()
    expires_at = (now + expires_in).isoformat() if expires_in is not None else None
    rows: list[dict[str, Any]] = []
    for done, unit in enumerate(units):
        if progress is not None:
            progress(done, len(units))
        good = (
            unit["kpi_value"] >= threshold
            if direction == "higher"
            else unit["kpi_value"] <= threshold
        )
        if not good:
            result.not_good += 1
            continue
        key = f"{pipeline}\0{unit['run_id']}\0{unit['item_key'] or ''}"
        eid = "exp_" + hashlib.sha256(key.encode()).hexdigest()[:16]
        steps = wh.sql(
            "SELECT * FROM step_values WHERE run_id = ? AND item_key IS NOT DISTINCT FROM ? "
            "AND pipeline = ? ORDER BY created_at, record_id",
            [unit["run_id"], unit["item_key"], pipeline],
        )
        checks: dict[str, Any] = {}
        problems: list[str] = []
        if checks_note:
            problems.append(checks_note)
        for s in steps:
            res = run_checks(
                pipeline,
                s["step"],
                orjson.loads(s["inputs"]) if s["inputs"] else {},
                orjson.loads(s["output"]) if s["output"] else None,
                exact=bool(s["exact"]),
                redacted=bool(s["redacted"]),
            )
            checks[s["step"]] = res
            problems += [f"{s['step']}: {f}" for f in failed(res)]
        size = int(unit["size_bytes"] or 0)
        if size > cap:
            status, reason = "refused", f"{size} bytes; GENOPT_EXPERIENCE_MAX_BYTES is {cap}"
        elif problems:
            status, reason = "rejected", "; ".join(problems)[:1500]
        else:
            status, reason = "verified", None
        setattr(result, status, getattr(result, status) + 1)
        result.experience_ids.append(eid)
        rows.append(
            row_record(
                "experiences",
                {
                    "experience_id": eid,
                    "pipeline": pipeline,
                    "run_id": unit["run_id"],
                    "item_key": unit["item_key"],
                    "trace_id": unit["trace_id"],
                    "param_set_id": unit["param_set_id"],
                    "status": status,
                    "reason": reason,
                    "kpi": kpi,
                    "kpi_value": unit["kpi_value"],
                    "checks": checks,
                    "n_steps": len(steps),
                    "size_bytes": size,
                    "expires_at": expires_at,
                    "created_at": now.isoformat(),
                },
            )
        )
        if status != "verified":
            continue
        for seq, s in enumerate(steps):
            reads = orjson.loads(s["params_read"]) if s["params_read"] else {}
            rows.append(
                row_record(
                    "experience_steps",
                    {
                        "experience_id": eid,
                        "step": s["step"],
                        "seq": seq,
                        "pipeline": pipeline,
                        "span_id": s["span_id"],
                        "step_version": s["step_version"],
                        "input_fingerprint": s["input_fingerprint"],
                        "params_fingerprint": params_fingerprint(reads),
                        "params_read": reads,
                        "model": s["model"],
                        "inputs": orjson.Fragment(s["inputs"]),
                        "output": orjson.Fragment(s["output"]),
                    },
                )
            )
    if progress is not None and units:
        progress(len(units), len(units))
    if rows:
        spool.append(rows, wh.spool_dir)
        wh.ingest()
        clear_cache()  # this process replays the new experiences from its next step on
    logger.info("%s", result)
    return result


def verified_demos(
    pipeline: str,
    step: str,
    *,
    limit: int = 50,
    warehouse: Warehouse | str | Path | None = None,
    run_ids: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Verified experiences of ``step`` as candidate few-shot demos, newest first, one per
    input: ``{"id": experience_id, "input": ..., "output": ...}`` (a single-argument step's
    input is that argument's value, else the dict of arguments). ``run_ids``: only
    experiences harvested from these runs (chosen before one per input is kept, so an input
    that recurs in other runs still has its demo here)."""
    wh = as_warehouse(warehouse)
    rows = wh.sql(
        """
        SELECT s.experience_id, s.inputs, s.output
        FROM experience_steps s JOIN experiences e USING (experience_id)
        WHERE e.pipeline = ? AND e.status = 'verified' AND s.step = ?
          AND (e.expires_at IS NULL OR e.expires_at > ?)
          AND (? IS NULL OR list_contains(?, e.run_id))
        QUALIFY row_number() OVER (PARTITION BY s.input_fingerprint ORDER BY e.created_at DESC) = 1
        ORDER BY e.created_at DESC, s.experience_id LIMIT ?
        """,
        [
            pipeline,
            step,
            utcnow(),
            None if run_ids is None else True,
            [] if run_ids is None else list(run_ids),
            limit,
        ],
    )
    out = []
    for r in rows:
        inputs = orjson.loads(r["inputs"])
        if isinstance(inputs, dict) and len(inputs) == 1:
            inputs = next(iter(inputs.values()))
        out.append({"id": r["experience_id"], "input": inputs, "output": orjson.loads(r["output"])})
    return out


def list_experiences(
    pipeline: str, *, limit: int = 50, warehouse: Warehouse | str | Path | None = None
) -> list[dict[str, Any]]:
    """The pipeline's experiences, newest first, with how often each was replayed.

    Each row: ``experience_id``, ``status``, ``run_id``, ``item_key``, ``kpi_value``,
    ``n_steps``, ``size_bytes``, ``expires_at``, ``reason`` and ``replays`` (the spans
    that replayed it).

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> list_experiences("triage", warehouse=d / "w.duckdb")
        []
    """
    return as_warehouse(warehouse).sql(
        """
        SELECT e.experience_id, e.status, e.run_id, e.item_key, e.kpi_value, e.n_steps,
               e.size_bytes, e.expires_at, e.reason,
               (SELECT count(*) FROM spans s
                WHERE s.attributes->>'genopt.replay.experience_id' = e.experience_id) AS replays
        FROM experiences e WHERE e.pipeline = ? ORDER BY e.created_at DESC LIMIT ?
        """,
        [pipeline, limit],
    )

"""Evidence from the warehouse: the units an optimizer learns from.

A *unit* of evidence is one item of a run when the KPI is given per item
(``feedback(..., item_key=...)``), else one run. For each unit the span tree
is rebuilt (flow -> tasks -> LLM calls) from the ``spans`` table, along with the
unit's KPI values and text critique. Units are grouped into minibatches.

Only SQL aggregates touch every unit: the population's mean and counts, and the
minibatch picks (worst first, ties broken by a seeded hash; or a seeded random
sample). Spans, comments, inputs and outputs are read only for the runs that
enter a minibatch, so Python's work grows with the minibatch, not the warehouse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from prefect_genopt.errors import NotFoundError
from prefect_genopt.optimize.config import OptimizerSettings
from prefect_genopt.rollout.stable import stable_param_set
from prefect_genopt.tracing import setup_tracing
from prefect_genopt.warehouse import Warehouse, WarehouseBusyError, as_warehouse
from prefect_genopt.warehouse.param_sets import param_set_values
from prefect_genopt.warehouse.schema import utcnow

__all__ = [
    "EvidenceError",
    "Step",
    "Unit",
    "PipelineInfo",
    "Evidence",
    "collect",
    "stable_param_set",  # one function for it, in prefect_genopt.rollout.stable
]


class EvidenceError(NotFoundError, RuntimeError):
    """There is no usable evidence (unknown pipeline, no feedback in the window...)."""


@dataclass
class Step:
    """One span of a unit's execution, with its children."""

    span_id: str
    kind: str  # 'flow', 'task', 'llm' or another run_type
    name: str
    inputs: str | None = None
    output: str | None = None
    error: str | None = None
    params_read: dict[str, Any] | None = None
    doc: str | None = None
    model: str | None = None
    prompt: str | None = None
    completion: str | None = None
    children: list[Step] = field(default_factory=list)

    def walk(self) -> list[tuple[int, Step]]:
        """This step and its descendants in execution order, with their depth."""
        out: list[tuple[int, Step]] = [(0, self)]
        for c in self.children:
            out.extend((d + 1, s) for d, s in c.walk())
        return out


@dataclass
class Unit:
    """One unit of evidence: a run, or one item of a run."""

    run_id: str
    item_key: str | None
    value: float
    comments: list[str]
    other_kpis: dict[str, float]
    inputs: str | None
    output: str | None
    steps: list[Step]

    @property
    def label(self) -> str:
        run = self.run_id[:8]
        return f"run {run}, item {self.item_key}" if self.item_key else f"run {run}"


@dataclass
class PipelineInfo:
    """What the warehouse knows of a pipeline's code and parameters."""

    name: str
    schema_version: int
    schema: dict[str, Any]
    entrypoint: dict[str, Any]
    flow_name: str | None
    doc: str | None
    tasks: dict[str, str | None]  # task name -> docstring


@dataclass
class Evidence:
    """Everything an update needs: the pipeline, the parent param set, the minibatches.

    ``units`` holds the units that entered a minibatch (with their steps); the
    ``population_*`` fields describe every unit in the window (computed in SQL).
    """

    pipeline: PipelineInfo
    kpi: str
    direction: str
    per_item: bool
    parent_param_set_id: str
    parent_values: dict[str, Any]
    units: list[Unit]
    population_mean: float
    population_units: int
    population_runs: int
    minibatches: list[list[Unit]] = field(default_factory=list)
    #: every KPI value is 0 or 1 (a pass/fail KPI)
    binary: bool = False
    #: demos field -> {experience id: demo}: verified experiences it may pick from
    demo_pools: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    def passed(self, value: float) -> bool:
        """Whether a unit of a pass/fail KPI passed (1 is a pass unless lower is better)."""
        return value == (1.0 if self.direction == "higher" else 0.0)

    @property
    def run_ids(self) -> list[str]:
        return sorted({u.run_id for u in self.units})


def fresh_warehouse(
    warehouse: str | Path | Warehouse | None, say: Callable[[str], None]
) -> Warehouse:
    """The warehouse an optimizer run reads, with tracing set up (its LLM calls are spans)
    and what the spool holds loaded; a busy warehouse is read as it is, and ``say`` says so."""
    setup_tracing()
    wh = as_warehouse(warehouse)
    try:
        wh.ingest()
    except WarehouseBusyError as exc:
        say(f"warehouse busy, using what is loaded: {exc}")
    return wh


def _pipeline_info(wh: Warehouse, name: str) -> PipelineInfo:
    rows = wh.sql(
        "SELECT version, schema, entrypoint, flow_name FROM pipelines WHERE pipeline = ? "
        "ORDER BY version DESC LIMIT 1",
        [name],
    )
    if not rows:
        known = [r["pipeline"] for r in wh.sql("SELECT DISTINCT pipeline FROM pipelines")]
        raise EvidenceError(
            f"pipeline {name!r} has no runs in the warehouse"
            + (f" (known pipelines: {', '.join(sorted(known))})" if known else "")
        )
    row = rows[0]
    entry = orjson.loads(row["entrypoint"]) if row["entrypoint"] else {}
    return PipelineInfo(
        name=name,
        schema_version=int(row["version"]),
        schema=orjson.loads(row["schema"]),
        entrypoint=entry if isinstance(entry, dict) else {},
        flow_name=row["flow_name"],
        doc=(entry.get("doc") if isinstance(entry, dict) else None),
        tasks={},
    )


def _choose_kpi(wh: Warehouse, pipeline: str, since: Any) -> str:
    rows = wh.sql(
        "SELECT kpi, count(*) AS n, count(item_key) AS items FROM feedback "
        "WHERE pipeline = ? AND created_at >= ? AND value IS NOT NULL "
        "GROUP BY kpi ORDER BY (count(item_key) > 0) DESC, n DESC, kpi LIMIT 1",
        [pipeline, since],
    )
    if not rows:
        raise EvidenceError(
            f"pipeline {pipeline!r} has no KPI feedback in the window: run it and give "
            "feedback (genopt.feedback, `genopt feedback`) first"
        )
    return str(rows[0]["kpi"])


def _parse_json(text: Any) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def _steps_for(wh: Warehouse, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    rows = wh.sql(
        """
        SELECT run_id, span_id, parent_span_id, run_type, name, task_name, item_key,
               CASE WHEN run_type = 'llm' THEN NULL ELSE inputs END AS inputs,
               CASE WHEN run_type = 'llm' THEN NULL ELSE output END AS output,
               error, params_read, llm_model,
               json_extract_string(attributes, '$."genopt.doc"') AS doc,
               -- an LLM span's messages and completion: its inputs and output columns,
               -- in attributes for rows ingested before they moved there
               CASE WHEN run_type = 'llm' THEN coalesce(
                   inputs, json_extract_string(attributes, '$."gen_ai.prompt"')) END AS prompt,
               CASE WHEN run_type = 'llm' THEN coalesce(
                   output, json_extract_string(attributes, '$."gen_ai.completion"'))
               END AS completion
        FROM spans
        WHERE run_id IN (SELECT unnest(?::VARCHAR[]))
          AND run_type IN ('flow', 'task', 'llm')
        ORDER BY start_time, span_id
        """,
        [run_ids],
    )
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault(r["run_id"], []).append(r)
    return by_run


def _tree(rows: list[dict[str, Any]]) -> list[Step]:
    """Rebuild the span forest of one run (roots: spans whose parent is not in the run)."""
    steps: dict[str, Step] = {}
    for r in rows:
        kind = r["run_type"]
        steps[r["span_id"]] = Step(
            span_id=r["span_id"],
            kind=kind,
            name=r["task_name"] or r["name"] or kind,
            inputs=r["inputs"],
            output=r["output"],
            error=r["error"],
            params_read=_parse_json(r["params_read"]),
            doc=r["doc"],
            model=r["llm_model"],
            prompt=r["prompt"],
            completion=r["completion"],
        )
    roots: list[Step] = []
    for r in rows:
        parent = steps.get(r["parent_span_id"] or "")
        (parent.children if parent else roots).append(steps[r["span_id"]])
    return roots


def _item_steps(rows: list[dict[str, Any]], item_key: str) -> list[Step]:
    """The steps of one item: spans stamped with its key, with their descendants."""
    forest = _tree(rows)
    tagged = {r["span_id"] for r in rows if r["item_key"] == item_key}
    out: list[Step] = []

    def visit(step: Step) -> None:
        if step.span_id in tagged:
            out.append(step)
            return
        for c in step.children:
            visit(c)

    for root in forest:
        visit(root)
    return out


def _minibatches(
    ordered: list[Unit], best: Unit | None, settings: OptimizerSettings
) -> list[list[Unit]]:
    """``max_updates`` minibatches of ``minibatch_size`` units, each different where possible.

    ``ordered`` is the candidates in minibatch order (worst first, or a random sample);
    with ``focus="failures"`` each batch gets ``best`` too, for contrast.
    """
    size = settings.minibatch_size
    batches: list[list[Unit]] = []
    pool = [u for u in ordered if u is not best]
    if settings.focus == "random" or best is None:
        n = min(size, len(ordered))
        for i in range(settings.max_updates):
            start = (i * n) % max(len(ordered), 1)
            batches.append((ordered[start:] + ordered[:start])[:n])
        return batches
    take = max(size - 1, 1) if pool else 0
    for i in range(settings.max_updates):
        start = (i * take) % max(len(pool), 1)
        batch = (pool[start:] + pool[:start])[:take] if pool else []
        if len(batch) < size:
            batch.append(best)
        batches.append(batch[:size])
    return batches


def collect(
    wh: Warehouse,
    settings: OptimizerSettings,
    parent_values: dict[str, Any] | None = None,
    parent_param_set_id: str | None = None,
) -> Evidence:
    """Gather the evidence for ``settings.pipeline`` from the warehouse (one connection).

    Args:
        wh: The warehouse (read-only is enough).
        settings: The optimizer settings (window, KPI, minibatch size, horizon...).
        parent_values: Values to start from (default: the stable param set's).
        parent_param_set_id: The param set whose runs are the evidence (default: stable).

    Raises:
        EvidenceError: Unknown pipeline, no param set, or no feedback in the window.
    """
    with wh.reading():
        return _collect(wh, settings, parent_values, parent_param_set_id)


def _collect(
    wh: Warehouse,
    settings: OptimizerSettings,
    parent_values: dict[str, Any] | None,
    parent_param_set_id: str | None,
) -> Evidence:
    name = settings.pipeline
    info = _pipeline_info(wh, name)
    since = utcnow() - timedelta(days=settings.window_days)
    kpi = settings.kpi or _choose_kpi(wh, name, since)
    # stable, else (a pipeline only run pinned) the latest run's param set on any arm
    parent = parent_param_set_id or stable_param_set(wh, name, any_arm=True)
    if parent is None:
        raise EvidenceError(f"pipeline {name!r} has no run with a param set yet")
    if parent_values is None:
        parent_values = param_set_values(wh, name, parent)
        if parent_values is None:
            raise EvidenceError(f"param set {parent} of {name!r} is not in the warehouse")
    only = settings.evidence_run_ids
    filt = "AND f.run_id IN (SELECT unnest(?::VARCHAR[]))" if only else "AND r.param_set_id = ?"
    units_sql = f"""
        SELECT f.run_id, f.item_key, avg(f.value) AS value
        FROM feedback f JOIN runs r USING (run_id)
        WHERE f.pipeline = ? AND f.kpi = ? AND f.value IS NOT NULL AND f.created_at >= ?
          {filt}
        GROUP BY f.run_id, f.item_key
    """
    params = [name, kpi, since, only if only else parent]
    # The units are aggregated once into a temp table of this connection; the population's
    # stats and the picks read it; units reach Python only when they enter a minibatch.
    wh.execute(f"CREATE OR REPLACE TEMP TABLE genopt_units AS {units_sql}", params)
    stats = wh.sql(
        """
        SELECT count(*) FILTER (WHERE item_key IS NOT NULL) AS items,
               count(*) AS n, avg(value) AS mean, count(DISTINCT run_id) AS runs,
               bool_and(value IN (0, 1)) AS binary,
               avg(value) FILTER (WHERE item_key IS NOT NULL) AS item_mean,
               count(DISTINCT run_id) FILTER (WHERE item_key IS NOT NULL) AS item_runs,
               bool_and(value IN (0, 1)) FILTER (WHERE item_key IS NOT NULL) AS item_binary
        FROM genopt_units
        """
    )[0]
    if not stats["n"]:
        scope = "the given runs" if only else f"param set {parent}"
        raise EvidenceError(
            f"no {kpi!r} feedback for {scope} of pipeline {name!r} in the last "
            f"{settings.window_days:g} days"
        )
    per_item = bool(stats["items"])
    if per_item:  # run-level rows of an item KPI are not units
        count, mean, runs, binary = (
            stats["items"],
            stats["item_mean"],
            stats["item_runs"],
            stats["item_binary"],
        )
    else:
        count, mean, runs, binary = stats["n"], stats["mean"], stats["runs"], stats["binary"]
    keep = "WHERE item_key IS NOT NULL" if per_item else ""
    worst_first = "ASC" if settings.direction == "higher" else "DESC"
    tie = "hash(run_id, coalesce(item_key, ''), ?::BIGINT)"
    size = settings.minibatch_size
    if settings.focus == "random":
        order, limit = tie, settings.max_updates * size
        best_rows: list[dict[str, Any]] = []
    else:
        order, limit = f"value {worst_first}, {tie}", settings.max_updates * max(size - 1, 1) + 1
        best_first = "DESC" if worst_first == "ASC" else "ASC"
        best_rows = wh.sql(
            f"SELECT run_id, item_key, value FROM genopt_units {keep} "
            f"ORDER BY value {best_first}, {tie} LIMIT 1",
            [settings.seed],
        )
    picked = wh.sql(
        f"SELECT run_id, item_key, value FROM genopt_units {keep} ORDER BY {order} LIMIT ?",
        [settings.seed, limit],
    )
    wh.execute("DROP TABLE IF EXISTS genopt_units")

    def unit(r: dict[str, Any]) -> Unit:
        return Unit(r["run_id"], r["item_key"], float(r["value"]), [], {}, None, None, [])

    ordered = [unit(r) for r in picked]
    best = None
    if best_rows and count > 1:  # the best unit joins each batch for contrast
        key = (best_rows[0]["run_id"], best_rows[0]["item_key"])
        ordered = [u for u in ordered if (u.run_id, u.item_key) != key]
        best = unit(best_rows[0])
    batches = _minibatches(ordered, best, settings)
    chosen = {id(u): u for b in batches for u in b}
    chosen_runs = sorted({u.run_id for u in chosen.values()})
    spans = _steps_for(wh, chosen_runs)
    details = wh.sql(
        """
        SELECT f.run_id, f.item_key, f.kpi, avg(f.value) AS value,
               list(f.comment ORDER BY f.created_at) FILTER (WHERE f.comment IS NOT NULL)
                   AS comments,
               any_value(r.inputs) AS inputs, any_value(r.output) AS output
        FROM feedback f JOIN runs r USING (run_id)
        WHERE f.run_id IN (SELECT unnest(?::VARCHAR[]))
        GROUP BY ALL
        """,
        [chosen_runs],
    )
    by_unit: dict[tuple[str, str | None], dict[str, dict[str, Any]]] = {}
    for d in details:
        by_unit.setdefault((d["run_id"], d["item_key"]), {})[d["kpi"]] = d
    tasks: dict[str, str | None] = {}
    for u in chosen.values():
        rows = spans.get(u.run_id, [])
        u.steps = _item_steps(rows, u.item_key) if u.item_key else _tree(rows)
        mine = by_unit.get((u.run_id, u.item_key), {})
        whole_run = by_unit.get((u.run_id, None), {})
        own = mine.get(kpi) or {}
        u.comments = [c for c in (own.get("comments") or []) if c]
        u.other_kpis = {
            k: float(d["value"]) for k, d in mine.items() if k != kpi and d["value"] is not None
        }
        run_row = own or next(iter(whole_run.values()), {})
        u.inputs, u.output = run_row.get("inputs"), run_row.get("output")
        if u.item_key:
            u.other_kpis.update(
                {
                    f"{k} (whole run)": float(d["value"])
                    for k, d in whole_run.items()
                    if d["value"] is not None
                }
            )
            top = u.steps[0] if u.steps else None
            u.inputs = top.inputs if top else None
            u.output = u.steps[-1].output if u.steps else None
        for _, s in (x for root in u.steps for x in root.walk()):
            if s.kind == "task" and s.name not in tasks:
                tasks[s.name] = s.doc
    info.tasks = tasks
    return Evidence(
        pipeline=info,
        kpi=kpi,
        direction=settings.direction,
        per_item=per_item,
        parent_param_set_id=parent,
        parent_values=parent_values,
        units=list(chosen.values()),
        population_mean=float(mean),
        population_units=int(count),
        population_runs=int(runs),
        minibatches=batches,
        binary=bool(binary),
    )

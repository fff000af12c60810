"""Optimizer overhead besides LLM time, with 1k, 10k and 100k runs in the warehouse.

**Data.** One warehouse file per size, all for the ``triage`` example pipeline
(``flows/examples/triage.py``: Tunables ``prompt`` + ``temperature``, 8 tickets per
run). First 3 real runs of the example flow in ``prefect_test_harness()`` (with
``GENOPT_WAREHOUSE`` set to a seed file, then ingested), so the ``pipelines``,
``param_sets`` rows and the span shapes are genopt's own. Then, per size, a copy of
the seed file gets ``size - 3`` synthetic runs bulk-inserted with DuckDB SQL
(``range()``), each a copy of the latest real run's 19 spans (flow, run start, run
end, 8 ``classify`` task spans with ``item_key``, inputs, output and ``params_read``,
one ``llm`` span per task with ``gen_ai.prompt``/``gen_ai.completion``) with fresh
run, trace and span ids, shifted times (spread over the last 5 days), and the
tickets, labels and answers of a pool of real example tickets; plus feedback as the
example gives it: per ticket ``correct`` (0/1, with a comment on failures) and per
run ``accuracy``. Every run is on the stable arm of the one param set.

**What is timed**, in one warm process (imports done before; Prefect's test API
server stopped before the timed calls), per size: one warm-up call, then
``--repeats`` calls of ``prefect_genopt.optimize.optimize(settings,
warehouse=path)`` (the library call, no flow) with ``OptimizerSettings(pipeline=
"triage", model="bench-opt/prompt", response_format="none", max_updates=1,
minibatch_size=4)``. ``bench-opt`` is a scripted litellm provider
(:func:`prefect_genopt.testing.register`) whose responder, defined here, answers at once
with a valid JSON suggestion of a new ``prompt``, so each call records one ``proposed``
proposal (and a candidate param set) in the warehouse.
Reported: total seconds, ``result.llm_seconds`` and their difference, the
*overhead*, and the process's CPU time during the call (all threads: a check on how
much a busy machine stretched the wall time). A full ``gc.collect()`` runs before
every call, outside the clock. Then ``--breakdown-repeats`` more calls with timing
wrappers around the runner's steps (ingest at start, ``evidence.collect`` and each
of its SQL queries, memory, problem building, the LLM call, the proposal write,
ingest at end) and a ``gc.callbacks`` clock of the garbage collector's pauses.

**Cold costs**, reported separately: ``python -c "import prefect_genopt.optimize"``
(and the interpreter alone) in fresh subprocesses; and Prefect's cost around the
library call: a child process (imports timed, not counted) runs the
``prefect_genopt.optimize.flow.optimize_flow`` flow twice against the harness's API
on the smallest warehouse; the flow's wall time minus that of the ``optimize()``
call inside it (timed by a wrapper around the name the flow module calls) is
Prefect's start-up and wrap-up plus the flow's own extra work (concurrency limit,
reading back the proposals, the Markdown artifact).

Usage: ``python -m bench.bench_optimizer [--quick] [--sizes 1000,10000,100000]
[--repeats R] [--breakdown-repeats B] [--flow-children C] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import itertools
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common

_CHILD = "--flow-child" in sys.argv
_TMP = common.scratch_dir("bench-optimizer-") if not _CHILD else None
if _TMP is not None:  # Prefect reads its settings at import: set them first
    os.environ.update({"PREFECT_HOME": str(_TMP / "prefect-home"), **common.QUIET_ENV})
    os.environ["GENOPT_WAREHOUSE"] = str(_TMP / "seed.duckdb")

NAME = "optimizer"
TARGET_OVERHEAD_S = 2.0
PIPELINE = "triage"
ITEMS_PER_RUN = 8
SEED_RUNS = 3
DAYS = 5
MODEL = "bench-opt/prompt"
SETTINGS: dict[str, Any] = {
    "model": MODEL,
    "response_format": "none",
    "max_updates": 1,
    "minibatch_size": 4,
    "search": False,  # the single-shot path this bench has always timed
}
DEFAULT_SIZES = (1_000, 10_000, 100_000)

# ---------------------------------------------------------------------------------------
# the instant optimizer model
# ---------------------------------------------------------------------------------------


_ANSWERS = itertools.count(1)


def instant_answer(call: Any) -> Any:
    """The ``bench-opt`` responder: a valid JSON suggestion of a new ``prompt``, at once.

    Each answer's prompt carries a counter, so every call proposes a new candidate.
    """
    import orjson

    from prefect_genopt.testing import Reply

    text = orjson.dumps(
        {
            "reasoning": "The prompt names the labels but not what marks each one, so "
            "billing and bug tickets fall back to other.",
            "suggestion": {
                "prompt": "Classify the ticket. billing: invoice, refund, charged, "
                "bill, payment, card; bug: crash, error, broken, freezes, button. "
                f"Answer with the label only. (v{os.getpid()}.{next(_ANSWERS)})"
            },
        }
    ).decode()
    n_in = sum(len(str(m.get("content", ""))) for m in call.messages) // 4
    return Reply(text, prompt_tokens=n_in, completion_tokens=len(text) // 4)


def register_model() -> None:
    """Register litellm provider ``bench-opt``: :func:`instant_answer`."""
    from prefect_genopt import testing

    testing.register(MODEL.split("/")[0], instant_answer)


# ---------------------------------------------------------------------------------------
# building the warehouses
# ---------------------------------------------------------------------------------------


def seed_runs(path: Path, n: int) -> dict[str, Any]:
    """``n`` real runs of the triage example into ``path`` (needs a Prefect API)."""
    from flows.examples.triage import triage
    from prefect_genopt.warehouse import Ingester

    os.environ["GENOPT_WAREHOUSE"] = str(path)
    t0 = time.perf_counter()
    accuracy = [triage(n=ITEMS_PER_RUN, seed=s) for s in range(n)]
    runs_s = time.perf_counter() - t0
    ing = Ingester(path).ingest()
    return {"runs": n, "accuracy": accuracy, "runs_s": runs_s, "ingest_s": ing.seconds}


def _ticket_pool(prompt: str) -> list[tuple[Any, ...]]:
    """Distinct example tickets with the keyword model's answer under ``prompt``."""
    from flows.examples import keyword_model
    from flows.examples.tickets import tickets

    seen: dict[str, Any] = {}
    for seed in range(400):
        for t in tickets(ITEMS_PER_RUN, seed):
            seen.setdefault(t.id, t)
    pool = []
    for t in seen.values():
        if '"' in t.text or "\\" in t.text:  # texts are swapped inside JSON strings below
            continue
        pred = keyword_model.answer(prompt, t.text)
        ok = pred == t.label
        comment = None if ok else f"expected {t.label}, got {pred}: {t.text!r}"
        pool.append((len(pool), t.id, t.text, t.label, pred, float(ok), comment))
    return pool


_TEMPLATE_SQL = """
CREATE TEMP TABLE tmpl AS
WITH s AS (SELECT * FROM spans WHERE run_id = $run),
tasks AS (SELECT span_id, row_number() OVER (ORDER BY start_time) - 1 AS slot
          FROM s WHERE run_type = 'task')
SELECT s.*, coalesce(t1.slot, t2.slot) AS slot,
       date_diff('microsecond', (SELECT min(start_time) FROM s), s.start_time) AS off_us,
       date_diff('microsecond', s.start_time, s.end_time) AS dur_us,
       p.item_key AS t_item, json_extract_string(p.inputs, '$.text') AS t_text,
       p.output AS t_pred
FROM s
LEFT JOIN tasks t1 ON t1.span_id = s.span_id
LEFT JOIN tasks t2 ON t2.span_id = s.parent_span_id
LEFT JOIN s p ON p.span_id = coalesce(t1.span_id, t2.span_id)
"""

_RUNS_SQL = """
CREATE TEMP TABLE r AS
SELECT i,
       substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-8'
           || substr(h, 18, 3) || '-' || substr(h, 21, 12) AS run_id,
       md5('trace' || i) AS trace_id,
       $start + to_microseconds(CAST($span_us * i // $n AS BIGINT)) AS t0
FROM (SELECT i, md5('run' || i) AS h FROM range($n) t(i))
"""

_SPANS_SQL = """
INSERT INTO spans
SELECT r.trace_id, substr(md5(r.i || t.span_id), 1, 16),
       CASE WHEN t.parent_span_id IS NOT NULL
            THEN substr(md5(r.i || t.parent_span_id), 1, 16) END,
       r.run_id, t.name, t.run_type, t.task_name, t.span_kind,
       r.t0 + to_microseconds(t.off_us), r.t0 + to_microseconds(t.off_us + t.dur_us),
       t.duration_ms, t.status, t.status_message, t.state, t.pipeline, t.param_set_id,
       'stable',
       CASE WHEN t.item_key IS NOT NULL THEN ri.ticket_id END,
       CASE WHEN t.run_type = 'task'
                THEN json_object('ticket_id', ri.ticket_id, 'text', ri.text)::VARCHAR
            WHEN t.inputs IS NOT NULL
                THEN json_object('n', $items, 'seed', r.i)::VARCHAR END,
       CASE WHEN t.run_type = 'task' THEN ri.pred
            WHEN t.output IS NOT NULL THEN CAST(round(a.acc, 3) AS VARCHAR) END,
       t.params_read, t.error, t.llm_model, t.llm_provider, t.input_tokens, t.output_tokens,
       t.cost_usd,
       CASE WHEN t.slot IS NULL THEN replace(t.attributes, $run, r.run_id)
            ELSE replace(replace(replace(replace(t.attributes, $run, r.run_id),
                                         t.t_item, ri.ticket_id), t.t_text, ri.text),
                         '[\\"' || t.t_pred || '\\"]', '[\\"' || ri.pred || '\\"]')
       END::JSON,
       t.events, t.resource, t.source, t.host, t.pid, r.t0 + INTERVAL 2 SECOND
FROM r CROSS JOIN tmpl t
JOIN racc a ON a.i = r.i
LEFT JOIN ri ON ri.i = r.i AND ri.j = t.slot
"""

_RUNS_INSERT_SQL = """
INSERT INTO runs (run_id, pipeline, flow_name, param_set_id, arm, schema_version, trace_id,
                  start_time, end_time, duration_s, status, status_message, host, pid, inputs,
                  output, routing_error, ingested_at)
SELECT r.run_id, x.pipeline, x.flow_name, x.param_set_id, 'stable', x.schema_version,
       r.trace_id, r.t0, r.t0 + to_microseconds(CAST(x.duration_s * 1e6 AS BIGINT)),
       x.duration_s, 'completed', NULL, x.host, x.pid,
       json_object('n', $items, 'seed', r.i)::VARCHAR, CAST(round(a.acc, 3) AS VARCHAR),
       NULL, r.t0 + INTERVAL 2 SECOND
FROM r JOIN racc a ON a.i = r.i, (SELECT * FROM runs WHERE run_id = $run) x
"""

_FEEDBACK_SQL = """
INSERT INTO feedback (feedback_id, run_id, pipeline, param_set_id, arm, item_key, kpi, value,
                      comment, source, idempotency_key, created_at, verified, ingested_at)
SELECT md5(r.run_id || chr(0) || 'correct|' || ri.ticket_id || '|code'), r.run_id,
       x.pipeline, x.param_set_id, 'stable', ri.ticket_id, 'correct', ri.correct,
       ri.comment, 'code', 'correct|' || ri.ticket_id || '|code',
       r.t0 + INTERVAL 1 SECOND, true, r.t0 + INTERVAL 2 SECOND
FROM r JOIN ri ON ri.i = r.i, (SELECT * FROM runs WHERE run_id = $run) x
UNION ALL
SELECT md5(r.run_id || chr(0) || 'accuracy||code'), r.run_id, x.pipeline, x.param_set_id,
       'stable', NULL, 'accuracy', a.acc, NULL, 'code', 'accuracy||code',
       r.t0 + INTERVAL 1 SECOND, true, r.t0 + INTERVAL 2 SECOND
FROM r JOIN racc a ON a.i = r.i, (SELECT * FROM runs WHERE run_id = $run) x
"""

COUNTS_SQL = """
SELECT 'runs', count(*) FROM runs UNION ALL
SELECT 'spans', count(*) FROM spans UNION ALL
SELECT 'llm spans', count(*) FROM spans WHERE run_type = 'llm' UNION ALL
SELECT 'task spans', count(*) FROM spans WHERE run_type = 'task' UNION ALL
SELECT 'feedback', count(*) FROM feedback UNION ALL
SELECT 'feedback correct', count(*) FROM feedback WHERE kpi = 'correct' UNION ALL
SELECT 'param_sets', count(*) FROM param_sets UNION ALL
SELECT 'pipelines', count(*) FROM pipelines UNION ALL
SELECT 'proposals', count(*) FROM proposals
"""


def bulk_load(seed: Path, path: Path, n_runs: int) -> dict[str, Any]:
    """Copy ``seed`` to ``path`` and add synthetic runs until it holds ``n_runs`` runs."""
    import duckdb

    shutil.copyfile(seed, path)
    t0 = time.perf_counter()
    con = duckdb.connect(str(path))
    try:
        have = con.execute("SELECT count(*) FROM runs").fetchone()[0]
        n_new = n_runs - have
        template_run, param_set = con.execute(
            "SELECT run_id, param_set_id FROM runs WHERE pipeline = ? "
            "ORDER BY start_time DESC LIMIT 1",
            [PIPELINE],
        ).fetchone()
        prompt = con.execute(
            """SELECT json_extract_string("values", '$.prompt') FROM param_sets
               WHERE pipeline = ? AND param_set_id = ?""",
            [PIPELINE, param_set],
        ).fetchone()[0]
        pool = _ticket_pool(prompt)
        con.execute(
            "CREATE TEMP TABLE pool (idx INTEGER, ticket_id VARCHAR, text VARCHAR, "
            "label VARCHAR, pred VARCHAR, correct DOUBLE, comment VARCHAR)"
        )
        con.executemany("INSERT INTO pool VALUES (?, ?, ?, ?, ?, ?, ?)", pool)
        con.execute(_TEMPLATE_SQL, {"run": template_run})
        shape = con.execute(
            "SELECT count(*), count(slot), count(DISTINCT slot) FROM tmpl"
        ).fetchone()
        if shape[2] != ITEMS_PER_RUN:
            raise SystemExit(f"template run {template_run} has an unexpected shape: {shape}")
        now = datetime.now(UTC).replace(tzinfo=None)
        span_us = DAYS * 86_400 * 10**6
        start = now - timedelta(days=DAYS, seconds=-60)
        con.execute(_RUNS_SQL, {"start": start, "span_us": span_us, "n": n_new})
        con.execute(
            f"CREATE TEMP TABLE ri AS SELECT r.i, j, p.* FROM r, range({ITEMS_PER_RUN}) s(j), "
            f"pool p WHERE p.idx = (r.i * {ITEMS_PER_RUN} + j) % {len(pool)}"
        )
        con.execute("CREATE TEMP TABLE racc AS SELECT i, avg(correct) AS acc FROM ri GROUP BY i")
        t_prep = time.perf_counter() - t0
        con.execute("BEGIN TRANSACTION")
        con.execute(_SPANS_SQL, {"run": template_run, "items": ITEMS_PER_RUN})
        t_spans = time.perf_counter() - t0 - t_prep
        con.execute(_RUNS_INSERT_SQL, {"run": template_run, "items": ITEMS_PER_RUN})
        con.execute(_FEEDBACK_SQL, {"run": template_run})
        con.execute("DELETE FROM ingest_files")  # the seed spool's ledger; not this file's
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
        counts = dict(con.execute(COUNTS_SQL).fetchall())
    finally:
        con.close()
    seconds = time.perf_counter() - t0
    return {
        "runs": n_runs,
        "synthetic_runs": n_new,
        "template_run": template_run,
        "param_set_id": param_set,
        "template_spans": shape[0],
        "ticket_pool": len(pool),
        "ticket_pool_correct": sum(p[5] for p in pool) / len(pool),
        "counts": counts,
        "bytes": path.stat().st_size,
        "seconds": seconds,
        "prepare_s": t_prep,
        "spans_insert_s": t_spans,
    }


# ---------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------


def optimizer_settings() -> Any:
    from prefect_genopt.optimize import OptimizerSettings

    return OptimizerSettings(pipeline=PIPELINE, **SETTINGS)


def one_call(
    path: Path, settings: Any, before: Callable[[], None] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """One timed ``optimize()`` call (a full GC first, then ``before()``, outside the clock)."""
    from prefect_genopt.optimize import optimize

    said: list[str] = []
    gc.collect()
    if before is not None:
        before()
    t0, c0 = time.perf_counter(), time.process_time()
    result = optimize(settings, warehouse=path, progress=said.append)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    statuses = [u.status for u in result.updates]
    if statuses != ["proposed"]:
        raise SystemExit(f"expected one proposal, got {statuses}: {said}")
    out = {
        "total_s": total,
        "llm_s": result.llm_seconds,
        "overhead_s": total - result.llm_seconds,
        "cpu_s": cpu,  # this process's CPU time (all threads) during the call
        "result_seconds": result.seconds,
        "evidence_units": result.evidence_units,
        "llm_calls": result.llm_calls,
        "tokens": result.tokens,
    }
    del result
    return out, said


_QUERY_LABELS = (
    ("FROM pipelines WHERE pipeline", "pipeline info"),
    ("GROUP BY kpi", "choose KPI"),
    ("FROM runs WHERE pipeline", "stable param set"),
    ('SELECT "values" FROM param_sets', "parent values"),
    ("FROM feedback f JOIN runs r", "unit rows (every unit)"),
    ("FROM spans", "spans of chosen runs"),
    ("kpi <> ?", "other KPIs of chosen runs"),
    ("FROM proposals p", "past proposals"),
    ("FROM proposals WHERE", "proposals"),
)


#: the ingest ``Warehouse._before_query`` runs before collect's first query when the
#: spool directory holds any file (this process's own open spool file counts)
NESTED_INGEST = "  collect: ingest again before its 1st query"


def _query_label(sql: str) -> str:
    for needle, label in _QUERY_LABELS:
        if needle in sql:
            return label
    return "other: " + " ".join(sql.split())[:40]


class Probe:
    """Timing wrappers around the runner's steps, for one ``optimize()`` call at a time.

    Only module attributes and class attributes are replaced (restored on exit);
    the library code itself runs unchanged.
    """

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.queries: list[dict[str, Any]] = []
        self.gc_s = 0.0
        self.gc_n = 0
        self.gc_by_generation: dict[int, list[float]] = {}
        self._phase: str | None = None
        self._ingests = 0
        self._gc_t = 0.0

    def reset(self) -> None:
        self.phases, self.queries = {}, []
        self.gc_s, self.gc_n, self._ingests = 0.0, 0, 0
        self.gc_by_generation = {}

    def _add(self, label: str, seconds: float) -> None:
        self.phases[label] = self.phases.get(label, 0.0) + seconds

    def _phase_wrapper(self, fn: Callable[..., Any], label: str | None) -> Callable[..., Any]:
        probe = self

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            name = label
            if name is None:  # Warehouse.ingest: at the start, inside a step, or at the end
                if probe._ingests == 0:
                    name = "ingest at start"
                elif probe._phase == "evidence collect":
                    name = NESTED_INGEST
                else:
                    name = f"  {probe._phase}: ingest" if probe._phase else "ingest at end"
                probe._ingests += 1
            outer, probe._phase = probe._phase, name
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                probe._add(name, time.perf_counter() - t0)
                probe._phase = outer

        return wrapper

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_t = time.perf_counter()
        else:
            seconds = time.perf_counter() - self._gc_t
            self.gc_s += seconds
            self.gc_n += 1
            g = self.gc_by_generation.setdefault(int(info.get("generation", -1)), [0, 0.0])
            g[0] += 1
            g[1] += seconds

    @contextlib.contextmanager
    def installed(self) -> Iterator[Probe]:
        from prefect_genopt.optimize import evidence, runner
        from prefect_genopt.optimize.llm import LLMClient
        from prefect_genopt.optimize.optoprime import OptoPrime
        from prefect_genopt.warehouse.warehouse import Warehouse

        probe = self
        patches: list[tuple[Any, str, Any]] = []

        def patch(owner: Any, attr: str, new: Any) -> None:
            patches.append((owner, attr, owner.__dict__[attr]))
            setattr(owner, attr, new)

        patch(
            evidence, "setup_tracing", self._phase_wrapper(evidence.setup_tracing, "setup tracing")
        )
        for attr, label in (
            ("collect", "evidence collect"),
            ("memory", "memory (past proposals)"),
            ("record_proposal", "proposal write (spool)"),
        ):
            patch(runner, attr, self._phase_wrapper(getattr(runner, attr), label))
        patch(OptoPrime, "problem", self._phase_wrapper(OptoPrime.problem, "problem + prompt"))
        patch(OptoPrime, "messages", self._phase_wrapper(OptoPrime.messages, "problem + prompt"))
        patch(LLMClient, "complete", self._phase_wrapper(LLMClient.complete, "LLM call"))
        patch(Warehouse, "ingest", self._phase_wrapper(Warehouse.ingest, None))

        execute, sql = Warehouse.execute, Warehouse.sql

        def timed_execute(wh: Any, query: str, params: Any = None, **kw: Any) -> Any:
            nested = probe.phases.get(NESTED_INGEST, 0.0)
            t0 = time.perf_counter()
            out = execute(wh, query, params, **kw)
            seconds = time.perf_counter() - t0
            ingest = probe.phases.get(NESTED_INGEST, 0.0) - nested  # Warehouse._before_query
            probe.queries.append(
                {
                    "phase": probe._phase,
                    "query": _query_label(query),
                    "execute_s": seconds - ingest,
                    "ingest_before_s": ingest,
                    "rows": len(out[1]),
                }
            )
            return out

        def timed_sql(wh: Any, query: str, params: Any = None, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = sql(wh, query, params, **kw)
            if probe.queries:
                probe.queries[-1]["sql_s"] = time.perf_counter() - t0
            return out

        patch(Warehouse, "execute", timed_execute)
        patch(Warehouse, "sql", timed_sql)
        gc.callbacks.append(self._gc)
        try:
            yield self
        finally:
            gc.callbacks.remove(self._gc)
            for owner, attr, original in reversed(patches):
                setattr(owner, attr, original)

    def breakdown(self, total: float) -> dict[str, float]:
        """Seconds per step of the last call; ``other`` is what no wrapper saw."""
        out = dict(self.phases)
        collect_q = [q for q in self.queries if q["phase"] == "evidence collect"]
        units = [q for q in collect_q if q["query"] == "unit rows (every unit)"]
        rest = [q for q in collect_q if q["query"] != "unit rows (every unit)"]
        q_sql = sum(q["execute_s"] for q in collect_q)
        q_dicts = sum(  # Warehouse.sql minus Warehouse.execute (which holds the ingest)
            q.get("sql_s", 0.0) - q["execute_s"] - q["ingest_before_s"] for q in collect_q
        )
        out["  collect: SQL 'unit rows' (connect, query, fetchall)"] = sum(
            q["execute_s"] for q in units
        )
        out["  collect: SQL, the other queries"] = sum(q["execute_s"] for q in rest)
        out["  collect: rows -> dicts (Warehouse.sql)"] = q_dicts
        out["  collect: Python (units, sort, shuffle, span trees)"] = (
            out.get("evidence collect", 0.0) - q_sql - q_dicts - out.get(NESTED_INGEST, 0.0)
        )
        out["other (not in a wrapped step)"] = total - sum(
            v for k, v in self.phases.items() if not k.startswith(" ")
        )
        out["GC pauses, all steps (overlaps the rows above)"] = self.gc_s
        return out


def measure_size(path: Path, repeats: int, breakdown_repeats: int, probe: Probe) -> dict[str, Any]:
    """Warm-up, ``repeats`` plain calls, ``breakdown_repeats`` instrumented calls."""
    os.environ["GENOPT_WAREHOUSE"] = str(path)  # the optimizer's own spans go to its spool
    settings = optimizer_settings()
    warm, said = one_call(path, settings)
    print(
        f"    warm-up {warm['total_s']:.3f}s (LLM {warm['llm_s']:.3f}s), "
        f"{warm['evidence_units']:,} units"
    )
    calls = []
    for i in range(repeats):
        r, said = one_call(path, settings)
        calls.append(r)
        print(
            f"    call {i + 1}/{repeats}: total {r['total_s']:.3f}s, LLM {r['llm_s']:.4f}s, "
            f"overhead {r['overhead_s']:.3f}s (process CPU {r['cpu_s']:.3f}s)"
        )
    breakdowns = []
    with probe.installed():
        for i in range(breakdown_repeats):
            r, _ = one_call(path, settings, before=probe.reset)  # GC clock: the call only
            b = probe.breakdown(r["total_s"])
            breakdowns.append(
                {
                    "call": r,
                    "steps": b,
                    "gc_collections": probe.gc_n,
                    "gc_by_generation": {
                        str(k): {"collections": v[0], "seconds": v[1]}
                        for k, v in sorted(probe.gc_by_generation.items())
                    },
                    "queries": list(probe.queries),
                }
            )
            gens = ", ".join(
                f"gen{k} {v[0]}x {v[1]:.3f}s" for k, v in sorted(probe.gc_by_generation.items())
            )
            print(
                f"    instrumented {i + 1}/{breakdown_repeats}: total {r['total_s']:.3f}s, "
                f"collect {b.get('evidence collect', 0):.3f}s, GC {probe.gc_s:.3f}s ({gens})"
            )
    steps = list(breakdowns[0]["steps"]) if breakdowns else []
    return {
        "warmup": warm,
        "calls": calls,
        "total": common.quantiles([c["total_s"] for c in calls]),
        "llm": common.quantiles([c["llm_s"] for c in calls]),
        "overhead": common.quantiles([c["overhead_s"] for c in calls]),
        "cpu": common.quantiles([c["cpu_s"] for c in calls]),
        "breakdown_calls": breakdowns,
        "breakdown_median": {
            k: statistics.median(b["steps"].get(k, 0.0) for b in breakdowns) for k in steps
        },
        "progress_lines": said,
    }


# ---------------------------------------------------------------------------------------
# cold costs
# ---------------------------------------------------------------------------------------


def time_subprocess(code: str, n: int) -> dict[str, Any]:
    """Wall seconds of ``python -c code`` in fresh processes (median of ``n``)."""
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=common.ROOT, check=True)
        samples.append(time.perf_counter() - t0)
    return {"code": code, "samples": samples, **common.quantiles(samples)}


def flow_child(path: Path) -> int:
    """(In a child process) import, then run the optimizer flow twice; print JSON."""
    t0 = time.perf_counter()
    from prefect_genopt.optimize import flow as flow_module
    from prefect_genopt.optimize.flow import optimize_flow

    register_model()
    import_s = time.perf_counter() - t0
    library: list[float] = []
    call = flow_module.optimize

    @functools.wraps(call)
    def timed_optimize(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            library.append(time.perf_counter() - t0)

    flow_module.optimize = timed_optimize
    flows = []
    for _ in range(2):
        library.clear()
        t0 = time.perf_counter()
        out = optimize_flow(
            pipeline=PIPELINE, settings=dict(SETTINGS), wait_seconds=30.0, warehouse=str(path)
        )
        wall = time.perf_counter() - t0
        flows.append(
            {
                "wall_s": wall,
                "library_s": sum(library),
                "result_seconds": out["seconds"],
                "llm_s": out["llm_seconds"],
                "prefect_s": wall - sum(library),
                "proposals": len(out["proposals"]),
            }
        )
    print(json.dumps({"import_s": import_s, "flows": flows}))
    return 0


def flow_startup(path: Path, api_url: str, n: int) -> dict[str, Any]:
    """``n`` child processes, each running the optimizer flow twice against ``api_url``."""
    env = dict(os.environ)
    env["PREFECT_API_URL"] = api_url
    env["GENOPT_WAREHOUSE"] = str(path)
    children = []
    for i in range(n):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "bench.bench_optimizer", "--flow-child", str(path)],
            cwd=common.ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"flow child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        child["process_s"] = time.perf_counter() - t0
        children.append(child)
        first, second = child["flows"]
        print(
            f"  child {i + 1}/{n}: imports {child['import_s']:.2f}s; flow 1: "
            f"{first['wall_s']:.3f}s (library {first['library_s']:.3f}s, Prefect "
            f"{first['prefect_s']:.3f}s); flow 2: {second['wall_s']:.3f}s (Prefect "
            f"{second['prefect_s']:.3f}s)"
        )
    return {
        "children": children,
        "first_flow_prefect": common.quantiles([c["flows"][0]["prefect_s"] for c in children]),
        "second_flow_prefect": common.quantiles([c["flows"][1]["prefect_s"] for c in children]),
        "import_in_child": common.quantiles([c["import_s"] for c in children]),
    }


# ---------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    return [int(x.replace("_", "").replace("k", "000")) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1k and 10k runs only (smoke, < 90 s)")
    ap.add_argument(
        "--sizes",
        type=_sizes,
        default=None,
        help="runs per warehouse, comma-separated (default 1000,10000,100000)",
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per size (default 5)")
    ap.add_argument(
        "--breakdown-repeats",
        type=int,
        default=None,
        help="instrumented calls per size, for the breakdown (default 3; quick 1)",
    )
    ap.add_argument(
        "--flow-children",
        type=int,
        default=None,
        help="child processes running the optimizer flow (default 3; quick 1)",
    )
    ap.add_argument(
        "--import-repeats", type=int, default=None, help="import subprocesses (default 3)"
    )
    ap.add_argument("--keep", type=Path, default=None, help="build the warehouses here, keep them")
    ap.add_argument("--flow-child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.flow_child is not None:
        return flow_child(args.flow_child)
    sizes = args.sizes or ([1_000, 10_000] if args.quick else list(DEFAULT_SIZES))
    repeats = args.repeats or (3 if args.quick else 5)
    b_repeats = (
        args.breakdown_repeats if args.breakdown_repeats is not None else (1 if args.quick else 3)
    )
    children = args.flow_children if args.flow_children is not None else (1 if args.quick else 3)
    imp_repeats = args.import_repeats or (1 if args.quick else 3)
    command = shlex.join(["python", "-m", "bench.bench_optimizer", *(argv or sys.argv[1:])])

    info = common.machine_info()
    print(
        f"bench_optimizer: sizes {', '.join(f'{s:,}' for s in sizes)} runs of {PIPELINE!r} "
        f"({ITEMS_PER_RUN} items each); {repeats} timed + {b_repeats} instrumented calls per "
        f"size after 1 warm-up; settings {SETTINGS}"
    )
    print(
        f"machine: {info['nproc']} cores, python {info['python']}, duckdb "
        f"{info['versions']['duckdb']}, prefect {info['versions']['prefect']}, "
        f"load {info['loadavg_at_start']}"
    )

    t_import = time.perf_counter()
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    import flows.examples.triage  # noqa: F401
    import prefect_genopt.optimize  # noqa: F401

    register_model()
    import_s = time.perf_counter() - t_import
    print(f"imports in this process: {import_s:.2f}s")

    assert _TMP is not None
    directory = args.keep or (_TMP / "data")
    directory.mkdir(parents=True, exist_ok=True)
    seed = directory / "seed.duckdb"
    for p in [seed, *(directory / f"runs-{s}.duckdb" for s in sizes)]:
        p.unlink(missing_ok=True)
        shutil.rmtree(p.with_name(p.name + ".spool"), ignore_errors=True)

    results: dict[str, Any] = {}
    builds: dict[int, dict[str, Any]] = {}
    try:
        t0 = time.perf_counter()
        with prefect_test_harness():
            with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                api_url = str(ps.PREFECT_API_URL.value())
                harness_s = time.perf_counter() - t0
                print(f"Prefect test harness API at {api_url}, ready in {harness_s:.1f}s")
                seeded = seed_runs(seed, SEED_RUNS)
                print(
                    f"seed: {SEED_RUNS} real triage runs in {seeded['runs_s']:.1f}s "
                    f"(accuracy {seeded['accuracy']}), ingested in {seeded['ingest_s']:.2f}s"
                )
                for size in sizes:
                    path = directory / f"runs-{size}.duckdb"
                    b = builds[size] = bulk_load(seed, path, size)
                    c = b["counts"]
                    print(
                        f"built {path.name}: {c['runs']:,} runs, {c['spans']:,} spans, "
                        f"{c['feedback']:,} feedback, {b['bytes'] / 1e6:,.0f} MB in "
                        f"{b['seconds']:.1f}s"
                    )
                    if c["runs"] != size or c["spans"] != size * b["template_spans"]:
                        raise SystemExit(f"warehouse incomplete: {c}")
                print(f"flow start-up: {children} child process(es) on {sizes[0]:,} runs")
                flow = flow_startup(directory / f"runs-{sizes[0]}.duckdb", api_url, children)
        print("Prefect test harness stopped")

        probe = Probe()
        for size in sizes:
            path = directory / f"runs-{size}.duckdb"
            print(f"  {size:,} runs:")
            results[str(size)] = measure_size(path, repeats, b_repeats, probe)
            results[str(size)]["build"] = builds[size]

        print(f"import subprocesses ({imp_repeats} each)")
        imports = {
            "interpreter": time_subprocess("pass", imp_repeats),
            "prefect_genopt.optimize": time_subprocess(
                "import prefect_genopt.optimize", imp_repeats
            ),
            "prefect_genopt.optimize.flow": time_subprocess(
                "import prefect_genopt.optimize.flow", imp_repeats
            ),
        }
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)  # (--keep builds elsewhere)

    rows = []
    for size in sizes:
        r = results[str(size)]
        c = r["build"]["counts"]
        bd = r["breakdown_median"]
        rows.append(
            [
                size,
                c["spans"],
                r["warmup"]["evidence_units"],
                r["total"]["median"],
                r["llm"]["median"],
                r["overhead"]["median"],
                r["overhead"]["p25"],
                r["overhead"]["p75"],
                r["cpu"]["median"],
                bd.get("evidence collect", float("nan")),
                bd.get("ingest at start", float("nan")),
                bd.get("proposal write (spool)", 0.0) + bd.get("ingest at end", 0.0),
            ]
        )
    common.print_table(
        [
            "runs",
            "spans",
            "units",
            "total s",
            "LLM s",
            "overhead s",
            "p25",
            "p75",
            "CPU s",
            "collect s",
            "ingest start s",
            "write+ingest end s",
        ],
        rows,
        title=f"optimize() in a warm process: medians of {repeats} calls "
        f"(collect/ingest: medians of {b_repeats} instrumented calls)",
    )
    steps = list(results[str(sizes[0])]["breakdown_median"]) if b_repeats else []
    if steps:
        common.print_table(
            ["step", *(f"{s:,} runs" for s in sizes)],
            [[k, *(results[str(s)]["breakdown_median"].get(k, 0.0) for s in sizes)] for k in steps],
            title=f"where the time goes, seconds (median of {b_repeats} instrumented calls)",
        )
    common.print_table(
        ["cold cost", "median s", "min", "max", "n"],
        [
            *(
                [f'python -c "{v["code"]}"', v["median"], v["min"], v["max"], v["n"]]
                for v in imports.values()
            ),
            [
                "optimize_flow, 1st run in a process: flow - library",
                flow["first_flow_prefect"]["median"],
                flow["first_flow_prefect"]["min"],
                flow["first_flow_prefect"]["max"],
                flow["first_flow_prefect"]["n"],
            ],
            [
                "optimize_flow, 2nd run in the process: flow - library",
                flow["second_flow_prefect"]["median"],
                flow["second_flow_prefect"]["min"],
                flow["second_flow_prefect"]["max"],
                flow["second_flow_prefect"]["n"],
            ],
            [
                "imports in the flow's child process",
                flow["import_in_child"]["median"],
                flow["import_in_child"]["min"],
                flow["import_in_child"]["max"],
                flow["import_in_child"]["n"],
            ],
            ["Prefect test harness start (API server)", harness_s, harness_s, harness_s, 1],
        ],
        title="cold costs (not in the figures above)",
    )
    biggest = sizes[-1]
    worst = results[str(biggest)]["overhead"]["median"]
    met = worst <= TARGET_OVERHEAD_S if biggest >= 100_000 else None
    verdict = {True: "met", False: "NOT met", None: "not tested (no 100k size)"}[met]
    print(
        f"\ntarget: overhead besides LLM time <= {TARGET_OVERHEAD_S}s with 100k runs: "
        f"{verdict} (median overhead at {biggest:,} runs: {worst:.3f}s)"
    )
    common.write_results(
        NAME,
        {
            "benchmark": NAME,
            "command": command,
            "machine": info,
            "pipeline": PIPELINE,
            "items_per_run": ITEMS_PER_RUN,
            "days": DAYS,
            "seed_runs": seeded,
            "settings": SETTINGS,
            "repeats": repeats,
            "breakdown_repeats": b_repeats,
            "import_in_process_s": import_s,
            "harness_start_s": harness_s,
            "sizes": results,
            "imports": imports,
            "flow": flow,
            "target_overhead_s": TARGET_OVERHEAD_S,
            "target_met": met,
        },
        quick=args.quick,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

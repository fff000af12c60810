"""Warehouse views over a big warehouse: ``kpi_by_param_set_day``, ``llm_usage``, ``run_summary``.

Builds a warehouse of 1M spans (``--quick``: 100k) in 2000 runs of 3 pipelines and
20 param sets (runs spread over 30 days, 15% of each run's spans LLM calls), with 10
feedback rows per run, **through the real path**: span and feedback records in the
spool, loaded by :class:`prefect_genopt.warehouse.Ingester`. To keep generation
short, one template run per param set is built with
:func:`prefect_genopt.records.span_record` and every run is a copy of its param
set's template with fresh trace/span/run ids and shifted times (so texts repeat
across runs; event timestamps inside ``events`` are not shifted).

Then times ``SELECT * FROM <view>`` (all rows fetched) for each view two ways:

* ``duckdb.connect(path, read_only=True)`` per query (connect, query, fetch, close);
* ``prefect_genopt.Warehouse(path, ingest=False).sql(...)`` (its own short read-only
  connection per query, rows as dicts).

"cold" is the first query after evicting the warehouse file from the OS page cache
(``posix_fadvise(DONTNEED)``); "warm" is the median (and p25/p75) of the next 7
queries. Every query opens a fresh connection, so DuckDB's own buffer cache is
always empty; only the OS page cache is warm.

Usage: ``python -m bench.bench_views [--quick] [--spans N] [--repeats R]``
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common

common.prefect_env()

NAME = "bench_views"
TARGET_KPI_S = 0.5
N_RUNS = 2000
N_PARAM_SETS = 20
FEEDBACK_PER_RUN = 10
DAYS = 30
LLM_SHARE = 0.15
VIEWS = ("kpi_by_param_set_day", "llm_usage", "run_summary")


def stamp_run(
    template: list[dict[str, Any]], rng: random.Random, start_ns: int, run_id: str
) -> list[dict[str, Any]]:
    """A copy of a template run with fresh ids and times moved to ``start_ns``."""
    trace_id = f"{rng.getrandbits(128):032x}"
    ids: dict[str, str] = {}

    def new_id(old: str | None) -> str | None:
        if old is None:
            return None
        v = ids.get(old)
        if v is None:
            v = ids[old] = f"{rng.getrandbits(64):016x}"
        return v

    shift = start_ns - min(r["start_ns"] for r in template)
    out = []
    for r in template:
        c = dict(r)
        c["trace_id"] = trace_id
        c["span_id"] = new_id(r["span_id"])
        c["parent_span_id"] = new_id(r["parent_span_id"])
        c["start_ns"] = r["start_ns"] + shift
        c["end_ns"] = r["end_ns"] + shift
        c["run_id"] = run_id
        attrs = dict(r["attributes"])
        if "genopt.run_id" in attrs:
            attrs["genopt.run_id"] = run_id
        if attrs.get("prefect.run.type") == "flow":
            attrs["prefect.run.id"] = run_id
        c["attributes"] = attrs
        out.append(c)
    return out


def build(directory: Path, n_spans: int) -> dict[str, Any]:
    """Write the spool for ``n_spans`` spans in ``N_RUNS`` runs, then ingest it."""
    import uuid

    from prefect_genopt.spool import SpoolWriter

    per_run = max(4, n_spans // N_RUNS)
    body = per_run - 3
    n_llm = round(body * LLM_SHARE)
    n_tasks = body - n_llm
    rng = random.Random(11)
    sets = common.param_sets(N_PARAM_SETS)
    t0 = time.perf_counter()
    with common.settings_lookup_cached():
        templates = [common.run_records(rng, ps, 10**18, n_tasks, n_llm)[1] for ps in sets]
    t_templates = time.perf_counter() - t0

    spool_dir = directory / "warehouse.duckdb.spool"
    writers = [SpoolWriter(spool_dir) for _ in range(8)]
    now = time.time_ns()
    span_ns = DAYS * 86_400 * 10**9
    n_written = n_feedback = 0
    for r in range(N_RUNS):
        ps_index = r % len(sets)
        start = now - span_ns + span_ns * r // N_RUNS
        run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        recs = stamp_run(templates[ps_index], rng, start, run_id)
        fb = common.feedback_records(rng, run_id, start, FEEDBACK_PER_RUN)
        writers[r % len(writers)].append(recs + fb)
        n_written += len(recs)
        n_feedback += len(fb)
    for w in writers:
        w.close()
    t_written = time.perf_counter() - t0
    spool_bytes = sum(p.stat().st_size for p in spool_dir.iterdir())
    print(
        f"spool: {n_written:,} spans + {n_feedback:,} feedback in "
        f"{len(list(spool_dir.iterdir()))} files, {spool_bytes / 1e9:.2f} GB, written in "
        f"{t_written:.1f}s (templates {t_templates:.1f}s)"
    )
    wh = directory / "warehouse.duckdb"
    ing = common.ingest_all(wh, spool_dir, n_written + n_feedback)
    print(
        f"ingested in {ing['seconds']:.1f}s over {ing['calls']} ingest() call(s): "
        f"{ing['spans']:,} spans ({ing['spans'] / ing['seconds']:,.0f} spans/s)"
    )
    return {
        "spans_per_run": per_run,
        "task_spans_per_run": n_tasks,
        "llm_spans_per_run": n_llm,
        "spans_written": n_written,
        "feedback_written": n_feedback,
        "spool_bytes": spool_bytes,
        "generate_and_write_s": t_written,
        "ingest": {k: v for k, v in ing.items() if k != "per_call"},
        "ingest_calls": [
            {k: c[k] for k in ("records", "spans", "feedback", "seconds", "transactions")}
            for c in ing["per_call"]
        ],
        "warehouse_bytes": wh.stat().st_size,
    }


def evict(path: Path) -> None:
    """Drop ``path`` from the OS page cache (clean pages only; the file is closed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def raw_query(path: Path, sql: str) -> int:
    """Fresh read-only DuckDB connection, run, fetch all, close; returns the row count."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        return len(con.execute(sql).fetchall())
    finally:
        con.close()


def warehouse_query(path: Path, sql: str) -> int:
    """``Warehouse(path, ingest=False).sql(sql)``; returns the row count."""
    from prefect_genopt import Warehouse

    return len(Warehouse(path, ingest=False).sql(sql))


def open_only(path: Path, sql: str) -> int:
    """Open and close a read-only connection, no query (the fixed cost of each query)."""
    import duckdb

    duckdb.connect(str(path), read_only=True).close()
    return 0


def measure(path: Path, fn: Callable[[Path, str], int], sql: str, repeats: int) -> dict[str, Any]:
    """Cold (after page-cache eviction) then ``repeats`` warm runs of ``fn``."""
    evict(path)
    t0 = time.perf_counter()
    rows = fn(path, sql)
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(path, sql)
        warm.append(time.perf_counter() - t0)
    return {"rows": rows, "cold_s": cold, "warm_s": warm, "warm": common.quantiles(warm)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100k spans (smoke check, < 60 s)")
    ap.add_argument("--spans", type=int, default=None, help="spans (default 1M, quick 100k)")
    ap.add_argument("--repeats", type=int, default=7, help="warm queries per view and path")
    ap.add_argument("--keep", type=Path, default=None, help="build the warehouse here and keep it")
    args = ap.parse_args(argv)
    n_spans = args.spans or (100_000 if args.quick else 1_000_000)

    info = common.machine_info()
    print(
        f"bench_views: {n_spans:,} spans, {N_RUNS} runs, 3 pipelines, {N_PARAM_SETS} param "
        f"sets, {FEEDBACK_PER_RUN} feedback/run; {args.repeats} warm queries"
    )
    print(
        f"machine: {info['nproc']} cores, python {info['python']}, duckdb "
        f"{info['versions']['duckdb']}, load {info['loadavg_at_start']}"
    )
    import duckdb

    if args.keep:
        directory = args.keep
        directory.mkdir(parents=True, exist_ok=True)
    else:
        directory = common.scratch_dir("bench-views-")
    try:
        built = build(directory, n_spans)
        wh = directory / "warehouse.duckdb"
        con = duckdb.connect(str(wh), read_only=True)
        counts = dict(
            con.execute(
                """
                SELECT 'spans', count(*) FROM spans UNION ALL
                SELECT 'llm spans', count(*) FROM spans WHERE run_type = 'llm' UNION ALL
                SELECT 'runs', count(*) FROM runs UNION ALL
                SELECT 'feedback', count(*) FROM feedback UNION ALL
                SELECT 'pending_feedback', count(*) FROM pending_feedback UNION ALL
                SELECT 'param_sets', count(*) FROM param_sets UNION ALL
                SELECT 'pipelines', count(*) FROM pipelines
                """
            ).fetchall()
        )
        con.close()
        print(f"warehouse: {built['warehouse_bytes'] / 1e6:,.0f} MB, {counts}")
        if counts["spans"] != n_spans or counts["runs"] != N_RUNS:
            raise SystemExit(f"warehouse incomplete: {counts}")

        paths: dict[str, Callable[[Path, str], int]] = {
            "duckdb.connect(read_only=True)": raw_query,
            "Warehouse(ingest=False).sql()": warehouse_query,
        }
        results: dict[str, Any] = {
            "open+close only": measure(wh, open_only, "", args.repeats),
        }
        for view in VIEWS:
            sql = f"SELECT * FROM {view}"
            for label, fn in paths.items():
                results[f"{view} | {label}"] = measure(wh, fn, sql, args.repeats)
                r = results[f"{view} | {label}"]
                print(
                    f"  {view:22s} {label:32s} rows {r['rows']:>6,}  cold "
                    f"{r['cold_s']:.3f}s  warm {r['warm']['median']:.3f}s"
                )
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)

    table = []
    for key, r in results.items():
        view, _, label = key.partition(" | ")
        table.append(
            [
                view,
                label or "-",
                r["rows"],
                r["cold_s"],
                r["warm"]["median"],
                r["warm"]["p25"],
                r["warm"]["p75"],
            ]
        )
    common.print_table(
        ["view", "access", "rows", "cold s", "warm median s", "p25", "p75"],
        table,
        title=f"SELECT * FROM <view>, {n_spans:,} spans; warm = median of {args.repeats}",
    )
    kpi = [results[f"kpi_by_param_set_day | {label}"] for label in paths]
    worst = max(max(r["cold_s"], r["warm"]["median"]) for r in kpi)
    met = worst <= TARGET_KPI_S
    print(
        f"\ntarget: kpi_by_param_set_day <= {TARGET_KPI_S}s over {n_spans:,} spans: "
        f"{'met' if met else 'NOT met'} (slowest of cold/warm medians: {worst:.3f}s)"
    )
    common.write_results(
        NAME,
        {
            "benchmark": NAME,
            "command": common.command_line("bench_views", argv),
            "machine": info,
            "n_spans": n_spans,
            "runs": N_RUNS,
            "param_sets": N_PARAM_SETS,
            "feedback_per_run": FEEDBACK_PER_RUN,
            "build": built,
            "counts": counts,
            "queries": results,
            "target_kpi_s": TARGET_KPI_S,
            "target_met": met,
        },
        quick=args.quick,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

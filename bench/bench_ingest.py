"""Ingest throughput: the spool ingester against DuckDB's own bulk-load paths.

Generates N realistic span records with :func:`prefect_genopt.records.span_record`
(runs of 50 spans: a Prefect flow span, genopt's run-start/run-end spans, 40 task
spans with 200-500-char inputs/outputs and 2-3 Prefect state events, 7 LLM spans
with ``gen_ai.*`` attributes), writes them with :class:`prefect_genopt.spool.SpoolWriter`
into several sealed spool files, then times, each on a fresh warehouse file:

* ``Ingester(path, spool).ingest()``: the whole ingest (open, migrate, read the
  spool, ``read_json``, insert spans/pipelines/param sets/runs, bookkeeping, commit,
  close, delete the loaded files);
* the same ingest again over the same files (every span a duplicate);
* DuckDB loading the *same rows* (read back from the ingested ``spans`` table, so
  identical values and types) into an identical, empty ``spans`` table (created by
  ``prefect_genopt.warehouse.schema.migrate``) three ways:

  - ``con.appender("spans")``: the DuckDB 2.0 Python client's row Appender
    (``append_rows`` of Python tuples, one ``flush``);
  - ``con.append("spans", df)``: registers the pandas DataFrame and runs
    ``INSERT INTO spans SELECT * FROM __append_df`` (a pandas scan; despite the
    name it is not the row Appender);
  - ``INSERT INTO spans SELECT * FROM tbl`` over a pyarrow Table (Arrow scan).

Each load is timed from ``duckdb.connect`` to ``close`` (the close checkpoints the
file), median of ``--repeats`` repeats, each on a fresh file.

Usage: ``python -m bench.bench_ingest [--quick] [--n N] [--repeats R]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common

common.prefect_env()

NAME = "bench_ingest"
TARGET_SPANS_PER_S = 100_000
TARGET_RATIO = 0.5


def generate_spool(directory: Path, n_spans: int, n_files: int) -> dict[str, Any]:
    """Write ``n_spans`` span records into ``n_files`` sealed spool files."""
    from prefect_genopt.spool import SpoolWriter

    writers = [SpoolWriter(directory) for _ in range(n_files)]
    t0 = time.perf_counter()
    n = runs = 0
    kinds: dict[str, int] = {}
    with common.settings_lookup_cached():
        for i, (_run_id, _start, _ps, recs) in enumerate(common.runs(n_spans, 50)):
            writers[i % n_files].append(recs)
            n += len(recs)
            runs += 1
            for r in recs:
                kinds[r["run_type"]] = kinds.get(r["run_type"], 0) + 1
    for w in writers:
        w.close()
    size = sum(p.stat().st_size for p in directory.iterdir())
    return {
        "spans": n,
        "runs": runs,
        "files": n_files,
        "bytes": size,
        "bytes_per_span": size / n,
        "by_run_type": kinds,
        "generate_s": time.perf_counter() - t0,
    }


def copy_spool(src: Path, dst: Path) -> None:
    """Copy the generated spool files into ``dst`` (same names)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.iterdir()):
        shutil.copyfile(p, dst / p.name)


class _TimedConnection:
    """Wraps a DuckDB connection and times every ``execute``/``executemany``."""

    def __init__(self, con: Any) -> None:
        self._con = con
        self.log: list[tuple[float, str]] = []

    def _timed(self, label: str, fn: Callable[..., Any], query: str, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(query, *args)
        self.log.append((time.perf_counter() - t0, label + " ".join(query.split())[:70]))
        return out

    def execute(self, query: str, *args: Any) -> Any:
        return self._timed("", self._con.execute, query, *args)

    def executemany(self, query: str, *args: Any) -> Any:
        return self._timed("executemany: ", self._con.executemany, query, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def ingest_breakdown(gen: Path, directory: Path, n_records: int) -> list[tuple[str, float]]:
    """One extra, instrumented ingest (not in the timings): seconds per SQL statement.

    Swaps ``prefect_genopt.warehouse.ingest.connect`` for a wrapper that times each
    statement the ingester runs, for this call only.
    """
    import contextlib
    import importlib

    ingest_mod = importlib.import_module("prefect_genopt.warehouse.ingest")
    original = ingest_mod.connect
    wrapped: list[_TimedConnection] = []

    @contextlib.contextmanager
    def timed_connect(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        with original(*args, **kwargs) as con:
            tc = _TimedConnection(con)
            tc.log.append((time.perf_counter() - t0, "connect"))
            wrapped.append(tc)
            yield tc
            t0 = time.perf_counter()
        tc.log.append((time.perf_counter() - t0, "close (checkpoint)"))

    copy_spool(gen, directory / "spool")
    ingest_mod.connect = timed_connect
    try:
        total = common.ingest_all(directory / "w.duckdb", directory / "spool", n_records)["seconds"]
    finally:
        ingest_mod.connect = original
    per: dict[str, float] = {}
    for tc in wrapped:
        for secs, label in tc.log:
            per[label] = per.get(label, 0.0) + secs
    top = sorted(per.items(), key=lambda kv: -kv[1])
    sql = sum(per.values())
    return [
        ("total ingest", total),
        *top[:6],
        ("other SQL (sum)", sum(v for _, v in top[6:])),
        ("Python outside SQL (read spool, staging file, cleanup)", total - sql),
    ]


def fresh_spans_table(path: Path) -> None:
    """Create the warehouse schema (so an empty, identical ``spans`` table) at ``path``."""
    import duckdb

    from prefect_genopt.warehouse.schema import migrate

    con = duckdb.connect(str(path))
    migrate(con)
    con.close()


def time_load(path: Path, load: Callable[[Any], None]) -> float:
    """Seconds from connect to close for one bulk load into ``path``."""
    import duckdb

    t0 = time.perf_counter()
    con = duckdb.connect(str(path))
    load(con)
    con.close()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20k spans (smoke check, < 60 s)")
    ap.add_argument("--n", type=int, default=None, help="spans (default 100k, quick 20k)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--files", type=int, default=8, help="spool files the spans are spread over")
    args = ap.parse_args(argv)
    n_spans = args.n or (20_000 if args.quick else 100_000)

    import duckdb

    info = common.machine_info()
    print(f"bench_ingest: {n_spans:,} spans, {args.repeats} repeats, {args.files} spool files")
    print(
        f"machine: {info['nproc']} cores, python {info['python']}, duckdb "
        f"{info['versions']['duckdb']}, pandas {info['versions']['pandas']}, pyarrow "
        f"{info['versions']['pyarrow']}, load {info['loadavg_at_start']}"
    )

    tmp = common.scratch_dir("bench-ingest-")
    try:
        gen = tmp / "generated"
        gen.mkdir()
        data = generate_spool(gen, n_spans, args.files)
        print(
            f"generated {data['spans']:,} spans in {data['runs']:,} runs, "
            f"{data['bytes'] / 1e6:,.1f} MB ({data['bytes_per_span']:,.0f} B/span) "
            f"in {data['generate_s']:.1f}s; by run_type {data['by_run_type']}"
        )

        samples: dict[str, list[float]] = {
            "ingester": [],
            "ingester_reload": [],
            "appender_rows": [],
            "append_pandas_df": [],
            "insert_arrow": [],
        }
        append_only: dict[str, list[float]] = {k: [] for k in samples if "ingester" not in k}
        details: list[dict[str, Any]] = []
        tables: dict[str, Any] = {}

        for rep in range(args.repeats):
            d = tmp / f"rep{rep}"
            wh = d / "warehouse.duckdb"
            spool_dir = d / "spool"
            copy_spool(gen, spool_dir)
            res = common.ingest_all(wh, spool_dir, n_spans)
            if res["spans"] != n_spans or res["rejected"]:
                raise SystemExit(f"ingest stored {res['spans']} spans, rejected {res['rejected']}")
            samples["ingester"].append(res["seconds"])
            left = list(spool_dir.iterdir())
            # the same files again: every span is a duplicate
            copy_spool(gen, spool_dir)
            res2 = common.ingest_all(wh, spool_dir, n_spans)
            if res2["spans"] != 0 or res2["records"] != n_spans:
                raise SystemExit(f"reload stored {res2['spans']} new spans of {res2['records']}")
            samples["ingester_reload"].append(res2["seconds"])
            con = duckdb.connect(str(wh), read_only=True)
            counts = dict(
                con.execute(
                    "SELECT 'spans', count(*) FROM spans UNION ALL "
                    "SELECT 'runs', count(*) FROM runs UNION ALL "
                    "SELECT 'param_sets', count(*) FROM param_sets UNION ALL "
                    "SELECT 'pipelines', count(*) FROM pipelines"
                ).fetchall()
            )
            if rep == 0:
                # the exact rows the ingester stored, in the three shapes DuckDB loads
                q = "SELECT * FROM spans"
                tables["arrow"] = con.sql(q).to_arrow_table()
                tables["df"] = con.execute(q).df()
                tables["rows"] = con.execute(q).fetchall()
            con.close()
            details.append(
                {
                    "repeat": rep,
                    "ingest": res,
                    "reload": res2,
                    "files_left_after_ingest": len(left),
                    "counts": counts,
                    "warehouse_bytes": wh.stat().st_size,
                    "loadavg": common.loadavg(),
                }
            )
            print(
                f"  repeat {rep}: ingest {res['seconds']:.2f}s in {res['calls']} call(s) "
                f"({n_spans / res['seconds']:,.0f}/s), reload {res2['seconds']:.2f}s in "
                f"{res2['calls']} call(s); tables {counts}; load {common.loadavg()}"
            )
            shutil.rmtree(d)

            arrow_tbl = tables["arrow"]
            df = tables["df"]
            rows = tables["rows"]

            def appender(con: Any, rows: list[tuple[Any, ...]] = rows) -> None:
                t0 = time.perf_counter()
                app = con.appender("spans")
                app.append_rows(rows)
                app.flush()
                append_only["appender_rows"].append(time.perf_counter() - t0)

            def append_df(con: Any, df: Any = df) -> None:
                t0 = time.perf_counter()
                con.append("spans", df)
                append_only["append_pandas_df"].append(time.perf_counter() - t0)

            def insert_arrow(con: Any, arrow_tbl: Any = arrow_tbl) -> None:
                t0 = time.perf_counter()
                con.register("arrow_spans", arrow_tbl)
                con.execute("INSERT INTO spans SELECT * FROM arrow_spans")
                con.unregister("arrow_spans")
                append_only["insert_arrow"].append(time.perf_counter() - t0)

            for key, fn in (
                ("appender_rows", appender),
                ("append_pandas_df", append_df),
                ("insert_arrow", insert_arrow),
            ):
                path = tmp / f"{key}-{rep}.duckdb"
                fresh_spans_table(path)
                samples[key].append(time_load(path, fn))
                con = duckdb.connect(str(path), read_only=True)
                stored = con.execute("SELECT count(*) FROM spans").fetchone()[0]
                con.close()
                if stored != n_spans:
                    raise SystemExit(f"{key} stored {stored} rows, expected {n_spans}")
                path.unlink()
            print(
                "    "
                + ", ".join(
                    f"{k} {samples[k][-1]:.2f}s"
                    for k in ("appender_rows", "append_pandas_df", "insert_arrow")
                )
            )
        breakdown = ingest_breakdown(gen, tmp / "breakdown", n_spans)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    rate = {k: n_spans / v for k, v in med.items()}
    labels = {
        "ingester": "Ingester.ingest() (spool -> warehouse, all tables)",
        "ingester_reload": "Ingester.ingest() again, same files (all duplicates)",
        "appender_rows": "con.appender('spans').append_rows(tuples) (row Appender)",
        "append_pandas_df": "con.append('spans', pandas df) (INSERT..SELECT pandas scan)",
        "insert_arrow": "INSERT INTO spans SELECT * FROM <pyarrow Table>",
    }
    rows_out = []
    for k in samples:
        q = common.quantiles(samples[k])
        extra = ""
        if k in append_only:
            extra = f"{n_spans / statistics.median(append_only[k]):,.0f}"
        rows_out.append(
            [
                labels[k],
                q["median"],
                q["min"],
                q["max"],
                round(rate[k]),
                round(data["bytes"] / q["median"] / 1e6, 1),
                extra or "-",
            ]
        )
    common.print_table(
        [
            "load path",
            "median s",
            "min s",
            "max s",
            "spans/s",
            "spool MB/s",
            "spans/s w/o connect+close",
        ],
        rows_out,
        title=f"Loading {n_spans:,} spans, median of {args.repeats} (connect..close)",
    )
    ratios = {
        k: rate["ingester"] / rate[k] for k in ("appender_rows", "append_pandas_df", "insert_arrow")
    }
    common.print_table(
        ["ratio", "value", "target", "met"],
        [
            [
                "ingester spans/s",
                round(rate["ingester"]),
                f">= {TARGET_SPANS_PER_S:,}",
                "yes" if rate["ingester"] >= TARGET_SPANS_PER_S else "NO",
            ],
            *[
                [
                    f"ingester / {k}",
                    round(v, 3),
                    f">= {TARGET_RATIO}",
                    "yes" if v >= TARGET_RATIO else "NO",
                ]
                for k, v in ratios.items()
            ],
        ],
        title="Targets",
    )
    common.print_table(
        ["step", "seconds", "share"],
        [[k, v, f"{v / breakdown[0][1]:.0%}"] for k, v in breakdown],
        title="Where one ingest's time goes (an extra instrumented run, not in the medians)",
    )
    common.write_results(
        NAME,
        {
            "benchmark": NAME,
            "command": common.command_line("bench_ingest", argv),
            "machine": info,
            "n_spans": n_spans,
            "repeats": args.repeats,
            "data": data,
            "seconds": samples,
            "append_only_seconds": append_only,
            "median_seconds": med,
            "spans_per_s": rate,
            "ratios": ratios,
            "targets": {"spans_per_s": TARGET_SPANS_PER_S, "ratio_vs_appender": TARGET_RATIO},
            "details": details,
            "ingest_breakdown_seconds": breakdown,
        },
        quick=args.quick,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

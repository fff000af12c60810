"""``genopt report`` on a big warehouse: the HTML file's size and the time to make it.

**Data.** One warehouse of ``--runs`` runs (default 10k; ``--quick``: 1k) of the
``triage`` pipeline over 30 days on 6 param sets, **through the real path**: span
records built by :func:`prefect_genopt.records.span_record` (``bench.common.run_records``:
flow, run start and end, 8 tasks with 200-500 character inputs and outputs, 4 LLM calls
whose messages and completion land in the spans' ``inputs``/``output``), 4 feedback
values per run, 30 proposals with diffs and offline evidence, 5 rollouts with 20 checks
each, and 10 optimizer nights of 16 candidates scored on 150 items (24k
``candidate_scores`` rows), all spooled and loaded by the ingester.

**Measured**, in one process after a warm-up: the time of
:func:`prefect_genopt.report.report_data` (the warehouse queries) and of
:func:`prefect_genopt.report.render` (median of ``--repeats``), the file's size, and how
much of it each section's data and the vendored chart library take. The issue's target:
a report of 10k runs under 5 MB.

Usage: ``python -m bench.bench_report [--quick] [--runs N] [--traces N] [--repeats R]``
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import common

common.prefect_env()

PIPELINE = "triage"
N_PARAM_SETS = 6
TASKS, LLM_CALLS = 8, 4
TARGET_BYTES = 5_000_000


def _rows(rng: random.Random, sets: list[common.ParamSet], now: datetime) -> list[dict[str, Any]]:
    """Proposals, rollouts with their checks and events, nights with candidate scores."""
    from prefect_genopt.records import row_record

    rows: list[dict[str, Any]] = []
    for i in range(30):
        parent, cand = sets[i % len(sets)], sets[(i + 1) % len(sets)]
        at = now - timedelta(days=29 - i)
        night = f"night-{i:03d}"
        rows.append(
            row_record(
                "proposals",
                {
                    "proposal_id": uuid.UUID(int=rng.getrandbits(128)).hex,
                    "pipeline": PIPELINE,
                    "created_at": at.isoformat(),
                    "status": rng.choice(("proposed", "rejected", "promoted", "not_better")),
                    "parent_param_set_id": parent.id,
                    "candidate_param_set_id": cand.id,
                    "diff": {"prompt": {"from": parent.values["prompt"] * 8, "to": "x" * 600}},
                    "reasoning": common._text(rng, 400, 1200),
                    "kpi": "accuracy",
                    "direction": "maximize",
                    "evidence_kpi_mean": rng.random(),
                    "evidence_units": 24,
                    "input_tokens": 3000,
                    "output_tokens": 400,
                    "cost_usd": 0.002,
                    "night_id": night if i % 3 == 0 else None,
                    "offline_evidence": {
                        "night_id": night,
                        "selection": {"n": 48, "parent_mean": 0.6, "winner_mean": 0.7},
                        "confirmation": {"n": 150, "parent_mean": 0.6, "candidate_mean": 0.7},
                        "candidates": [
                            {"candidate_id": f"c{j}", "changed": ["prompt"]} for j in range(16)
                        ],
                    },
                },
            )
        )
    for r in range(5):
        rid = f"ro-{r}"
        start = now - timedelta(days=25 - 5 * r)
        rows.append(
            row_record(
                "rollouts",
                {
                    "rollout_id": rid,
                    "pipeline": PIPELINE,
                    "created_at": start.isoformat(),
                    "stable_param_set_id": sets[r].id,
                    "canary_param_set_id": sets[r + 1].id,
                    "status": "running",
                },
            )
        )
        for kind, day in (("started", 0), (rng.choice(("promote", "abort")), 4)):
            rows.append(
                row_record(
                    "rollout_events",
                    {
                        "event_id": f"{rid}-{kind}",
                        "rollout_id": rid,
                        "pipeline": PIPELINE,
                        "created_at": (start + timedelta(days=day)).isoformat(),
                        "kind": kind,
                        "status": "running",
                    },
                )
            )
        for k in range(20):
            rows.append(
                row_record(
                    "rollout_analyses",
                    {
                        "analysis_id": f"{rid}-{k}",
                        "rollout_id": rid,
                        "pipeline": PIPELINE,
                        "created_at": (start + timedelta(hours=4 * k)).isoformat(),
                        "step": 1 + k // 7,
                        "weight": (0.1, 0.5, 1.0)[min(2, k // 7)],
                        "kpi": "accuracy",
                        "decision": "continue",
                        "reason": common._text(rng, 60, 200),
                        "mean_stable": 0.6,
                        "mean_canary": 0.6 + rng.uniform(-0.05, 0.1),
                        "ci_stable": [0.55, 0.65],
                        "ci_canary": [0.5, 0.75],
                        "n_stable": 100 * k,
                        "n_canary": 30 * k,
                    },
                )
            )
    for n in range(10):
        at = (now - timedelta(days=28 - 3 * n)).isoformat()
        for c in range(16):
            for item in range(150):
                rows.append(
                    row_record(
                        "candidate_scores",
                        {
                            "night_id": f"night-{n:03d}",
                            "pipeline": PIPELINE,
                            "candidate_id": f"cand-{n}-{c}",
                            "parent_id": f"cand-{n}-0",
                            "generator": "reflect",
                            "item_id": f"i{item}",
                            "pool": "selection" if item < 100 else "confirmation",
                            "score": float(rng.random() < 0.6),
                            "kpi": "accuracy",
                            "created_at": at,
                        },
                    )
                )
    return rows


def build(directory: Path, n_runs: int) -> dict[str, Any]:
    """Spool and ingest the warehouse; returns what was built and how long it took."""
    from prefect_genopt import spool

    rng = random.Random(16)
    sets = [common.ParamSet(PIPELINE, i) for i in range(N_PARAM_SETS)]
    now = datetime.now(UTC).replace(tzinfo=None)
    spool_dir = directory / "warehouse.duckdb.spool"
    t0 = time.perf_counter()
    span_ns = 30 * 86_400 * 10**9
    end_ns = time.time_ns() - 60 * 10**9
    n_records, batch = 0, []
    for r in range(n_runs):
        ps = sets[(r * N_PARAM_SETS) // n_runs]  # param sets follow each other in time
        start = end_ns - span_ns + span_ns * r // n_runs
        run_id, recs = common.run_records(rng, ps, start, TASKS, LLM_CALLS)
        recs += common.feedback_records(rng, run_id, start, 4)
        batch += recs
        if len(batch) > 20_000:
            spool.append(batch, spool_dir)
            n_records, batch = n_records + len(batch), []
    batch += _rows(rng, sets, now)
    spool.append(batch, spool_dir)
    n_records += len(batch)
    generated = time.perf_counter() - t0
    ingest = common.ingest_all(directory / "warehouse.duckdb", spool_dir, n_records)
    return {"records": n_records, "generate_s": generated, "ingest_s": ingest["seconds"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1k runs (smoke, < 60 s)")
    ap.add_argument("--runs", type=int, default=None, help="runs (default 10k, quick 1k)")
    ap.add_argument("--traces", type=int, default=25, help="runs in the trace view")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls of each step")
    args = ap.parse_args(argv)
    n_runs = args.runs or (1_000 if args.quick else 10_000)
    info = common.machine_info()
    print(
        f"bench_report: {n_runs:,} runs of {PIPELINE} ({3 + TASKS + LLM_CALLS} spans each), "
        f"{args.traces} traces; machine {info['nproc']} cores, load {info['loadavg_at_start']}"
    )
    from prefect_genopt.report import render, report_data
    from prefect_genopt.report.html import ECHARTS_FILE, _asset
    from prefect_genopt.warehouse import Warehouse

    directory = common.scratch_dir("bench-report-")
    built = build(directory, n_runs)
    print(
        f"built: {built['records']:,} records, generated in {built['generate_s']:.1f} s, "
        f"ingested in {built['ingest_s']:.1f} s"
    )
    wh = Warehouse(directory / "warehouse.duckdb", ingest=False)
    report_data(wh, PIPELINE, traces=args.traces)  # warm-up
    data_s, render_s = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        data = report_data(wh, PIPELINE, traces=args.traces)
        data_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        page = render(data)
        render_s.append(time.perf_counter() - t)
    size = len(page.encode())
    library = len(_asset("vendor", ECHARTS_FILE).encode())
    sections = {
        k: len(json.dumps(v, default=str).encode()) for k, v in data.items() if isinstance(v, list)
    }
    rows = [["whole file", f"{size:,}"], [f"chart library ({ECHARTS_FILE})", f"{library:,}"]]
    rows += [[f"data: {k}", f"{v:,}"] for k, v in sections.items()]
    common.print_table(["part", "bytes"], rows, title="report size")
    print(
        f"report_data: median {statistics.median(data_s):.2f} s, render: median "
        f"{statistics.median(render_s) * 1000:.0f} ms; {size / 1e6:.2f} MB "
        f"({'under' if size < TARGET_BYTES else 'OVER'} the 5 MB target)"
    )
    common.write_results(
        "bench_report",
        {
            "command": common.command_line("bench.bench_report", argv),
            "machine": info,
            "runs": n_runs,
            "traces": args.traces,
            "built": built,
            "report_data_s": data_s,
            "render_s": render_s,
            "bytes": size,
            "library_bytes": library,
            "section_bytes": sections,
            "target_bytes": TARGET_BYTES,
        },
        quick=args.quick,
    )
    return 0 if size < TARGET_BYTES else 1


if __name__ == "__main__":
    raise SystemExit(main())

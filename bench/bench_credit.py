"""Step-level credit (STeCa) against whole-trace OptoPrime on a synthetic 3-step pipeline.

``flows/examples/steps3.py``: ``clean`` (reads ``case``) -> ``select`` (reads
``min_len``) -> ``render`` (reads ``sep``); ``min_len`` starts wrong (6 instead of
3), so items with 3-5 letter words fail. The optimizer model is the scripted
``scripted-opt/onevar`` (:func:`prefect_genopt.testing.scripted_optimizer`, mode
``onevar``): it computes its answer from
the prompt it receives, changes one variable per answer, never retries a variable
its #Memory shows it changed, and picks among the untried variables by a coin
from the prompt's hash (it does not know which step is at fault).

Per seed and mode (``trace``: whole trace, every param editable; ``step``:
``OptimizerSettings(step_credit=True)``), rounds repeat until the pipeline is
fixed (12 validation items all right) or 6 rounds pass: run the pipeline on 6
fresh items with the current params (pinned), one optimizer update on that run,
validate the candidate on the 12 validation items, keep it if it scores higher.
Reported: rounds to fix, optimizer LLM calls and tokens (in + out, as litellm
counts them for the scripted model: words), and how often step credit blamed
the right step.

    python -m bench.bench_credit              # 10 seeds, ~3 min
    python -m bench.bench_credit --seeds 3    # quicker
    python -m bench.bench_credit --quick      # 1 seed (smoke run; results in the work dir)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import common

MAX_ROUNDS = 6
TRAIN_ITEMS, VAL_ITEMS = 6, 12


def one(seed: int, mode: str, tmp: Path, model: str) -> dict[str, Any]:
    """Rounds until the step-2 fault is fixed, for one seed and mode."""
    import orjson

    import prefect_genopt as genopt
    from flows.examples.steps3 import RIGHT, Steps3Params, steps3
    from prefect_genopt.optimize import OptimizerSettings, optimize

    os.environ["GENOPT_WAREHOUSE"] = str(tmp / f"w-{mode}-{seed}.duckdb")
    current = Steps3Params().values()
    with genopt.pinned_params(current, arm="offline"):
        best = steps3(n=VAL_ITEMS, seed=10_000 + seed)
    calls = tokens = 0
    blamed: list[str] = []
    rounds = None
    for r in range(1, MAX_ROUNDS + 1):
        with genopt.pinned_params(current, arm="offline"):
            steps3(n=TRAIN_ITEMS, seed=100 * seed + r)
        wh = genopt.Warehouse()
        run_id = wh.sql("SELECT run_id FROM runs ORDER BY start_time DESC LIMIT 1")[0]["run_id"]
        result = optimize(
            OptimizerSettings(
                pipeline="steps3",
                search=False,
                model=model,
                response_format="none",
                minibatch_size=4,
                max_updates=1,
                memory_size=6,
                seed=seed,
                kpi="correct",
                step_credit=mode == "step",
                starting_artifact={"start_from": "values", "values": current},
                evidence_run_ids=[run_id],
            ),
            progress=lambda _msg: None,
        )
        calls += result.llm_calls
        tokens += result.tokens
        if mode == "step":
            blamed += [
                c["step"]
                for c in genopt.Warehouse().sql(
                    "SELECT step FROM step_credit WHERE run_id = ?", [run_id]
                )
            ]
        for p in result.proposals:
            values = orjson.loads(
                genopt.Warehouse().sql(
                    'SELECT "values" FROM param_sets WHERE param_set_id = ?',
                    [p.candidate_param_set_id],
                )[0]["values"]
            )
            with genopt.pinned_params(values, arm="offline"):
                acc = steps3(n=VAL_ITEMS, seed=10_000 + seed)
            if acc > best:
                current, best = values, acc
        if best == 1.0:
            rounds = r
            break
    return {
        "seed": seed,
        "mode": mode,
        "rounds": rounds,
        "fixed": rounds is not None,
        "llm_calls": calls,
        "tokens": tokens,
        "final": {k: current[k] for k in RIGHT},
        "credit_right": blamed.count("select"),
        "credit_total": len(blamed),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=None, help="seeds per mode (default 10)")
    ap.add_argument("--quick", action="store_true", help="1 seed (a smoke run)")
    args = ap.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 10)
    tmp = common.scratch_dir("bench-credit-")
    common.prefect_env(tmp / "prefect", level="ERROR")
    from prefect.testing.utilities import prefect_test_harness

    model = common.scripted_optimizer("onevar")

    t0 = time.perf_counter()
    rows = []
    with prefect_test_harness(server_startup_timeout=120):
        for seed in range(seeds):
            for mode in ("trace", "step"):
                row = one(seed, mode, tmp, model)
                rows.append(row)
                print(
                    f"seed {seed} {mode:5}: fixed in {row['rounds']} round(s), "
                    f"{row['llm_calls']} LLM calls, {row['tokens']} tokens",
                    flush=True,
                )
    summary = {}
    print(
        "\n| mode | fixed | rounds (median, mean) | LLM calls (mean) | tokens (median, mean) | "
        "credit on step 2 |"
    )
    print("|---|---|---|---|---|---|")
    for mode in ("trace", "step"):
        rs = [r for r in rows if r["mode"] == mode]
        fixed = [r["rounds"] for r in rs if r["fixed"]]
        right = sum(r["credit_right"] for r in rs)
        total = sum(r["credit_total"] for r in rs)
        summary[mode] = {
            "fixed": len(fixed),
            "n": len(rs),
            "rounds_median": statistics.median(fixed) if fixed else None,
            "rounds_mean": statistics.mean(fixed) if fixed else None,
            "calls_mean": statistics.mean(r["llm_calls"] for r in rs),
            "tokens_median": statistics.median(r["tokens"] for r in rs),
            "tokens_mean": statistics.mean(r["tokens"] for r in rs),
            "credit": f"{right}/{total}" if total else "-",
        }
        s = summary[mode]
        print(
            f"| {mode} | {s['fixed']}/{s['n']} | {s['rounds_median']}, "
            f"{s['rounds_mean'] and round(s['rounds_mean'], 2)} | {s['calls_mean']:.1f} | "
            f"{s['tokens_median']}, {s['tokens_mean']:.0f} | {s['credit']} |"
        )
    t, st = summary["trace"], summary["step"]
    if t["rounds_mean"] and st["rounds_mean"]:
        print(
            f"\nstep-focused / whole-trace: rounds {st['rounds_mean'] / t['rounds_mean']:.2f}x, "
            f"tokens (mean) {st['tokens_mean'] / t['tokens_mean']:.2f}x"
        )
    print(f"wall {time.perf_counter() - t0:.0f} s")
    common.write_results(
        "credit",
        {
            "command": common.command_line("bench_credit", argv),
            "machine": common.machine_info(),
            "rows": rows,
            "summary": summary,
        },
        quick=args.quick,
    )


if __name__ == "__main__":
    main()

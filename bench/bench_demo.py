"""Does the demo pipeline's KPI rise? The demo's loop over several seeds, measured.

For each seed: a fresh warehouse; the triage example runs 5 times (8 tickets each) on its stable
prompt with feedback; the optimizer (GENOPT_MODEL, else the embedded model) runs once as the demo
runs it (editable: prompt, up to 3 updates, stop at the first valid proposal); the candidate is
then run on the same 5 ticket batches (in-sample) and on 5 new ones (held out), next to the
stable prompt on those new ones. Results go to bench/results/demo.json, one entry per seed,
saved as they come (the script resumes).

    python -m bench.bench_demo --seeds 0 1 2 3 4
    python -m bench.bench_demo --quick     # seed 0, 2 batches, the scripted optimizer

``--quick`` is a smoke run: 2 ticket batches instead of 5, the optimizer is
:func:`prefect_genopt.testing.scripted_optimizer` in mode ``rules`` instead of a real
model, and the results go to the work directory (see :mod:`bench.common`), never into
demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from bench import common
from bench.common import log, mean


def one_seed(seed: int, model: str | None = None, batches: int = 5) -> dict:
    import orjson

    import prefect_genopt as genopt
    from flows.examples.triage import TriageParams, triage
    from prefect_genopt.optimize import OptimizerSettings, optimize

    home = common.scratch_dir(f"bench-demo-{seed}-")
    os.environ["GENOPT_WAREHOUSE"] = str(home / "warehouse.duckdb")
    train = [seed * 100 + i for i in range(batches)]
    held_out = [seed * 100 + 50 + i for i in range(batches)]
    before = [triage(n=8, seed=s) for s in train]
    t0 = time.perf_counter()
    result = optimize(
        OptimizerSettings(
            pipeline="triage",
            search=False,
            starting_artifact={"editable": ["prompt"]},
            max_updates=3,
            seed=seed,
            **({"model": model} if model else {}),
        ),
        progress=lambda m: log(f"  {m[:160]}"),
    )
    seconds = time.perf_counter() - t0
    entry: dict = {
        "seed": seed,
        "stable_prompt": TriageParams().prompt,
        "train_before": before,
        "updates": [u.status for u in result.updates],
        "reasons": [u.reason for u in result.updates],
        "optimizer_seconds": round(seconds, 1),
        "llm_calls": result.llm_calls,
        "tokens": result.tokens,
        "model": result.model,
    }
    if result.proposals:
        cand = result.proposals[0].candidate_param_set_id
        values = orjson.loads(
            genopt.Warehouse().sql(
                'SELECT "values" FROM param_sets WHERE param_set_id = ?', [cand]
            )[0]["values"]
        )
        with genopt.pinned_params(values, arm="offline"):
            entry["train_after"] = [triage(n=8, seed=s) for s in train]
            entry["held_out_after"] = [triage(n=8, seed=s) for s in held_out]
        entry["held_out_before"] = [triage(n=8, seed=s) for s in held_out]
        entry["candidate_prompt"] = values["prompt"]
    return entry


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 3 4")
    ap.add_argument(
        "--quick", action="store_true", help="seed 0, 2 batches, scripted optimizer (smoke)"
    )
    args = ap.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3, 4])
    common.prefect_env()
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    model = common.scripted_optimizer("rules") if args.quick else None
    results = common.results_path("demo", quick=args.quick)
    done = json.loads(results.read_text()) if results.exists() and not args.quick else {"runs": []}
    seen = {r["seed"] for r in done["runs"]}
    with prefect_test_harness(server_startup_timeout=180):
        with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            for seed in seeds:
                if seed in seen:
                    continue
                log(f"seed {seed}")
                entry = one_seed(seed, model, batches=2 if args.quick else 5)
                done["runs"].append(entry)
                done["command"] = common.command_line("bench_demo", argv)
                common.save_json(results, done)
                log(
                    f"seed {seed}: {entry['updates']} train {mean(entry['train_before']):.3f} -> "
                    f"{mean(entry.get('train_after', entry['train_before'])):.3f}"
                )
    print("seed | updates | in-sample before -> after | held-out stable -> candidate")
    for r in done["runs"]:
        after = r.get("train_after")
        print(
            f"{r['seed']} | {','.join(r['updates'])} | {mean(r['train_before']):.3f} -> "
            + (f"{mean(after):.3f}" if after else "(no proposal)")
            + (
                f" | {mean(r['held_out_before']):.3f} -> {mean(r['held_out_after']):.3f}"
                if after
                else ""
            )
        )


if __name__ == "__main__":
    main()

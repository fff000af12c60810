"""Does the demo pipeline's KPI rise? The demo's loop over several seeds, measured.

For each seed: a fresh warehouse; the triage example runs 5 times (8 tickets each) on its stable
prompt with feedback; the optimizer (GENOPT_MODEL, else the embedded model) runs once as the demo
runs it (editable: prompt, up to 3 updates, stop at the first valid proposal); the candidate is
then run on the same 5 ticket batches (in-sample) and on 5 new ones (held out), next to the
stable prompt on those new ones. Results go to bench/results/demo.json, one entry per seed,
saved as they come (the script resumes).

    python bench/bench_demo.py --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "demo.json"


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def one_seed(seed: int) -> dict:
    import orjson

    import prefect_genopt as genopt
    from flows.examples.triage import TriageParams, triage
    from prefect_genopt.optimize import OptimizerSettings, optimize

    home = Path(tempfile.mkdtemp(prefix=f"genopt-demo-bench-{seed}-"))
    os.environ["GENOPT_WAREHOUSE"] = str(home / "warehouse.duckdb")
    train = [seed * 100 + i for i in range(5)]
    held_out = [seed * 100 + 50 + i for i in range(5)]
    before = [triage(n=8, seed=s) for s in train]
    t0 = time.perf_counter()
    result = optimize(
        OptimizerSettings(
            pipeline="triage",
            starting_artifact={"editable": ["prompt"]},
            max_updates=3,
            seed=seed,
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


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    done = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"runs": []}
    seen = {r["seed"] for r in done["runs"]}
    with prefect_test_harness(server_startup_timeout=180):
        with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            for seed in args.seeds:
                if seed in seen:
                    continue
                log(f"seed {seed}")
                entry = one_seed(seed)
                done["runs"].append(entry)
                done["command"] = "python bench/bench_demo.py --seeds " + " ".join(
                    map(str, args.seeds)
                )
                RESULTS.parent.mkdir(parents=True, exist_ok=True)
                RESULTS.write_text(json.dumps(done, indent=2))
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

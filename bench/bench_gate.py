"""The replay gate's judgement: how many truly worse candidates it stops, and its false stops.

    python -m bench.bench_gate [--candidates 40] [--gate-runs 1] [--seed 0] [--quick]

**Pipeline.** The example triage pipeline (``flows/examples/triage.py``) with its offline
keyword model (it follows the prompt's ``label: cue words`` rules literally), inside one
``prefect_test_harness`` (a real local API) and one warehouse file.

**Candidates.** Prompts built at random from the cue words of the ticket templates: for
each label, each of its cue words is kept with probability 1/2, and with probability
``--swap`` (0.3) a label's rule points at the wrong label. So candidates range from
much better than stable to much worse.

**Truth.** Each candidate and the stable prompt run on the same ``--holdout`` (10) runs of
8 tickets never used by the gate (pinned params, arm ``offline``); a candidate is *worse*
when its held-out accuracy is below stable's by more than the tolerance (the default plan's
5% relative), and *not worse* otherwise.

**Gate.** ``replay_gate`` with the default plan's tolerance replays ``--gate-runs``
recorded stable runs (a different recorded run per candidate) and compares on the same
items. Reported: the share of worse candidates stopped (target: most), the share of
not-worse candidates stopped (false stops), the gate's LLM calls per candidate (target:
at most one pipeline run's worth, 8 calls here) and its wall time.

Results go to ``bench/results/bench_gate.json`` (``--quick``: 4 candidates, 2 held-out runs,
into the work directory).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from bench import common

#: cue words per label, from the ticket templates (flows/examples/tickets.py)
CUES = {
    "billing": ["invoice", "refund", "charged", "payment", "bill", "declined"],
    "bug": ["crash", "error", "broken", "freezes", "login"],
}
TOLERANCE = 0.05


def candidate_prompt(rng: random.Random, swap: float) -> str:
    """A random rule-based prompt for the keyword model."""
    clauses = []
    for label, words in CUES.items():
        kept = [w for w in words if rng.random() < 0.5] or [rng.choice(words)]
        target = label
        if rng.random() < swap:
            target = rng.choice([x for x in ("billing", "bug", "other") if x != label])
        clauses.append(f"{target}: {', '.join(kept)}")
    return "Classify the ticket as billing, bug or other. " + "; ".join(clauses)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--candidates", type=int, default=None, help="candidates (40; quick 4)")
    ap.add_argument("--gate-runs", type=int, default=1)
    ap.add_argument("--holdout", type=int, default=None, help="held-out runs of 8 tickets (10)")
    ap.add_argument("--swap", type=float, default=0.3, help="chance a rule's label is wrong")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 4 candidates, 2 held out")
    args = ap.parse_args(argv)
    args.candidates = args.candidates or (4 if args.quick else 40)
    args.holdout = args.holdout or (2 if args.quick else 10)

    tmp = common.scratch_dir("bench-gate-")
    common.prefect_env(tmp / "prefect", tmp / "warehouse.duckdb", level="ERROR")
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    import prefect_genopt as genopt
    from flows.examples.triage import TriageParams, triage
    from prefect_genopt.replay.gate import replay_gate
    from prefect_genopt.tunables import param_set_id

    rng = random.Random(args.seed)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=120):
        with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            stable = TriageParams()
            holdout_seeds = [10_000 + i for i in range(args.holdout)]
            stable_acc = statistics.mean(triage(n=8, seed=s) for s in holdout_seeds)
            recorded = args.candidates * args.gate_runs
            for i in range(recorded):  # production runs on stable: what the gate replays
                triage(n=8, seed=i)
            wh = genopt.Warehouse()
            run_ids = [
                r["run_id"]
                for r in wh.sql("SELECT run_id FROM runs WHERE arm = 'stable' ORDER BY start_time")
            ][-recorded:]
            for c in range(args.candidates):
                prompt = candidate_prompt(rng, args.swap)
                values = {**stable.values(), "prompt": prompt}
                with genopt.pinned_params(values, arm="offline"):
                    acc = statistics.mean(triage(n=8, seed=s) for s in holdout_seeds)
                mine = run_ids[c * args.gate_runs : (c + 1) * args.gate_runs]
                t0 = time.perf_counter()
                g = replay_gate(
                    "triage",
                    values,
                    kpi="correct",
                    stable_param_set_id=stable.param_set_id,
                    candidate_param_set_id=param_set_id(values),
                    tolerance=TOLERANCE,
                    exclude_run_ids=[r for r in run_ids if r not in mine],
                    runs=args.gate_runs,
                )
                gate_s = time.perf_counter() - t0
                worse = acc < stable_acc * (1 - TOLERANCE)
                rows.append(
                    {
                        "prompt": prompt,
                        "holdout_accuracy": acc,
                        "truly_worse": worse,
                        "gate": g.outcome,
                        "gate_effect": g.effect,
                        "gate_items": g.n_items,
                        "gate_llm_calls": g.llm_calls,
                        "gate_seconds": gate_s,
                    }
                )
                print(
                    f"{c + 1:3d}: held-out {acc:.3f} vs stable {stable_acc:.3f} "
                    f"({'worse' if worse else 'not worse'}); gate {g.outcome} on {g.n_items} "
                    f"items, {g.llm_calls} LLM calls",
                    flush=True,
                )
    worse = [r for r in rows if r["truly_worse"]]
    fine = [r for r in rows if not r["truly_worse"]]
    judged = [r for r in rows if r["gate"] != "skipped"]
    out = {
        "command": common.command_line("bench_gate", argv),
        "machine": common.machine_info(),
        "params": vars(args) | {"tolerance": TOLERANCE},
        "stable_holdout_accuracy": stable_acc,
        "candidates": len(rows),
        "truly_worse": len(worse),
        "stopped_among_worse": sum(r["gate"] == "stopped" for r in worse),
        "stopped_among_not_worse": sum(r["gate"] == "stopped" for r in fine),
        "skipped": len(rows) - len(judged),
        "llm_calls_per_gate_median": statistics.median(r["gate_llm_calls"] for r in rows),
        "gate_seconds_median": statistics.median(r["gate_seconds"] for r in rows),
        "wall_s": time.perf_counter() - t_start,
        "rows": rows,
    }
    common.write_results("bench_gate", out, quick=args.quick)
    print(
        f"\nstable held-out accuracy {stable_acc:.3f}; {len(worse)} of {len(rows)} candidates "
        f"truly worse (by > {TOLERANCE:.0%})"
    )
    print(f"stopped: {out['stopped_among_worse']} of {len(worse)} worse candidates")
    print(f"false stops: {out['stopped_among_not_worse']} of {len(fine)} not-worse candidates")
    print(
        f"LLM calls per gate: median {out['llm_calls_per_gate_median']} (one pipeline run = 8); "
        f"gate wall time median {out['gate_seconds_median']:.2f} s"
    )


if __name__ == "__main__":
    main()

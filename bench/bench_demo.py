"""Does the demo pipeline's KPI rise? The demo's night (the search) and canary, over seeds.

For each seed, as ``make demo`` does it (:mod:`flows.demo_night` holds the demo's plan): a
fresh warehouse; the triage example runs on 16-ticket batches (ticket seeds ``100·seed + i``)
on its stable param set until the night's pools are full (evidence 20, selection 32,
confirmation 80 labelled tickets); the good answers are harvested as experiences; one night
of the search runs (editable: ``prompt`` and ``demos``, night seed = seed) with
``GENOPT_MODEL``, else the embedded model. Recorded: the night's outcome, pools, calls, CPU
and wall time, the winner and its sign test on the confirmation tickets (wins, losses, ties,
p, the difference and its interval). A proposal then goes through the replay gate and a
canary with the demo's fast plan (16-ticket runs, ticket seeds ``1000 + 100·seed + i``, a
check after each), as the demo's step 7: the KPI of stable and of the candidate on the
canary's tickets, the decision, whether it was promoted. Last, the night's winner (when
there is one, confirmed or not) and stable run on the same 5 held-out batches of 16 tickets
(ticket seeds ``100·seed + 50..54``), pinned offline: a paired check free of the canary's
routing noise.

Results go to ``bench/results/demo_search.json``, one entry per seed, saved as each seed ends;
a seed already there is skipped (the run resumes). Each seed has its own Prefect API (test
harness) and routing state, so it starts from the example's own param set, never from the one
an earlier seed promoted (the benchmark checks it). ``bench/results/demo.json`` keeps the
earlier single-shot measurement (the KPI rose on 1 of 5 seeds).

    GENOPT_LOCAL_THREADS=1 python -m bench.bench_demo --seeds 0 1 2 3 4
    python -m bench.bench_demo --quick     # seed 0, small pools, the scripted optimizer

``--quick`` is a smoke run: pools of 8 / 16 / 25 tickets (at least 3 runs), the optimizer is
:func:`prefect_genopt.testing.scripted_optimizer` in mode ``rules`` instead of a real model,
a canary of at most 6 runs, 2 held-out batches; results go to the work directory (see
:mod:`bench.common`), never into demo_search.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from collections import Counter
from typing import Any

from bench import common
from bench.common import log, mean

#: the held-out batches per seed (16 tickets each)
HELD_OUT = 5


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _canary(seed: int, proposal_id: str, max_runs: int) -> dict[str, Any]:
    """The proposal through the replay gate and the demo's fast canary."""
    from flows.demo import canary_loop
    from prefect_genopt.rollout import FAST_PLAN
    from prefect_genopt.rollout.controller import GateStopped, abort, start_rollout

    try:
        start_rollout(
            "triage",
            proposal_id=proposal_id,
            plan={**FAST_PLAN, "kpi": "correct"},
            actor="bench_demo",
            reason="tonight's proposal",
        )
    except GateStopped as exc:
        return {"gate": "stopped", "gate_note": str(exc), "decision": "gate", "promoted": False}
    out = canary_loop(first_seed=1000 + seed * 100, max_runs=max_runs, say=log)
    if out.decision not in ("promote", "abort"):
        abort("triage", "no verdict in the benchmark: keep stable", actor="bench_demo")
    return {
        "gate": "passed",
        "decision": out.decision,
        "promoted": out.decision == "promote",
        "stable": out.stable,
        "stable_n": out.stable_n,
        "candidate": out.canary,
        "candidate_n": out.canary_n,
        "rise": out.rise(),
    }


def _held_out(seed: int, values: dict[str, Any], batches: int) -> dict[str, Any]:
    """Stable and ``values`` on the same held-out batches, pinned offline."""
    import prefect_genopt as genopt
    from flows.examples.triage import TriageParams, triage

    seeds = [seed * 100 + 50 + i for i in range(batches)]
    with genopt.pinned_params(TriageParams().model_dump(), arm="offline"):
        stable = [triage(n=16, seed=s) for s in seeds]
    with genopt.pinned_params(values, arm="offline"):
        candidate = [triage(n=16, seed=s) for s in seeds]
    return {"stable": stable, "candidate": candidate, "rise": mean(candidate) - mean(stable)}


def one_seed(
    seed: int,
    model: str | None,
    *,
    pools: dict[str, int] | None,
    min_runs: int | None,
    canary_runs: int,
    batches: int,
) -> dict[str, Any]:
    """One seed of the demo's loop (see the module docstring); its entry."""
    import prefect_genopt as genopt
    from flows import demo_night
    from flows.examples.triage import TriageParams
    from prefect_genopt.optimize import optimize
    from prefect_genopt.tunables import param_set_id

    home = common.scratch_dir(f"bench-demo-{seed}-")
    os.environ["GENOPT_WAREHOUSE"] = str(home / "warehouse.duckdb")
    t0 = time.perf_counter()
    before = demo_night.record_runs(seed * 100, say=log, pools=pools, min_runs=min_runs)
    ran = {
        r["param_set_id"] for r in genopt.Warehouse().sql("SELECT DISTINCT param_set_id FROM runs")
    }
    start = param_set_id(TriageParams().values())
    if ran != {start}:
        raise RuntimeError(f"seed {seed}: the runs used {sorted(ran)}, not the start {start}")
    harvested = genopt.harvest("triage", kpi="correct")
    log(f"{len(before)} runs in {time.perf_counter() - t0:.0f}s; {harvested}")
    settings = demo_night.night_settings(
        seed, **(pools or {}), **({"model": model} if model else {})
    )
    cpu0, wall0 = _cpu(), time.perf_counter()
    night = optimize(settings, progress=lambda m: log(f"  {m[:200]}"))
    entry: dict[str, Any] = {
        "seed": seed,
        "runs": len(before),
        "stable_param_set_id": start,
        "stable_accuracy": mean(before),
        "experiences": harvested.verified,
        "pools": {k: list(v) for k, v in night.pools.items()},
        "status": night.status,
        "stop_reason": night.stop_reason,
        "notes": night.notes,
        "proposal_id": night.proposal_id,
        "candidates": dict(sorted(Counter(c.generator for c in night.candidates).items())),
        "dropped": night.dropped,
        "task_calls": night.task_calls,
        "optimizer_calls": night.optimizer_calls,
        "night_cpu_s": round(_cpu() - cpu0, 1),
        "night_wall_s": round(time.perf_counter() - wall0, 1),
        "model": night.model,
        "settings": {k: getattr(settings, k) for k in sorted(demo_night.POOLS)},
    }
    if night.selection is not None:
        entry["selection"] = {
            cid: round(statistics.fmean(s.values()), 3)
            for cid, s in night.selection.scores.items()
            if s
        }
    if night.winner is not None:
        entry["winner"] = {
            "generator": night.winner.generator,
            "changed": list(night.winner.changed),
            "prompt": night.winner.values.get("prompt"),
            "demos": [
                [
                    d["input"].get("text") if isinstance(d["input"], dict) else d["input"],
                    d["output"],
                ]
                for d in night.winner.values.get("demos") or []
            ],
        }
    if night.confirmation is not None:
        entry["confirmation"] = night.confirmation.as_dict()
    if night.status == "proposed" and night.proposal_id:
        entry["canary"] = _canary(seed, night.proposal_id, canary_runs)
    if night.winner is not None:
        entry["held_out"] = _held_out(seed, night.winner.values, batches)
    return entry


def _row(r: dict[str, Any]) -> str:
    c = r.get("confirmation") or {}
    can = r.get("canary") or {}
    ho = r.get("held_out")
    conf = f"{c['wins']}/{c['losses']}/{c['ties']} p={c['p_value']:.2g}" if c else "(not confirmed)"
    canary = (
        f"{can['stable']:.3f} -> {can['candidate']:.3f} ({can['decision']})"
        if can.get("rise") is not None
        else can.get("decision", "no canary")
    )
    held = f"{mean(ho['stable']):.3f} -> {mean(ho['candidate']):.3f}" if ho else "-"
    return (
        f"{r['seed']} | {r['status']} | {(r.get('winner') or {}).get('generator', '-')} | "
        f"{conf} | {canary} | {held} | {r['night_wall_s']:.0f}"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 3 4")
    ap.add_argument(
        "--quick", action="store_true", help="seed 0, small pools, scripted optimizer (smoke)"
    )
    args = ap.parse_args(argv)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2, 3, 4])
    # every run reads the routing pointer afresh (as the demo does: it sees a promotion at once)
    common.prefect_env(GENOPT_ROUTING_TTL="0")
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    if args.quick:
        model = common.scripted_optimizer("rules")
        pools = {"evidence_items": 8, "selection_items": 16, "confirmation_items": 25}
        min_runs, canary_runs, batches = 3, 6, 2
    else:
        model, pools, min_runs, canary_runs, batches = None, None, None, 40, HELD_OUT
    results = common.results_path("demo_search", quick=args.quick)
    done = json.loads(results.read_text()) if results.exists() and not args.quick else {"runs": []}
    seen = {r["seed"] for r in done["runs"]}
    for seed in seeds:
        if seed in seen:
            continue
        log(f"seed {seed}")
        # a fresh Prefect API per seed: the routing pointer (which param set is stable) is a
        # Prefect Variable, and a seed must not start from the one an earlier seed promoted
        state = common.scratch_dir(f"bench-demo-state-{seed}-")
        os.environ["GENOPT_STATE_DIR"] = str(state)
        with prefect_test_harness(server_startup_timeout=180):
            with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                entry = one_seed(
                    seed,
                    model,
                    pools=pools,
                    min_runs=min_runs,
                    canary_runs=canary_runs,
                    batches=batches,
                )
        entry["machine"] = common.machine_info()
        done["runs"].append(entry)
        done["command"] = common.command_line("bench_demo", argv)
        common.save_json(results, done)
        log(f"seed {seed}: {_row(entry)}")
    print(
        "seed | night | winner | confirmation wins/losses/ties p | canary stable -> candidate "
        "| held-out stable -> candidate | night s"
    )
    for r in sorted(done["runs"], key=lambda r: r["seed"]):
        print(_row(r))
    rises = [
        (r.get("canary") or {}).get("rise") if (r.get("canary") or {}).get("promoted") else 0.0
        for r in done["runs"]
    ]
    rose = sum(1 for x in rises if x and x > 0)
    print(
        f"KPI rose on the canary (promoted, candidate above stable) on {rose} of "
        f"{len(rises)} seeds; median gain {statistics.median([x or 0.0 for x in rises]):+.3f}"
        if rises
        else "no seed measured"
    )


if __name__ == "__main__":
    main()

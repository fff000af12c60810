"""What routing costs: per item (``current_params(item_key=...)``) and per run.

    python -m bench.bench_routing [--items 20000] [--runs 30] [--quick]

**Per item.** Inside one real pipeline run (``prefect_test_harness()``, a real
local API), a loop calls ``genopt.current_params(item_key=k)`` for ``--items``
distinct keys, three ways side by side, interleaved in rounds so machine noise
hits all alike: *idle* (no rollout: the run's own params), *canary* (a rollout at
25%: hash of (rollout id, key), arm, params, span attributes), and *bare*
(``current_params()`` with no key: the floor). Reported: median microseconds per
call over the rounds, and the canary minus idle difference (what routing adds).

**Per run.** Each pipeline run reads the routing state once at its start (a
Prefect Variable; the param sets are cached after the first load). Timed: the
wall time of ``resolve_route`` with the pointer cache off (``GENOPT_ROUTING_TTL=0``,
one API read per run, through the client the process shares), the same read through a
client built for it (what every read cost before the shared client: the first read of a
process still does), and a cache hit; medians over ``--runs`` calls, interleaved; next
to it, the median wall time of a whole minimal pipeline run (one task) on this
machine, for scale.

Results go to ``bench/results/bench_routing.json`` (``--quick``: 2 rounds of 2000 items and
5 route reads, into the work directory).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from bench import common


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--items", type=int, default=None, help="items per round (20000; quick 2000)")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (7; quick 2)")
    ap.add_argument("--runs", type=int, default=None, help="route reads per kind (30; quick 5)")
    ap.add_argument("--quick", action="store_true", help="a smoke run (small counts)")
    args = ap.parse_args(argv)
    args.items = args.items or (2_000 if args.quick else 20_000)
    args.rounds = args.rounds or (2 if args.quick else 7)
    args.runs = args.runs or (5 if args.quick else 30)

    tmp = common.scratch_dir("bench-routing-")
    common.prefect_env(tmp / "prefect", tmp / "warehouse.duckdb", level="ERROR")

    import prefect.settings as ps
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    import prefect_genopt as genopt
    from prefect_genopt.rollout import state as sm
    from prefect_genopt.rollout import store
    from prefect_genopt.rollout.plan import RolloutPlan
    from prefect_genopt.rollout.router import resolve_route

    class P(genopt.Tunables):
        prompt: str = genopt.prompt("hello", description="a prompt")

    keys = [f"item-{i}" for i in range(args.items)]
    timings: dict[str, list[float]] = {"bare": [], "idle": [], "canary": []}

    def loop(kind: str) -> float:
        get = genopt.current_params
        t0 = time.perf_counter()
        if kind == "bare":
            for _ in keys:
                get()
        else:
            for k in keys:
                get(item_key=k)
        return (time.perf_counter() - t0) / len(keys) * 1e6

    @flow(name="bench-routing")
    @genopt.pipeline(name="bench-routing", params=P)
    def bench_flow(kind: str) -> float:
        return loop(kind)

    @genopt.task
    def one() -> int:
        return 1

    @flow(name="bench-routing-run")
    @genopt.pipeline(name="bench-routing-run", params=P)
    def tiny() -> int:
        return one()

    with prefect_test_harness(server_startup_timeout=120):
        with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            os.environ["GENOPT_ROUTING_TTL"] = "0"
            stable, canary = P(), P(prompt="hi there")
            store.save_param_set("bench-routing", stable.param_set_id, stable.values())
            store.save_param_set("bench-routing", canary.param_set_id, canary.values())
            running, _ = sm.start(
                sm.RoutingState(pipeline="bench-routing", stable=stable.param_set_id),
                "ro_bench",
                canary.param_set_id,
                RolloutPlan(kpi="ok", steps=[0.25, 0.5]),
                "now",
            )
            bench_flow("bare")  # warm-up
            for r in range(args.rounds):
                for kind in ("bare", "idle", "canary"):
                    current = store.read_state("bench-routing")
                    idle = sm.RoutingState(pipeline="bench-routing")
                    want = running if kind == "canary" else idle
                    if want.active != current.active:
                        nxt = want.model_copy(update={"revision": current.revision + 1})
                        store.write_state(nxt, current.revision)
                    timings[kind].append(bench_flow(kind))
                print(
                    f"round {r + 1}: "
                    + ", ".join(f"{k} {v[-1]:.2f} us" for k, v in timings.items()),
                    flush=True,
                )

            # per run: one Variable read (through the process's shared client, or through
            # a client built for the read, as before 6390681), or a cache hit
            reads: dict[str, list[float]] = {
                "api read (ttl 0)": [],
                "api read, new client per read (before)": [],
                "cache hit (ttl 5 s)": [],
            }
            for _ in range(args.runs):
                os.environ["GENOPT_ROUTING_TTL"] = "0"
                t0 = time.perf_counter()
                resolve_route("bench-routing", P)
                reads["api read (ttl 0)"].append((time.perf_counter() - t0) * 1e3)
                store._close_reader()
                t0 = time.perf_counter()
                resolve_route("bench-routing", P)
                reads["api read, new client per read (before)"].append(
                    (time.perf_counter() - t0) * 1e3
                )
                os.environ["GENOPT_ROUTING_TTL"] = "5"
                resolve_route("bench-routing", P)
                t0 = time.perf_counter()
                resolve_route("bench-routing", P)
                reads["cache hit (ttl 5 s)"].append((time.perf_counter() - t0) * 1e3)
            runs = []
            for _ in range(max(5, args.runs // 3)):
                t0 = time.perf_counter()
                tiny()
                runs.append((time.perf_counter() - t0) * 1e3)

    med = {k: statistics.median(v) for k, v in timings.items()}
    out: dict[str, Any] = {
        "command": common.command_line("bench_routing", argv),
        "machine": common.machine_info(),
        "items_per_round": args.items,
        "rounds": args.rounds,
        "per_item_us": {k: v for k, v in timings.items()},
        "per_item_us_median": med,
        "routing_adds_us": med["canary"] - med["idle"],
        "per_run_ms": {k: v for k, v in reads.items()},
        "per_run_ms_median": {k: statistics.median(v) for k, v in reads.items()},
        "minimal_pipeline_run_ms_median": statistics.median(runs),
    }
    common.write_results("bench_routing", out, quick=args.quick)
    print("\n| per item | median us/call |\n|---|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.2f} |")
    print(f"\nrouting adds {out['routing_adds_us']:.2f} us per item (target <= 1000 us)")
    print("\n| per run | median ms |\n|---|---:|")
    for k, v in out["per_run_ms_median"].items():
        print(f"| {k} | {v:.2f} |")
    print(
        f"| a whole minimal pipeline run (1 task) | {out['minimal_pipeline_run_ms_median']:.1f} |"
    )


if __name__ == "__main__":
    main()

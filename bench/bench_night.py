"""What one night of the search costs: CPU and wall time, calls, and what it decided.

    python -m bench.bench_night            # default pools (30/48/150 items), embedded model
    python -m bench.bench_night --quick    # small pools, the scripted optimizer (smoke)

A fresh warehouse; the triage example (``flows/examples/triage.py``: a one-step pipeline whose
task model is the deterministic keyword stand-in) runs enough 16-ticket batches on its stable
prompt to fill the evidence, selection and confirmation pools; then one night runs
(``OptimizerSettings(search=True)``, editable: prompt) with the optimizer model of
``GENOPT_MODEL``, else the embedded model (Qwen2.5-Coder-1.5B, in-process). Reported: the
night's CPU seconds of this process (user + system, ``resource.getrusage``: the embedded model
runs in-process, and so do the replays), its wall time, task and optimizer calls, the pools it
got, and its outcome (``proposed`` / ``not_better`` / ``no_proposal``) with the sign test.

Target (issue 14): a night on a 2-core machine with the embedded model, for a one-step pipeline
with the default pools, fits in 30 minutes of CPU. Results go to
``bench/results/bench_night.json`` (``--quick``: the work directory).
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Any

from bench import common
from bench.common import log

TARGET_CPU_MIN = 30.0


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def night(batches: int, pools: dict[str, int], model: str | None) -> dict[str, Any]:
    """Seed ``batches`` runs of the triage example, then run one night; its figures."""
    from flows.examples.triage import triage
    from prefect_genopt.optimize import OptimizerSettings, optimize

    home = common.scratch_dir("bench-night-")
    os.environ["GENOPT_WAREHOUSE"] = str(home / "warehouse.duckdb")
    t0 = time.perf_counter()
    accuracy = [triage(n=16, seed=s) for s in range(batches)]
    log(f"{batches} runs of 16 tickets in {time.perf_counter() - t0:.1f}s")
    settings = OptimizerSettings(
        pipeline="triage",
        starting_artifact={"editable": ["prompt"]},
        **pools,
        **({"model": model} if model else {}),
    )
    cpu0, wall0 = _cpu(), time.perf_counter()
    result = optimize(settings, progress=lambda m: log(f"  {m[:200]}"))
    cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
    out: dict[str, Any] = {
        "batches": batches,
        "stable_accuracy": common.mean(accuracy),
        "settings": settings.recorded(),
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
        "model": result.model,
        "status": getattr(result, "status", None),
        "summary": result.summary() if hasattr(result, "summary") else None,
        "pools": {k: list(v) for k, v in getattr(result, "pools", {}).items()},
        "task_calls": getattr(result, "task_calls", None),
        "optimizer_calls": getattr(result, "optimizer_calls", None),
        "dropped": getattr(result, "dropped", None),
        "needed_items": getattr(result, "needed_items", None),
    }
    confirmation = getattr(result, "confirmation", None)
    if confirmation is not None:
        out["confirmation"] = confirmation.as_dict()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batches", type=int, default=16, help="16-ticket runs to seed (default 16)")
    ap.add_argument("--quick", action="store_true", help="small pools, scripted optimizer")
    args = ap.parse_args(argv)
    common.prefect_env()
    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    if args.quick:
        batches, model = 6, common.scripted_optimizer("rules")
        pools = {"evidence_items": 16, "selection_items": 16, "confirmation_items": 40}
    else:
        batches, model, pools = args.batches, None, {}
    with prefect_test_harness(server_startup_timeout=180):
        with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            out = night(batches, pools, model)
    out["command"] = common.command_line("bench_night", argv)
    out["machine"] = common.machine_info()
    out["library"] = common.library_state()
    minutes = out["cpu_s"] / 60
    verdict = "within" if minutes <= TARGET_CPU_MIN else "OVER"
    print(
        f"\nnight: {out['status']}; {out['cpu_s']:.0f} CPU s ({minutes:.1f} min, {verdict} the "
        f"{TARGET_CPU_MIN:g}-minute target), {out['wall_s']:.0f} s wall; task calls "
        f"{out['task_calls']}, optimizer calls {out['optimizer_calls']}; pools {out['pools']}"
    )
    if out.get("summary"):
        print(out["summary"])
    common.write_results("bench_night", out, quick=args.quick)


if __name__ == "__main__":
    main()

"""The end-to-end demo: run the example pipeline, give feedback, query the warehouse.

    make demo            (or: python -m flows.demo)

It uses a fresh demo home (``.demo/`` in the project; set ``GENOPT_DEMO_HOME``
to move it) holding the Prefect database and the trace warehouse, and runs
against a local Prefect API: the one in ``PREFECT_API_URL`` if you set it
(e.g. ``prefect server start``), else one Prefect starts embedded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOME = Path(os.environ.get("GENOPT_DEMO_HOME") or ROOT / ".demo").resolve()


def _setup_env() -> None:
    if HOME.exists():
        shutil.rmtree(HOME)
    HOME.mkdir(parents=True)
    os.environ.setdefault("PREFECT_HOME", str(HOME / "prefect"))
    os.environ["GENOPT_WAREHOUSE"] = str(HOME / "warehouse.duckdb")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def genopt_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the real `genopt` command (as a user would) and echo it."""
    print(f"$ genopt {' '.join(a if ' ' not in a else repr(a) for a in args)}", flush=True)
    proc = subprocess.run(
        [sys.executable, "-m", "prefect_genopt.cli", *args], text=True, capture_output=True
    )
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if check and proc.returncode != 0:
        raise SystemExit(f"genopt {args[0]} failed with exit code {proc.returncode}")
    return proc


def main() -> None:
    _setup_env()
    t0 = time.monotonic()
    step("1. Run the example pipeline 5 times (flows/examples/triage.py)")
    print(f"demo home: {HOME}")
    print("starting a local Prefect API (embedded) on first run; this takes a few seconds...")
    import prefect.settings as ps

    from flows.examples.triage import model, triage

    print(f"model: {model()}  (set GENOPT_DEMO_MODEL to any litellm model string)")
    with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for seed in range(5):
            acc = triage(n=8, seed=seed)
            print(f"  run {seed + 1}/5: accuracy {acc:.2f}", flush=True)

    import prefect_genopt as genopt

    wh = genopt.Warehouse()
    last = wh.sql("SELECT run_id FROM runs ORDER BY start_time DESC LIMIT 1")[0]["run_id"]

    step("2. A person rates the last run later, from the shell")
    genopt_cli(
        "feedback",
        last,
        "csat",
        "4",
        "--comment",
        "fast but one refund misrouted",
        "--source",
        "support-lead",
        "--idempotency-key",
        "csat-review-1",
    )
    genopt_cli(
        "feedback",
        last,
        "csat",
        "4",
        "--source",
        "support-lead",
        "--idempotency-key",
        "csat-review-1",
    )
    print("(the same idempotency key again: still one row)")
    step("3. Bad feedback gets a clear error")
    genopt_cli("feedback", last, "csat", "nan", check=False)
    genopt_cli("feedback", "00000000-0000-0000-0000-000000000000", "csat", "3", check=False)

    step("4. What the warehouse holds")
    genopt_cli(
        "sql",
        "SELECT run_id, status, round(duration_s, 2) AS secs, tasks, llm_calls, "
        "llm_tokens, kpis FROM run_summary ORDER BY start_time",
    )
    genopt_cli("sql", "SELECT * FROM kpi_by_param_set_day ORDER BY kpi")
    genopt_cli("sql", "SELECT * FROM llm_usage")
    genopt_cli(
        "sql",
        "SELECT s.run_type, s.name, s.item_key, s.output, "
        "round(s.duration_ms, 1) AS ms FROM spans s "
        f"WHERE s.run_id = '{last}' AND s.run_type IN ('flow', 'task', 'llm') "
        "ORDER BY s.start_time LIMIT 7",
    )
    genopt_cli(
        "sql", "SELECT item_key, comment FROM feedback WHERE kpi = 'correct' AND value = 0 LIMIT 3"
    )
    genopt_cli("status")
    print(f"\nwarehouse file: {os.environ['GENOPT_WAREHOUSE']}  (open it with `duckdb` too)")
    print(f"demo finished in {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()

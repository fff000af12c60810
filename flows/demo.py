"""The end-to-end demo: pipeline runs with feedback -> the optimizer -> a checked proposal.

    make demo            (or: python -m flows.demo)

1. the example pipeline (flows/examples/triage.py) runs 5 times and scores itself;
2. a person adds feedback from the shell; bad feedback gets clear errors;
3. the warehouse answers SQL;
4. the optimizer flow runs now (as its nightly deployment would) with GENOPT_MODEL, else
   the embedded local model, and proposes a new prompt;
5. the candidate is run offline on the same tickets next to the stable prompt.

``GENOPT_DEMO_SEED`` (default 0) picks the tickets and the optimizer's minibatches.

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


def genopt_cli(
    *args: str, check: bool = True, stream: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the real `genopt` command (as a user would) and echo it.

    ``stream`` lets a long command print its progress as it goes."""
    print(f"$ genopt {' '.join(a if ' ' not in a else repr(a) for a in args)}", flush=True)
    cmd = [sys.executable, "-m", "prefect_genopt.cli", *args]
    if stream:
        proc = subprocess.run(cmd, text=True)
    else:
        proc = subprocess.run(cmd, text=True, capture_output=True)
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
    demo_seed = int(os.environ.get("GENOPT_DEMO_SEED", "0"))
    seeds = [demo_seed * 100 + i for i in range(5)]
    with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        before = []
        for i, seed in enumerate(seeds):
            acc = triage(n=8, seed=seed)
            before.append(acc)
            print(f"  run {i + 1}/5: accuracy {acc:.2f}", flush=True)

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

    step("5. The nightly optimizer, run now (flows/optimize.py; deployed by deployments/)")
    from prefect_genopt import local_model

    print(
        f"optimizer model: {os.environ.get('GENOPT_MODEL') or local_model.MODEL}"
        "  (set GENOPT_MODEL to any litellm model string)"
    )
    genopt_cli(
        "optimize",
        "triage",
        "--editable",
        "prompt",
        "--max-updates",
        "3",
        "--seed",
        str(demo_seed),
        stream=True,
    )
    step("6. Next morning: the proposals")
    genopt_cli("proposals", "triage")
    rows = wh.sql(
        "SELECT proposal_id, candidate_param_set_id FROM proposals "
        "WHERE pipeline = 'triage' AND status = 'proposed' ORDER BY created_at DESC LIMIT 1"
    )
    if not rows:
        print("no valid proposal this time (see the reasons above); nothing to check")
    else:
        genopt_cli("proposals", "show", rows[0]["proposal_id"])
        step("7. The candidate, checked offline on the same tickets (a canary comes next)")
        import orjson

        from prefect_genopt.pipeline import pinned_params

        values = orjson.loads(
            wh.sql(
                'SELECT "values" FROM param_sets WHERE param_set_id = ?',
                [rows[0]["candidate_param_set_id"]],
            )[0]["values"]
        )
        after = []
        with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            with pinned_params(values, arm="offline"):
                for seed in seeds:
                    after.append(triage(n=8, seed=seed))
        mean_b, mean_a = sum(before) / len(before), sum(after) / len(after)
        print(
            f"accuracy, stable prompt:    {' '.join(f'{a:.2f}' for a in before)}  mean {mean_b:.3f}"
        )
        print(
            f"accuracy, candidate prompt: {' '.join(f'{a:.2f}' for a in after)}  mean {mean_a:.3f}"
        )
        verdict = "better" if mean_a > mean_b else ("no better" if mean_a == mean_b else "worse")
        print(f"the candidate is {verdict} on these tickets ({mean_a - mean_b:+.3f})")
        genopt_cli(
            "sql",
            "SELECT arm, param_set_id, round(avg(value), 3) AS accuracy, count(*) AS runs "
            "FROM feedback WHERE kpi = 'accuracy' GROUP BY ALL ORDER BY arm DESC",
        )
    print(f"\nwarehouse file: {os.environ['GENOPT_WAREHOUSE']}  (open it with `duckdb` too)")
    print(f"demo finished in {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()

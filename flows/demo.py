"""The end-to-end demo: pipeline runs with feedback -> the nightly search -> a canary.

    make demo            (or: python -m flows.demo)

1. the example pipeline (flows/examples/triage.py) runs on 16-ticket batches until the
   night's pools are full (:mod:`flows.demo_night`: evidence 20, selection 32 and
   confirmation 80 labelled tickets) and scores itself;
2. a person adds feedback from the shell; bad feedback gets clear errors;
3. the warehouse answers SQL;
4. the optimizer flow runs now (as its nightly deployment would) with GENOPT_MODEL, else
   the embedded local model: the search. It keeps the good answers as experiences,
   drafts new prompts, draws balanced demo sets from the experiences, chooses one by
   replaying recorded runs, and proposes it only when a sign test on the confirmation
   tickets says it beats the stable prompt;
5. the proposal goes out behind a canary: each ticket of later runs goes to the stable or
   the candidate param set by a stable hash, and a check after each run advances, promotes,
   rolls back or pauses it (a fast demo plan: few tickets, big effects only); a rollout
   left without a verdict is a person's call: the demo aborts it and keeps stable;
6. a deliberately bad hand-written prompt is stopped by the replay gate (the candidate
   re-run offline on a recorded run, before any real ticket), then, with the gate off,
   rolled back by the canary; if the proposal was not promoted, a good hand-written one
   is; then the record and the kill switch;
7. good answers become experiences (``genopt experiences harvest``), and the same tickets
   again are answered by verified replay instead of model calls.

``GENOPT_DEMO_SEED`` (default 0) picks the tickets and the night's seed.

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

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
    # Prefect waits 20 s for its embedded API to start: too little on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ["GENOPT_ROUTING_TTL"] = "0"  # see rollout changes made by the CLI at once


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


#: a hand-written prompt with the labels' cue words swapped (a deliberately bad candidate)
BAD_PROMPT = (
    "Route tickets. other: invoice, refund, charged, payment, bill; billing: crash, error, "
    "broken, freezes, login; bug: dark mode, invite, thanks, student, roadmap"
)
#: a hand-written prompt with good rules (what a support lead might write)
GOOD_PROMPT = (
    "Classify the ticket as billing, bug or other. Answer with the label only. "
    "billing: invoice, refund, charged, payment, bill, declined; "
    "bug: crash, error, broken, freezes, login"
)


def wh_now() -> Any:
    """A fresh warehouse reader (it loads what arrived since the last one)."""
    import prefect_genopt as genopt

    return genopt.Warehouse()


@dataclass
class CanaryOutcome:
    """How a canary ended: the last decision, and the KPI per arm at the last check that
    had values on both arms (None before)."""

    decision: str = "none"
    stable: float | None = None
    stable_n: int = 0
    canary: float | None = None
    canary_n: int = 0

    def rise(self) -> float | None:
        """The candidate's KPI minus stable's on the canary (None without both)."""
        if self.stable is None or self.canary is None:
            return None
        return self.canary - self.stable


def canary_loop(
    first_seed: int, max_runs: int = 40, say: Callable[[str], None] = print
) -> CanaryOutcome:
    """Pipeline runs with a canary check after each (what the genopt-canary deployment
    does every 10 minutes), until the rollout is promoted, rolled back or paused."""
    import prefect.settings as ps

    from flows.examples.triage import triage
    from prefect_genopt.rollout.controller import analyze

    out = CanaryOutcome()
    with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for i in range(max_runs):
            acc = triage(n=16, seed=first_seed + i)
            result = analyze("triage", actor="demo canary check")
            out.decision = result.decision.kind
            a = result.assessment
            arms = "waiting for values"
            if a and a.stable.n and a.canary.n:
                out.stable, out.stable_n = a.stable.mean, a.stable.n
                out.canary, out.canary_n = a.canary.mean, a.canary.n
                arms = f"stable {a.stable.mean:.2f} (n={a.stable.n}), canary {a.canary.mean:.2f} "
                arms += f"(n={a.canary.n})"
            say(
                f"  run {i + 1}: accuracy {acc:.2f}; weight {result.state.weight:.0%} -> "
                f"{out.decision}; correct: {arms}"
            )
            if out.decision in ("promote", "abort", "pause"):
                say(f"  => {out.decision}: {result.decision.reason}")
                break
    return out


def settle(outcome: CanaryOutcome) -> str:
    """A rollout the canary left without a verdict (paused as inconclusive, or still
    running when the demo's runs are up) is a person's call: the demo keeps stable."""
    decision = outcome.decision
    if decision not in ("promote", "abort"):
        print("  no verdict: the candidate is neither shown better nor shown worse within the")
        print("  demo's few tickets; a person decides. Here: keep stable.")
        genopt_cli("rollout", "abort", "triage", "--reason", "no verdict in the demo: keep stable")
    return decision


def start_rollout(*args: str) -> bool:
    """`genopt rollout start ...`: True when the canary started, False when the replay
    gate stopped the candidate; any other failure ends the demo."""
    from prefect_genopt.cli import EXIT_GATE_STOPPED

    proc = genopt_cli(
        "rollout", "start", "triage", "--fast", "--kpi", "correct", *args, check=False
    )
    if proc.returncode not in (0, EXIT_GATE_STOPPED):
        raise SystemExit(f"genopt rollout start failed with exit code {proc.returncode}")
    return proc.returncode == 0


def main() -> None:
    _setup_env()
    t0 = time.monotonic()
    step("1. Run the example pipeline (flows/examples/triage.py) until the night's pools are full")
    print(f"demo home: {HOME}")
    print("starting a local Prefect API (embedded) on first run; this takes a few seconds...")
    import prefect.settings as ps

    from flows import demo_night
    from flows.examples.triage import model, triage

    print(f"model: {model()}  (set GENOPT_DEMO_MODEL to any litellm model string)")
    print(
        f"{demo_night.TICKETS_PER_RUN} tickets a run; the night's pools (labelled tickets): "
        + ", ".join(f"{k.split('_')[0]} {v}" for k, v in demo_night.POOLS.items())
    )
    demo_seed = int(os.environ.get("GENOPT_DEMO_SEED", "0"))
    with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        demo_night.record_runs(demo_seed * 100, say=lambda m: print(m, flush=True))

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
    print(
        "the search: keep good answers as experiences, draft prompts, draw demo sets, choose "
        "one by replaying recorded runs, confirm it with a sign test"
    )
    genopt_cli("optimize", "triage", *demo_night.night_options(demo_seed), stream=True)
    step("6. Next morning: the proposals")
    genopt_cli("proposals", "triage")
    rows = wh_now().sql(
        "SELECT proposal_id, status FROM proposals "
        "WHERE pipeline = 'triage' ORDER BY created_at DESC LIMIT 1"
    )
    promoted = False
    if rows:
        genopt_cli("proposals", "show", rows[0]["proposal_id"])
    if not rows or rows[0]["status"] != "proposed":
        print("the night confirmed no candidate (its numbers are above); no canary for it")
    else:
        step(
            "7. The proposal: replayed offline on a recorded run (the replay gate), then "
            "behind a canary (fast demo plan: 30% -> 50% -> 100%)"
        )
        if start_rollout("--proposal", rows[0]["proposal_id"], "--reason", "tonight's proposal"):
            outcome = canary_loop(first_seed=1000 + demo_seed * 100)
            promoted = settle(outcome) == "promote"
            if outcome.rise() is not None:
                print(
                    f"  the KPI on the canary: stable {outcome.stable:.2f} "
                    f"(n={outcome.stable_n}) -> candidate {outcome.canary:.2f} "
                    f"(n={outcome.canary_n}), {outcome.rise():+.2f}"
                )
        else:
            print("the replay gate stopped it: no real ticket saw it")

    step("8. Two more production runs, then a person's prompt with the cue words swapped")
    with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for i in range(2):  # recorded runs on today's stable param set, for the replay gate
            print(f"  run {i + 1}: accuracy {triage(n=8, seed=1500 + demo_seed * 100 + i):.2f}")
    bad = HOME / "bad-candidate.json"
    bad.write_text(orjson.dumps({"prompt": BAD_PROMPT}).decode())
    print(f"{bad.name}: {bad.read_text()}")
    if not start_rollout("--params", str(bad), "--reason", "a person's idea"):
        print(
            "the replay gate stopped it. With the gate off, the canary catches it on real traffic:"
        )
        start_rollout("--params", str(bad), "--reason", "a person's idea, gate off", "--no-gate")
    settle(canary_loop(first_seed=2000 + demo_seed * 100))

    if not promoted:
        step("9. A good hand-written prompt instead (what a support lead might write)")
        good = HOME / "good-candidate.json"
        good.write_text(orjson.dumps({"prompt": GOOD_PROMPT}).decode())
        print(f"{good.name}: {good.read_text()}")
        if start_rollout("--params", str(good), "--reason", "rules from the support lead"):
            settle(canary_loop(first_seed=3000 + demo_seed * 100))
        else:
            print("the replay gate stopped it: no real ticket saw it")

    step("10. The record: every check and decision, and the kill switch")
    genopt_cli("rollout", "status", "triage")
    genopt_cli(
        "sql",
        "SELECT rollout_id, status, canary_param_set_id AS canary, proposal_id, reason "
        "FROM rollouts ORDER BY created_at",
    )
    genopt_cli(
        "sql",
        "SELECT created_at, kind, round(weight, 2) AS weight, actor, reason FROM rollout_events "
        "WHERE kind NOT IN ('continue') ORDER BY created_at",
    )
    genopt_cli(
        "sql",
        "SELECT step, verdict, decision, n_stable, n_canary, round(mean_stable, 3) AS stable, "
        "round(mean_canary, 3) AS canary FROM rollout_analyses ORDER BY created_at DESC LIMIT 6",
    )
    genopt_cli(
        "sql",
        "SELECT outcome, n_items, round(stable_mean, 3) AS stable, round(candidate_mean, 3) "
        "AS candidate, llm_calls, proposal_id FROM replay_gates ORDER BY created_at",
    )
    stable = wh_now().sql("SELECT stable_param_set_id FROM rollouts ORDER BY created_at LIMIT 1")[
        0
    ]["stable_param_set_id"]
    genopt_cli("rollout", "pin", "triage", stable, "--reason", "demo: the kill switch")
    genopt_cli("rollout", "unpin", "triage", "--reason", "demo over")
    step("11. Experiences: verified answers replayed instead of calling the model again")
    from prefect_genopt.replay import steps as replay_steps

    recurring = 4000 + demo_seed * 100
    print(f"  a batch of tickets: accuracy {triage(n=16, seed=recurring):.2f}")
    genopt_cli("experiences", "harvest", "triage", "--kpi", "correct")
    replay_steps.clear_cache()
    replay_steps.reset_stats()
    print(f"  the same tickets again: accuracy {triage(n=16, seed=recurring):.2f}")
    counts = replay_steps.stats()
    print(
        f"  classify replayed {counts.get('replayed', 0)} verified answers and called the model "
        f"{counts.get('computed', 0)} times (tickets it had got wrong have no experience)"
    )
    genopt_cli(
        "sql",
        "SELECT attributes->>'genopt.replay' AS replay, count(*) AS n FROM spans "
        "WHERE task_name = 'classify' AND attributes->>'genopt.replay' IS NOT NULL "
        "GROUP BY ALL ORDER BY n DESC LIMIT 5",
    )
    print(f"\nwarehouse file: {os.environ['GENOPT_WAREHOUSE']}  (open it with `duckdb` too)")
    print(f"demo finished in {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()

"""A seeded warehouse for the report's tests: the real record builders and ingester.

Spans are built by :func:`prefect_genopt.records.span_record` (as the tracing exporter
builds them: an LLM span's messages and completion move to its inputs and output),
feedback and optimizer/rollout rows as genopt's own spool records, then loaded by the
ingester into a real DuckDB file. Runs spread over ``days`` days before now, on three
param sets: the stable one, a candidate that was promoted and one that was rejected.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect_genopt import spool
from prefect_genopt.records import row_record, span_record
from prefect_genopt.warehouse import Warehouse

PIPELINE = "triage"
SCHEMA = json.dumps(
    {
        "properties": {"prompt": {"type": "string", "genopt_kind": "prompt"}},
        "title": "TriageParams",
        "type": "object",
    }
)
LABELS = ("billing", "bug", "other")


@dataclass
class Seeded:
    """What was seeded, for tests to compare the report with."""

    path: Path
    run_ids: list[str] = field(default_factory=list)
    param_sets: dict[str, str] = field(default_factory=dict)  # role -> param_set_id
    proposal_ids: list[str] = field(default_factory=list)
    rollout_id: str = ""
    night_id: str = ""


def _hex(rng: random.Random, n: int) -> str:
    return rng.getrandbits(n * 8).to_bytes(n, "big").hex()


def _ns(t: datetime) -> int:
    return int(t.replace(tzinfo=UTC).timestamp() * 1e9)


def _ps_id(values: dict[str, Any]) -> str:
    canon = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return "ps_" + hashlib.sha256(canon.encode()).hexdigest()[:16]


def _span(trace_id: str, **kw: Any) -> dict[str, Any]:
    return span_record(trace_id=trace_id, events=[], resource={}, source="spool", limit=4096, **kw)


def _run(
    rng: random.Random, start: datetime, values: dict[str, Any], arm: str, n_items: int
) -> tuple[str, list[dict[str, Any]]]:
    """One run: Prefect's flow span, genopt's run start/end, a task per item with an LLM
    call under it, and a KPI value per item."""
    run_id, trace_id = str(uuid.UUID(int=rng.getrandbits(128))), _hex(rng, 16)
    flow_span = _hex(rng, 8)
    ps = _ps_id(values)
    common = {
        "genopt.run_id": run_id,
        "genopt.pipeline": PIPELINE,
        "genopt.param_set_id": ps,
        "genopt.arm": arm,
    }
    t0 = _ns(start)
    recs = [
        _span(
            trace_id,
            span_id=_hex(rng, 8),
            parent_span_id=flow_span,
            name="genopt.run.start",
            span_kind="INTERNAL",
            start_ns=t0,
            end_ns=t0 + 10_000,
            status="UNSET",
            status_message=None,
            attributes={
                **common,
                "genopt.inputs": json.dumps({"n": n_items}),
                "genopt.params": json.dumps(values, sort_keys=True, separators=(",", ":")),
                "genopt.schema": SCHEMA,
                "genopt.schema_hash": hashlib.sha256(SCHEMA.encode()).hexdigest()[:16],
                "genopt.flow_name": PIPELINE,
            },
        )
    ]
    t = t0 + 1_000_000
    good = 0.85 if "step by step" in values["prompt"] else 0.6
    for i in range(n_items):
        task_span, item = _hex(rng, 8), f"T-{rng.randint(0, 9999):04d}"
        label = rng.choice(LABELS)
        answer = label if rng.random() < good else "other"
        llm_ms = rng.randint(80, 400)
        recs.append(
            _span(
                trace_id,
                span_id=_hex(rng, 8),
                parent_span_id=task_span,
                name="chat scripted/triage",
                span_kind="CLIENT",
                start_ns=t + 500_000,
                end_ns=t + 500_000 + llm_ms * 1_000_000,
                status="OK",
                status_message=None,
                attributes={
                    **common,
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "scripted/triage",
                    "gen_ai.provider.name": "scripted",
                    "gen_ai.prompt": json.dumps(
                        [
                            {"role": "system", "content": values["prompt"]},
                            {"role": "user", "content": f"ticket {item}: my {label} problem"},
                        ]
                    ),
                    "gen_ai.completion": json.dumps([answer]),
                    "gen_ai.usage.input_tokens": rng.randint(40, 90),
                    "gen_ai.usage.output_tokens": 1,
                    "gen_ai.usage.cost": 0.00002,
                },
            )
        )
        recs.append(
            _span(
                trace_id,
                span_id=task_span,
                parent_span_id=flow_span,
                name=f"classify-{i}",
                span_kind="INTERNAL",
                start_ns=t,
                end_ns=t + (llm_ms + 2) * 1_000_000,
                status="OK",
                status_message=None,
                attributes={
                    **common,
                    "prefect.run.type": "task",
                    "genopt.task": "classify",
                    "genopt.item_key": item,
                    "genopt.inputs": json.dumps({"ticket": f"ticket {item}: my {label} problem"}),
                    "genopt.output": json.dumps(answer),
                    "genopt.params_read": json.dumps({"prompt": values["prompt"]}),
                },
            )
        )
        recs.append(
            {
                "k": "feedback",
                "feedback_id": uuid.UUID(int=rng.getrandbits(128)).hex,
                "run_id": run_id,
                "kpi": "accuracy",
                "value": 1.0 if answer == label else 0.0,
                "comment": None,
                "item_key": item,
                "source": "code",
                "idempotency_key": f"accuracy|{item}",
                "created_ns": t + (llm_ms + 5) * 1_000_000,
                "verified": True,
                "pipeline": None,
                "param_set_id": None,
                "arm": None,
            }
        )
        t += (llm_ms + 10) * 1_000_000
    recs.append(
        _span(
            trace_id,
            span_id=_hex(rng, 8),
            parent_span_id=flow_span,
            name="genopt.run.end",
            span_kind="INTERNAL",
            start_ns=t,
            end_ns=t + 10_000,
            status="UNSET",
            status_message=None,
            attributes={
                "genopt.run_id": run_id,
                "genopt.pipeline": PIPELINE,
                "genopt.status": "completed",
            },
        )
    )
    recs.append(
        _span(
            trace_id,
            span_id=flow_span,
            parent_span_id=None,
            name="triage",
            span_kind="INTERNAL",
            start_ns=t0 - 100_000,
            end_ns=t + 20_000,
            status="OK",
            status_message=None,
            attributes={
                **common,
                "prefect.run.type": "flow",
                "prefect.run.id": run_id,
                "genopt.inputs": json.dumps({"n": n_items}),
            },
        )
    )
    return run_id, recs


def seed(path: Path, *, days: int = 10, runs_per_day: int = 3, items: int = 4) -> Seeded:
    """Write and ingest the seeded warehouse at ``path``; returns what it holds."""
    rng = random.Random(16)
    now = datetime.now(UTC).replace(tzinfo=None)
    stable = {"prompt": "Classify the ticket as billing, bug or other."}
    better = {"prompt": "Classify the ticket as billing, bug or other. Think step by step."}
    worse = {"prompt": "Label it."}
    out = Seeded(path)
    out.param_sets = {
        "stable": _ps_id(stable),
        "promoted": _ps_id(better),
        "rejected": _ps_id(worse),
    }
    start_day = now - timedelta(days=days)
    promoted_at = start_day + timedelta(days=days * 0.6)
    records: list[dict[str, Any]] = []
    for d in range(days):
        for r in range(runs_per_day):
            at = start_day + timedelta(days=d, hours=2 + 6 * r)
            if at >= now - timedelta(minutes=5):
                continue
            # a canary for two days before the promotion, then the candidate is stable
            in_canary = promoted_at - timedelta(days=2) <= at < promoted_at
            if at >= promoted_at:
                values, arm = better, "stable"
            elif in_canary and r % 2:
                values, arm = better, "canary"
            else:
                values, arm = stable, "stable"
            run_id, recs = _run(rng, at, values, arm, items)
            out.run_ids.append(run_id)
            records += recs
    records += _optimizer_rows(out, rng, start_day, promoted_at)
    spool.append(records, path.with_name(path.name + ".spool"))
    wh = Warehouse(path, spool_dir=path.with_name(path.name + ".spool"))
    wh.ingest()
    return out


def _iso(t: datetime) -> str:
    return t.isoformat()


def _optimizer_rows(
    out: Seeded, rng: random.Random, start_day: datetime, promoted_at: datetime
) -> list[dict[str, Any]]:
    """A night that proposed the promoted candidate, its rollout with checks and a
    promotion, a pin, and a rejected proposal with its replay gate and rating."""
    ps = out.param_sets
    night_at = promoted_at - timedelta(days=2, hours=3)
    good, bad = uuid.UUID(int=rng.getrandbits(128)).hex, uuid.UUID(int=rng.getrandbits(128)).hex
    out.proposal_ids = [good, bad]
    out.night_id = night = "night-" + _hex(rng, 4)
    out.rollout_id = rollout = "ro-" + _hex(rng, 4)
    rows = [
        row_record(
            "proposals",
            {
                "proposal_id": good,
                "pipeline": PIPELINE,
                "created_at": _iso(night_at),
                "status": "promoted",
                "status_at": _iso(promoted_at),
                "optimizer": "search",
                "parent_param_set_id": ps["stable"],
                "candidate_param_set_id": ps["promoted"],
                "diff": {"prompt": {"from": "Classify the ticket...", "to": "... step by step."}},
                "reasoning": "Tickets about refunds were labelled other.",
                "kpi": "accuracy",
                "direction": "maximize",
                "evidence_kpi_mean": 0.61,
                "evidence_units": 24,
                "model": "scripted/optimizer",
                "input_tokens": 1200,
                "output_tokens": 300,
                "cost_usd": 0.0031,
                "night_id": night,
                "offline_evidence": {
                    "night_id": night,
                    "kpi": "accuracy",
                    "selection": {"n": 12, "parent_mean": 0.58, "winner_mean": 0.83},
                    "confirmation": {
                        "n": 20,
                        "parent_mean": 0.6,
                        "candidate_mean": 0.85,
                        "p_value": 0.004,
                        "wins": 6,
                        "losses": 1,
                    },
                    "budgets": {"optimizer_tokens": 1500, "task_calls": 64},
                },
            },
        ),
        row_record(
            "proposals",
            {
                "proposal_id": bad,
                "pipeline": PIPELINE,
                "created_at": _iso(promoted_at + timedelta(days=1)),
                "status": "rejected",
                "status_reason": "replay gate: worse than stable on 8 items",
                "optimizer": "optoprime",
                "parent_param_set_id": ps["promoted"],
                "candidate_param_set_id": ps["rejected"],
                "diff": {"prompt": {"from": "... step by step.", "to": "Label it."}},
                "kpi": "accuracy",
                "direction": "maximize",
                "evidence_kpi_mean": 0.8,
                "evidence_units": 12,
                "model": "scripted/optimizer",
                "input_tokens": 900,
                "output_tokens": 120,
            },
        ),
        row_record(
            "replay_gates",
            {
                "gate_id": "g-" + _hex(rng, 4),
                "pipeline": PIPELINE,
                "created_at": _iso(promoted_at + timedelta(days=1, minutes=5)),
                "proposal_id": bad,
                "outcome": "stopped",
                "n_items": 8,
                "stable_mean": 0.85,
                "candidate_mean": 0.5,
                "effect": -0.35,
            },
        ),
        row_record(
            "proposal_ratings",
            {
                "rating_id": "r-" + _hex(rng, 4),
                "proposal_id": bad,
                "pipeline": PIPELINE,
                "created_at": _iso(promoted_at + timedelta(days=1, minutes=6)),
                "source": "replay_gate",
                "outcome": "worse",
                "effect": -0.35,
            },
        ),
        row_record(
            "rollouts",
            {
                "rollout_id": rollout,
                "pipeline": PIPELINE,
                "created_at": _iso(night_at + timedelta(hours=1)),
                "proposal_id": good,
                "stable_param_set_id": ps["stable"],
                "canary_param_set_id": ps["promoted"],
                "plan": {"kpi": "accuracy", "steps": [0.1, 0.5, 1.0]},
                "status": "running",
            },
        ),
    ]
    events = [("started", 0.1, "running", 1), ("promote", 1.0, "promoted", 3)]
    for i, (kind, weight, status, step) in enumerate(events):
        at = night_at + timedelta(hours=1) if i == 0 else promoted_at
        rows.append(
            row_record(
                "rollout_events",
                {
                    "event_id": "e-" + _hex(rng, 4),
                    "rollout_id": rollout,
                    "pipeline": PIPELINE,
                    "created_at": _iso(at),
                    "kind": kind,
                    "status": status,
                    "step": step,
                    "weight": weight,
                    "stable_param_set_id": ps["stable"],
                    "canary_param_set_id": ps["promoted"],
                },
            )
        )
    rows.append(
        row_record(
            "rollout_events",
            {
                "event_id": "e-" + _hex(rng, 4),
                "pipeline": PIPELINE,
                "created_at": _iso(promoted_at + timedelta(days=1, hours=2)),
                "kind": "pin",
                "status": "idle",
                "pinned_param_set_id": ps["promoted"],
            },
        )
    )
    checks = [(1, 0.1, "continue"), (2, 0.5, "advance"), (3, 1.0, "promote")]
    for k, (step, weight, decision) in enumerate(checks):
        at = night_at + timedelta(hours=12 * (k + 1))
        rows.append(
            row_record(
                "rollout_analyses",
                {
                    "analysis_id": "a-" + _hex(rng, 4),
                    "rollout_id": rollout,
                    "pipeline": PIPELINE,
                    "created_at": _iso(at),
                    "step": step,
                    "weight": weight,
                    "kpi": "accuracy",
                    "direction": "maximize",
                    "verdict": "safe" if decision == "promote" else "inconclusive",
                    "decision": decision,
                    "reason": f"check {k + 1}",
                    "n_stable": 40 + 10 * k,
                    "n_canary": 8 + 12 * k,
                    "mean_stable": 0.6 + 0.01 * k,
                    "mean_canary": 0.8 + 0.02 * k,
                    "ci_stable": [0.5, 0.7],
                    "ci_canary": [0.65 + 0.03 * k, 0.95],
                    "effect": 0.2 + 0.01 * k,
                },
            )
        )
    candidates = [("parent", "c-parent"), ("reflect", "c-1"), ("demos", "c-2")]
    for gen, cid in candidates:
        for pool, n in (("selection", 6), ("confirmation", 5)):
            if pool == "confirmation" and cid == "c-2":
                continue  # not confirmed: only the winner and the parent are
            for i in range(n):
                rows.append(
                    row_record(
                        "candidate_scores",
                        {
                            "night_id": night,
                            "pipeline": PIPELINE,
                            "proposal_id": good,
                            "candidate_id": cid,
                            "parent_id": "c-parent",
                            "generator": gen,
                            "item_id": f"{pool}-{i}",
                            "pool": pool,
                            "score": float(rng.random() < (0.85 if cid == "c-1" else 0.6)),
                            "kpi": "accuracy",
                            "created_at": _iso(night_at),
                        },
                    )
                )
    return rows


if __name__ == "__main__":  # python -m tests.report.seed PATH: a warehouse to look at
    import sys

    t = time.perf_counter()
    s = seed(Path(sys.argv[1]))
    print(f"seeded {s.path}: {len(s.run_ids)} runs in {time.perf_counter() - t:.1f}s")

"""Verified replay (AgentRR): model calls skipped on recurring inputs, and replays that fail.

    python -m bench.bench_replay [--pool 50] [--runs 10] [--latency-ms 50] [--quick]

Target: verified replay skips >= 90% of model calls on recurring inputs, with zero replays
that fail their checks.

**Pipeline** (defined here). ``classify(key, text)`` is a ``@genopt.task(replay=True,
model=..., item_key="key")`` step that reads the ``prompt`` param and calls a scripted
litellm provider (``bench-sim``, :func:`prefect_genopt.testing.register`) standing for an
expensive model: it sleeps ``--latency-ms`` per call and records its real invocations (the
ground truth of model calls).
Its answer is deterministic in (model, prompt, text): the text's expected label, except for
``--invalid-rate`` of inputs (chosen by hash) where it answers a label outside the allowed
set (``"Bug."`` for ``bug``: a reviewer accepts it, the check ``label_in_set`` does not) and
``--wrong-rate`` where it answers a wrong label (bad feedback). ``classify_plain`` is the
same step without record or replay (the baseline). The item key is a content hash of the
text, so a recurring text is a recurring call (the fingerprint covers every argument).

**Workloads**, in one process, one ``prefect_test_harness`` and one fresh warehouse file:

1. warm-up: ``--warmup-runs`` runs over the pool of ``--pool`` distinct texts, with per-item
   feedback ``correct``; then ``genopt.harvest(pipeline, "correct")``;
2. recurring: ``--runs`` runs of ``--items`` texts drawn with replacement from the pool
   (seeded), each run done with replay and on ``classify_plain`` over the same draws
   (which goes first alternates); model calls, replays (``steps.stats()`` and the spans'
   ``genopt.replay``), per-item time of the step call (medians);
3. misses: ``--novel-runs`` runs of ``--items`` texts never seen, replay on vs plain,
   interleaved: the per-item cost of the lookup (and recording) when nothing is replayed;
   once with the simulated latency and once (twice as many runs) with a free model
   (latency 0), where the step's own cost is only Prefect's task machinery and genopt's;
4. invalidation: the pool under a changed prompt (a param the step reads), under a changed
   param it does not read (control), under another declared model, and back to the
   original (control).

Every replayed span in the warehouse is then checked: the check function is run again on
its output, and the output is compared to what the model answers for that input under the
run's prompt and model. genopt's own cost per call is timed by wrapping the
``try_replay`` and ``record_step`` names ``prefect_genopt.pipeline`` calls. The flow is
defined at module level: harvest imports the recorded entrypoint (``__main__`` here) to
load the check functions. Results go to ``bench/results/replay.json`` (``--quick``: into the
work directory, see :mod:`bench.common`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import time
from typing import Any

from bench import common
from bench.common import machine_info, print_table, quantiles, write_results

if __name__ == "__main__":  # a private Prefect home and warehouse, before Prefect is imported
    _TMP = common.scratch_dir("bench-replay-")
    common.prefect_env(_TMP / "prefect", _TMP / "warehouse.duckdb", level="ERROR")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import litellm  # noqa: E402
from prefect import flow  # noqa: E402

import prefect_genopt as genopt  # noqa: E402
from prefect_genopt import testing  # noqa: E402

PIPELINE = "bench-replay"
PROVIDER = "bench-sim"
MODEL_V1 = f"{PROVIDER}/expensive-v1"
MODEL_V2 = f"{PROVIDER}/expensive-v2"
LABELS = ("billing", "bug", "other")
DEFAULT_PROMPT = "Label the ticket as billing, bug or other."
WORDS = (
    "invoice refund crash export login password reset timeout upgrade plan invite report "
    "dashboard latency error checkout card declined shipping address webhook retry queue"
).split()

#: what the simulated model does; main() sets it from the arguments
SIM: dict[str, Any] = {"latency_s": 0.05, "invalid_rate": 0.05, "wrong_rate": 0.05}
#: the model classify declares and calls (the invalidation workload switches it)
MODEL = {"name": MODEL_V1}


def _unit(*parts: str) -> float:
    """A deterministic number in [0, 1) from strings."""
    h = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return int(h[:12], 16) / 16**12


def expected_label(text: str) -> str:
    """The right label for a text (the truth the feedback compares with)."""
    return LABELS[int(_unit("label", text) * len(LABELS))]


def true_answer(model: str, prompt: str, text: str) -> str:
    """What the simulated model answers (deterministic in model, prompt and text)."""
    right = expected_label(text)
    u = _unit(model, prompt, text)
    if u < SIM["invalid_rate"]:
        return right.capitalize() + "."  # right meaning, not an allowed label
    if u < SIM["invalid_rate"] + SIM["wrong_rate"]:
        return LABELS[(LABELS.index(right) + 1) % len(LABELS)]
    return right


def reviewer_accepts(answer: str, text: str) -> bool:
    """The feedback: a human reading the answer (case and punctuation do not matter)."""
    return answer.strip(". ").lower() == expected_label(text)


def sim_answer(call: testing.Call) -> testing.Reply:
    """The expensive model's answer (:func:`true_answer`); its latency is the provider's
    ``delay``."""
    label = true_answer(call.model, call.system, call.user)
    return testing.Reply(label, prompt_tokens=20, completion_tokens=1)


#: the simulated model: ``len(SIM_MODEL.calls)`` counts its real invocations
SIM_MODEL = testing.register(PROVIDER, sim_answer, delay=SIM["latency_s"])


class ReplayParams(genopt.Tunables):
    """Params of the benchmark pipeline."""

    prompt: str = genopt.prompt(DEFAULT_PROMPT, description="the classifier's instructions")
    prefix: str = genopt.prompt("label", description="a param classify does not read")


@genopt.check(PIPELINE, step="classify")
def label_in_set(inputs: dict[str, Any], output: Any) -> bool | str:
    """The answer is one of the allowed labels."""
    return output in LABELS or f"{output!r} is not a label"


def _ask(text: str, prompt: str) -> str:
    resp = litellm.completion(
        model=MODEL["name"],
        messages=[{"role": "system", "content": prompt}, {"role": "user", "content": text}],
    )
    return (resp.choices[0].message.content or "").strip()


@genopt.task(replay=True, model=lambda: MODEL["name"], item_key="key")
def classify(key: str, text: str) -> str:
    """Ask the model for the ticket's label (recorded, replayed when verified)."""
    return _ask(text, genopt.current_params(item_key=key).prompt)


@genopt.task
def classify_plain(key: str, text: str) -> str:
    """The same step without record or replay (the baseline)."""
    return _ask(text, genopt.current_params(item_key=key).prompt)


@flow(name=PIPELINE)
@genopt.pipeline(name=PIPELINE, params=ReplayParams)
def replay_bench(texts: list[str], replay: bool = True, feedback: bool = False) -> dict[str, Any]:
    """Label each text; per-item feedback ``correct`` when asked. Returns the run id,
    the prompt and model used, and the wall time of each step call."""
    from prefect.runtime import flow_run

    step = classify if replay else classify_plain
    times: list[float] = []
    for text in texts:
        key = item_key(text)
        t0 = time.perf_counter()
        label = step(key, text)
        times.append(time.perf_counter() - t0)
        if feedback:
            genopt.feedback("correct", float(reviewer_accepts(label, text)), item_key=key)
    return {
        "run_id": str(flow_run.id),
        "prompt": genopt.current_params().prompt,
        "model": MODEL["name"],
        "times": times,
    }


def item_key(text: str) -> str:
    """A content key: the same text is the same item."""
    return "t-" + hashlib.sha256(text.encode()).hexdigest()[:10]


def make_texts(rng: random.Random, n: int, tag: str) -> list[str]:
    """``n`` distinct ticket texts."""
    out: list[str] = []
    while len(out) < n:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12)))
        text = f"{tag}-{len(out)}: {words}"
        out.append(text)
    return out


#: seconds spent in genopt's replay lookup (hit / miss) and step recording, per call
COSTS: dict[str, list[float]] = {"lookup_hit": [], "lookup_miss": [], "record": []}


def instrument_replay_costs() -> None:
    """Time ``try_replay`` and ``record_step`` where ``@genopt.task`` calls them (the
    names it looks up in :mod:`prefect_genopt.pipeline`): the library is not changed."""
    import importlib

    gp = importlib.import_module("prefect_genopt.pipeline")  # the package exports pipeline()
    lookup, record = gp.try_replay, gp.record_step

    def timed_lookup(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = lookup(*args, **kwargs)
        COSTS["lookup_hit" if out[0] is not None else "lookup_miss"].append(
            time.perf_counter() - t0
        )
        return out

    def timed_record(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = record(*args, **kwargs)
        COSTS["record"].append(time.perf_counter() - t0)
        return out

    gp.try_replay = timed_lookup  # type: ignore[assignment]
    gp.record_step = timed_record  # type: ignore[assignment]


class Phase:
    """Model calls, replay stats, run ids and step times of a sequence of runs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.stats: dict[str, int] = {}
        self.runs: list[dict[str, Any]] = []
        self.times: list[float] = []
        self.pair_ratios: list[float] = []
        self.costs: dict[str, list[float]] = {k: [] for k in COSTS}

    def run(self, texts: list[str], *, replay: bool, feedback: bool = False) -> None:
        from prefect_genopt.replay import steps

        before_calls = len(SIM_MODEL.calls)
        before = steps.stats()
        n_costs = {k: len(v) for k, v in COSTS.items()}
        out = replay_bench(texts, replay=replay, feedback=feedback)
        for k, v in COSTS.items():
            self.costs[k] += v[n_costs[k] :]
        self.calls += len(SIM_MODEL.calls) - before_calls
        after = steps.stats()
        for k in set(after) | set(before):
            self.stats[k] = self.stats.get(k, 0) + after.get(k, 0) - before.get(k, 0)
        self.runs.append(out)
        self.times += out["times"]

    @property
    def run_ids(self) -> list[str]:
        return [r["run_id"] for r in self.runs]

    def summary(self) -> dict[str, Any]:
        return {
            "model_calls": self.calls,
            "steps": len(self.times),
            "replayed": self.stats.get("replayed", 0),
            "computed": self.stats.get("computed", 0),
            "invalid": self.stats.get("invalid", 0),
            "recorded": self.stats.get("recorded", 0),
            "step_seconds": quantiles(self.times) if self.times else None,
            "median_of_pair_ratios": (
                statistics.median(self.pair_ratios) if self.pair_ratios else None
            ),
            "genopt_seconds_per_call": {k: quantiles(v) for k, v in self.costs.items() if v},
            "run_ids": self.run_ids,
        }


def pair(with_replay: Phase, plain: Phase, texts: list[str], i: int) -> None:
    """One run on each arm over the same texts; which goes first alternates."""
    if i % 2 == 0:
        with_replay.run(texts, replay=True)
        plain.run(texts, replay=False)
    else:
        plain.run(texts, replay=False)
        with_replay.run(texts, replay=True)
    ratio = statistics.median(with_replay.runs[-1]["times"]) / statistics.median(
        plain.runs[-1]["times"]
    )
    with_replay.pair_ratios.append(ratio)


def span_counts(wh: Any, run_ids: list[str]) -> dict[str, int]:
    """Replayed and computed ``classify`` spans, LLM spans, in these runs (warehouse)."""
    (row,) = wh.sql(
        """
        SELECT count(*) FILTER (WHERE task_name IN ('classify', 'classify_plain')) AS steps,
               count(*) FILTER (WHERE task_name = 'classify'
                                AND attributes->>'genopt.replay' = 'replayed') AS replayed,
               count(*) FILTER (WHERE task_name = 'classify'
                                AND attributes->>'genopt.replay' LIKE 'computed%') AS computed,
               count(*) FILTER (WHERE llm_model IS NOT NULL) AS llm_spans
        FROM spans WHERE list_contains(?, run_id)
        """,
        [run_ids],
    )
    return {k: int(v or 0) for k, v in row.items()}


def audit_replays(wh: Any, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Every replayed span: does its output pass the check again, and is it what the model
    answers for that input under the run's prompt and model?"""
    import orjson

    from prefect_genopt.replay.checks import failed, run_checks

    by_run = {r["run_id"]: r for r in runs}
    rows = wh.sql(
        """
        SELECT s.run_id, s.span_id, s.attributes->>'genopt.replay.experience_id' AS exp,
               v.inputs, v.output, v.replayed_from
        FROM spans s LEFT JOIN step_values v ON v.span_id = s.span_id AND v.run_id = s.run_id
        WHERE s.task_name = 'classify' AND s.attributes->>'genopt.replay' = 'replayed'
        """
    )
    fail_check = wrong = missing = 0
    examples: list[dict[str, Any]] = []
    for r in rows:
        run = by_run.get(r["run_id"])
        if r["output"] is None or run is None:
            missing += 1
            continue
        inputs = orjson.loads(r["inputs"])
        output = orjson.loads(r["output"])
        bad = failed(run_checks(PIPELINE, "classify", inputs, output, exact=True, redacted=False))
        truth = true_answer(run["model"], run["prompt"], inputs["text"])
        fail_check += bool(bad)
        wrong += output != truth
        if (bad or output != truth) and len(examples) < 5:
            examples.append({"span_id": r["span_id"], "output": output, "truth": truth, "bad": bad})
        if r["replayed_from"] != r["exp"]:
            missing += 1
    return {
        "replayed_spans": len(rows),
        "failing_check": fail_check,
        "differing_from_model": wrong,
        "unmatched": missing,
        "examples": examples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--pool", type=int, default=50, help="distinct recurring texts (50)")
    ap.add_argument("--warmup-runs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10, help="measured runs per arm (10)")
    ap.add_argument("--items", type=int, default=50, help="texts per measured run (50)")
    ap.add_argument("--novel-runs", type=int, default=4, help="runs of new texts per arm (4)")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="simulated model latency")
    ap.add_argument("--invalid-rate", type=float, default=0.05)
    ap.add_argument("--wrong-rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke run (small counts)")
    args = ap.parse_args()
    if args.quick:
        args.pool, args.runs, args.items, args.novel_runs = 12, 2, 12, 1
    SIM.update(
        latency_s=args.latency_ms / 1000,
        invalid_rate=args.invalid_rate,
        wrong_rate=args.wrong_rate,
    )
    SIM_MODEL.delay = SIM["latency_s"]

    import prefect.settings as ps
    from prefect.testing.utilities import prefect_test_harness

    from prefect_genopt.replay import steps

    rng = random.Random(args.seed)
    pool = make_texts(rng, args.pool, "pool")
    draws = [[rng.choice(pool) for _ in range(args.items)] for _ in range(args.runs)]
    novel = [make_texts(rng, args.items, f"new{i}") for i in range(args.novel_runs)]
    free = [make_texts(rng, args.items, f"free{i}") for i in range(2 * args.novel_runs)]
    truth_v1 = {t: true_answer(MODEL_V1, DEFAULT_PROMPT, t) for t in pool}
    pool_mix = {
        "invalid_label": sum(a not in LABELS for a in truth_v1.values()),
        "wrong_label": sum(a in LABELS and a != expected_label(t) for t, a in truth_v1.items()),
    }
    machine = machine_info()
    instrument_replay_costs()
    t_start = time.perf_counter()
    warm, on, off = Phase("warm-up"), Phase("recurring, replay"), Phase("recurring, plain")
    miss_on, miss_off = Phase("novel, replay"), Phase("novel, plain")
    free_on, free_off = Phase("novel, replay, 0 ms model"), Phase("novel, plain, 0 ms model")
    inval: dict[str, Phase] = {}
    with prefect_test_harness(server_startup_timeout=120):
        with ps.temporary_settings({ps.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            t_harness = time.perf_counter() - t_start
            steps.clear_cache()
            steps.reset_stats()
            for _ in range(args.warmup_runs):
                warm.run(pool, replay=True, feedback=True)
            t0 = time.perf_counter()
            harvested = genopt.harvest(PIPELINE, "correct")
            harvest_s = time.perf_counter() - t0
            print(f"harvest: {harvested} in {harvest_s:.2f} s", flush=True)
            for i, texts in enumerate(draws):  # the same draws on both arms
                pair(on, off, texts, i)
                print(
                    f"recurring run {i + 1}/{args.runs}: model calls {on.calls} with replay, "
                    f"{off.calls} plain",
                    flush=True,
                )
            for i, texts in enumerate(novel):
                pair(miss_on, miss_off, texts, i)
            print(f"novel: model calls {miss_on.calls} with replay, {miss_off.calls} plain")
            SIM_MODEL.delay = 0.0
            for i, texts in enumerate(free):
                pair(free_on, free_off, texts, i)
            SIM_MODEL.delay = SIM["latency_s"]
            cases: list[tuple[str, dict[str, Any] | None, str]] = [
                (
                    "changed prompt (read by classify)",
                    {"prompt": DEFAULT_PROMPT + " Be brief."},
                    MODEL_V1,
                ),
                ("changed prefix (not read: control)", {"prefix": "tag"}, MODEL_V1),
                ("changed model", None, MODEL_V2),
                ("original prompt and model (control)", None, MODEL_V1),
            ]
            for name, values, model in cases:
                MODEL["name"] = model
                ph = inval[name] = Phase(name)
                if values is None:
                    ph.run(pool, replay=True)
                else:
                    with genopt.pinned_params(ReplayParams(**values), arm="offline"):
                        ph.run(pool, replay=True)
                print(f"{name}: {ph.stats.get('replayed', 0)} replays of {len(pool)}")
            MODEL["name"] = MODEL_V1
            wh = genopt.Warehouse()
            phases = [warm, on, off, miss_on, miss_off, free_on, free_off]
            all_runs = [r for ph in (*phases, *inval.values()) for r in ph.runs]
            audit = audit_replays(wh, all_runs)
            spans = {ph.name: span_counts(wh, ph.run_ids) for ph in (*phases, *inval.values())}
            exp_rows = wh.sql(
                "SELECT status, count(*) AS n FROM experiences WHERE pipeline = ? GROUP BY ALL",
                [PIPELINE],
            )
    wall = time.perf_counter() - t_start

    verified_keys = {
        r["item_key"]
        for r in genopt.Warehouse().sql(
            "SELECT DISTINCT item_key FROM experiences WHERE pipeline = ? AND status = 'verified'",
            [PIPELINE],
        )
    }
    eligible = {t for t in pool if item_key(t) in verified_keys}
    eligible_draws = sum(t in eligible for d in draws for t in d)
    n_draws = sum(len(d) for d in draws)
    skip = 1 - on.calls / off.calls if off.calls else float("nan")
    med = {ph.name: statistics.median(ph.times) for ph in phases}
    out = {
        "command": common.command_line("bench_replay"),
        "machine": machine,
        "params": vars(args),
        "pool_mix": pool_mix,
        "harvest": {
            "verified": harvested.verified,
            "rejected": harvested.rejected,
            "not_good": harvested.not_good,
            "refused": harvested.refused,
            "seconds": harvest_s,
            "experiences_by_status": {r["status"]: r["n"] for r in exp_rows},
        },
        "pool_inputs_with_verified_experience": len(eligible),
        "recurring": {
            "draws": n_draws,
            "draws_with_verified_experience": eligible_draws,
            "skip_ceiling": eligible_draws / n_draws,
            "model_calls_replay": on.calls,
            "model_calls_plain": off.calls,
            "skip_rate": skip,
            "skip_rate_on_draws_with_experience": (
                on.stats.get("replayed", 0) / eligible_draws if eligible_draws else None
            ),
            "replay": on.summary(),
            "plain": off.summary(),
            "step_median_ratio": med[on.name] / med[off.name],
        },
        "novel": {
            "replay": miss_on.summary(),
            "plain": miss_off.summary(),
            "step_median_ratio": med[miss_on.name] / med[miss_off.name],
            "step_median_added_ms": (med[miss_on.name] - med[miss_off.name]) * 1000,
        },
        "novel_free_model": {
            "replay": free_on.summary(),
            "plain": free_off.summary(),
            "step_median_ratio": med[free_on.name] / med[free_off.name],
            "step_median_added_ms": (med[free_on.name] - med[free_off.name]) * 1000,
        },
        "warmup": warm.summary(),
        "invalidation": {name: ph.summary() for name, ph in inval.items()},
        "warehouse_spans": spans,
        "replay_audit": audit,
        "harness_start_s": t_harness,
        "wall_s": wall,
    }
    write_results("replay", out, quick=args.quick)

    print(
        f"\npool {args.pool}: {pool_mix['invalid_label']} invalid-label answers, "
        f"{pool_mix['wrong_label']} wrong answers; harvest: {harvested}"
    )
    rows = []
    for ph in (*phases, *inval.values()):
        sp = spans[ph.name]
        plain = ph in (off, miss_off, free_off)
        rows.append(
            [
                ph.name,
                len(ph.times),
                ph.calls,
                sp["llm_spans"],
                "-" if plain else ph.stats.get("replayed", 0),
                "-" if plain else sp["replayed"],
                "-" if plain else ph.stats.get("computed", 0),
                "-" if plain else sp["computed"],
                statistics.median(ph.times) * 1000,
            ]
        )
    print_table(
        [
            "workload",
            "steps",
            "model calls",
            "LLM spans",
            "replayed",
            "(spans)",
            "computed",
            "(spans)",
            "step ms (median)",
        ],
        rows,
        title="Per workload (replayed/computed: steps.stats(), then the warehouse's spans)",
    )
    print(
        f"\nskip rate on recurring inputs: {skip:.1%} "
        f"(1 - {on.calls}/{off.calls}); ceiling {eligible_draws}/{n_draws} = "
        f"{eligible_draws / n_draws:.1%} of draws have a verified experience; "
        f"{on.stats.get('replayed', 0)} of those {eligible_draws} replayed"
    )
    print(
        f"replays audited: {audit['replayed_spans']}; failing their check: "
        f"{audit['failing_check']}; differing from the model's answer: "
        f"{audit['differing_from_model']}; unmatched: {audit['unmatched']}"
    )
    print(
        f"step time, recurring: replay {med[on.name] * 1000:.1f} ms vs plain "
        f"{med[off.name] * 1000:.1f} ms (ratio {out['recurring']['step_median_ratio']:.3f})"
    )
    print(
        f"step time, novel (miss): replay {med[miss_on.name] * 1000:.1f} ms vs plain "
        f"{med[miss_off.name] * 1000:.1f} ms (ratio {out['novel']['step_median_ratio']:.3f}, "
        f"+{out['novel']['step_median_added_ms']:.2f} ms)"
    )
    free_out = out["novel_free_model"]
    print(
        f"step time, novel (miss), 0 ms model: replay {med[free_on.name] * 1000:.1f} ms vs plain "
        f"{med[free_off.name] * 1000:.1f} ms (ratio {free_out['step_median_ratio']:.3f}, "
        f"+{free_out['step_median_added_ms']:.2f} ms)"
    )
    cost_rows = []
    for ph in (on, miss_on, free_on):
        c = ph.costs
        cost_rows.append(
            [
                ph.name,
                statistics.median(c["lookup_hit"]) * 1e6 if c["lookup_hit"] else "-",
                statistics.median(c["lookup_miss"]) * 1e6 if c["lookup_miss"] else "-",
                statistics.median(c["record"]) * 1e6 if c["record"] else "-",
                ph.pair_ratios and statistics.median(ph.pair_ratios),
            ]
        )
    print_table(
        ["workload", "lookup hit µs", "lookup miss µs", "record µs", "pair ratio"],
        cost_rows,
        title="genopt's own cost per step call (medians), and the median of per-pair "
        "step-time ratios (replay / plain)",
    )
    print(f"wall time {wall:.0f} s (harness start {t_harness:.0f} s)")


if __name__ == "__main__":
    main()

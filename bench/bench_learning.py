"""Learning from experience on BBH: what memory, step credit and the replay gate add.

A two-step pipeline (``bbh2-<task>``) answers BIG-Bench Hard yes/no questions with
the embedded model (Qwen2.5-Coder-1.5B via ``prefect_genopt.local_model``, one CPU
thread): ``reason`` thinks about the question under the tunable ``reason_prompt``
(system message, temperature 0, at most 96 tokens), then ``extract`` reads the
question and that reasoning under the tunable ``extract_prompt`` (at most 8
tokens); the first ``yes``/``no`` of its reply is the answer. Each item gets
``genopt.feedback("correct", 0/1, item_key=..., comment=..., expected=target)``,
each run ``accuracy``. Two steps give step credit something to credit.

Protocol (one fresh warehouse per task, seed and variant in ``<work>/bbh-learning``; the
data in ``<data>/bbh``, see :mod:`bench.common`):

* split: the first 60 examples in file order: 15 train, 5 validation, 40 test
  (the same order as ``bench_bbh``);
* 3 updates of minibatch 3; the seed permutes the train examples into
  minibatches (as in ``bench_bbh``) and is the optimizer's seed, so the same
  seed gives every variant the same minibatches;
* each update runs the pipeline on the minibatch pinned to the current params
  (arm ``train``) and calls ``optimize()`` on that run alone (``evidence_run_ids``,
  ``start_from="values"``: the current params, KPI ``correct``, one LLM update);
* variants, each on top of the previous one:

  1. ``alone``: OptoPrime with ``memory_size=0``; every ``proposed`` candidate
     becomes the current params (no validation selection, on purpose: the point
     is what each learning component adds on its own);
  2. ``memory``: ``memory_size=4`` (past proposals of this pipeline and their
     outcomes in #Memory);
  3. ``step``: plus ``OptimizerSettings(step_credit=True)`` (run only when the
     library has that field; otherwise recorded as not run);
  4. ``gate``: plus the replay gate. Each update first runs the current params on
     the 5 validation items on the ``stable`` arm (``pinned_params(current,
     arm="stable")``): a run recorded exactly like a production run of the stable
     param set, which is all ``replay_gate``'s ``replayable_runs`` looks for (a
     completed run on the stable arm with per-item feedback of that param set
     and whole inputs). A proposed candidate is then gated with
     ``replay_gate(stable_param_set_id=<current>, exclude_run_ids=[minibatch
     run])``, which replays that validation run with the candidate (arm
     ``replay``); it becomes current only if the gate passes. As in
     ``rollout.controller.start_rollout`` the gate's outcome rates the proposal
     (``ratings.rate``, so the optimizer's memory sees it) and a stopped
     proposal is rejected (``proposals.set_status``). No routing state and no
     canary are involved: ``replay_gate`` takes the stable param set id as an
     argument, and a passed candidate becomes current directly, as in the other
     variants. To judge the stops, each stopped candidate and the params it would
     have replaced are tested on the 40 test items.

* after the updates: test accuracy of the start params (the same for every
  variant, cached) and of the final params (arm ``test``), so no variant's
  memory ever sees test feedback.

Task replies are deterministic (temperature 0) and cached by (system prompt,
user content) with ``bench_bbh.Cache``; a cached reply is replayed through
``litellm.completion(mock_response=...)``, so the traces the optimizer and the
gate read are the same as for a real call. Real and cached calls are counted
separately. The optimizer is never cached. The cache lives in the work directory
(``<work>/bbh-learning/cache.json``, see ``--cache``); results are saved to
``bench/results/learning_bbh.json`` after each (task, seed, variant), in the order task,
seed, variant, and finished ones are skipped on a re-run.

``--quick`` is a plumbing check without the embedded model: 1 task, 1 seed, 1 update,
5 test items, every variant, with ``bench_bbh``'s scripted models; it starts afresh and
writes ``learning_bbh.quick.json`` and its own cache in the work directory.

    make setup-local
    python -m bench.bench_learning --quick                               # plumbing check
    nice -n 10 .venv/bin/python -m bench.bench_learning \\
        > bench/results/learning_bbh.log 2>&1 &                            # hours
    python -m bench.bench_learning --report                              # Markdown tables
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import bench_bbh, common
from bench.bench_bbh import Cache, describe_proposal, parse_answer, run_pinned
from bench.common import library_state, log, mean, save_json

NAME = "learning_bbh"
#: the folder of the cache and the warehouses in the work directory
WORK_FOLDER = "bbh-learning"
#: one model thread leaves a core free on the shared 2-core machine (bench_bbh's is 2)
LOCAL_THREADS = "1"

TASKS = ("navigate", "sports_understanding")
SEEDS = (0, 1)
VARIANTS = ("alone", "memory", "step", "gate")
N_TRAIN, N_VAL, N_TEST = 15, 5, 40
MINIBATCH = 3
UPDATES = 3

START_REASON = "Think step by step about the question, briefly."
START_EXTRACT = "Answer yes or no."
REASON_MAX_TOKENS = 96
EXTRACT_MAX_TOKENS = 8

MEMORY_SIZE = 4
MAX_OUTPUT_TOKENS = 800  # reasoning <= 800 chars + up to two prompts, as JSON
CREDIT_HORIZON = {"max_steps": 12, "max_value_chars": 1200, "include_llm_messages": True}
OPTIMIZER_TIMEOUT_S = 1500.0  # one model thread on a loaded 2-core machine
KPI = "correct"
GATE_TOLERANCE = 0.05  # replay_gate's default (relative to stable's mean)


# -- the pipeline ----------------------------------------------------------------------


class StepCache(Cache):
    """``bench_bbh.Cache`` that also counts real and cached calls per pipeline step."""

    def reset_counts(self) -> None:
        super().reset_counts()
        self.by_step: dict[str, dict[str, int]] = {}


def _counts(cache: Cache) -> dict[str, Any]:
    """A copy of the cache's counters (to take differences around a step)."""
    return dict(cache.counts)


def _delta(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    return {k: round(after[k] - before.get(k, 0), 3) for k in after}


def make_completer(cache: StepCache, model: str) -> Callable[[str, str, int, str], str]:
    """``complete(system, user, max_tokens, step) -> text``: one task-model call through
    ``bench_bbh.Cache.complete`` (replayed when (system, user, max_tokens) was asked
    before), with the calls also counted per step."""

    def complete(system: str, user: str, max_tokens: int, step: str) -> str:
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": user},
        ]
        key = Cache.key(f"{system}\0max_tokens={max_tokens}", user)
        text, cached = cache.complete(key, model, messages, max_tokens)
        counts = cache.by_step.setdefault(step, {"real": 0, "cached": 0})
        counts["cached" if cached else "real"] += 1
        return text

    return complete


def build(cache: StepCache, quick: bool = False) -> tuple[Any, Callable[[str], Any], str, str]:
    """Import the library and define the pipeline; returns (genopt, make_flow, task model,
    optimizer model): the embedded model for both, or with ``quick`` ``bench_bbh``'s
    scripted ones. Each flow is also a global of this module under its function name, so
    the replay gate can import it from the recorded entrypoint."""
    from prefect import flow
    from prefect.runtime import flow_run

    import prefect_genopt as genopt
    from prefect_genopt import local_model

    model, optimizer_model = bench_bbh.quick_model() if quick else (local_model.register(),) * 2
    complete = make_completer(cache, model)

    class BBH2Params(genopt.Tunables):
        """What the optimizer may change in the two-step BBH pipeline."""

        reason_prompt: str = genopt.prompt(
            START_REASON,
            description="system message of step 1, `reason`: a small LLM sees this instruction, "
            f"then the question, and writes its reasoning in at most {REASON_MAX_TOKENS} tokens "
            "(longer reasoning is cut off)",
            max_length=1000,
        )
        extract_prompt: str = genopt.prompt(
            START_EXTRACT,
            description="system message of step 2, `extract`: the same small LLM sees this "
            "instruction, then the question and step 1's reasoning, and answers in at most "
            f"{EXTRACT_MAX_TOKENS} tokens; the first word 'yes' or 'no' in its reply is the "
            "pipeline's answer",
            max_length=1000,
        )

    def reason(item_id: str, question: str) -> str:
        """Step 1: a small LLM reasons about the question (reason_prompt is its system message)."""
        p = genopt.current_params(item_key=item_id)
        return complete(p.reason_prompt, question, REASON_MAX_TOKENS, "reason")

    def extract(item_id: str, question: str, reasoning: str) -> str:
        """Step 2: a small LLM reads the question and step 1's reasoning and answers yes or no
        (extract_prompt is its system message)."""
        p = genopt.current_params(item_key=item_id)
        user = f"{question}\n\nReasoning:\n{reasoning}"
        return complete(p.extract_prompt, user, EXTRACT_MAX_TOKENS, "extract")

    reason.__qualname__ = "reason"  # the names the optimizer reads in #Code
    extract.__qualname__ = "extract"
    reason_task = genopt.task(reason)
    extract_task = genopt.task(extract)

    def make_flow(task: str) -> Any:
        name = f"bbh2-{task}"
        fn_name = name.replace("-", "_")
        if fn_name in globals():
            return globals()[fn_name]

        def bbh2(examples: list[dict[str, str]]) -> dict[str, Any]:
            """Answer yes/no questions in two small-LLM steps (reason, then extract) and score.

            Step 1 reasons about the question, step 2 turns question + reasoning into an
            answer; the first 'yes' or 'no' of step 2's reply is compared with the expected one.
            """
            answers = []
            correct = 0
            for e in examples:
                reasoning = reason_task(e["id"], e["input"])
                reply = extract_task(e["id"], e["input"], reasoning)
                got = parse_answer(reply)
                target = e["target"].strip().lower()
                ok = got is not None and got == target
                correct += ok
                answers.append({"id": e["id"], "answer": got, "ok": ok, "reply": reply[:80]})
                genopt.feedback(
                    KPI,
                    1.0 if ok else 0.0,
                    item_key=e["id"],
                    comment=f"expected {target}, got {got if got else repr(reply)}",
                    expected=target,
                )
            accuracy = correct / len(examples)
            genopt.feedback("accuracy", accuracy)
            return {"run_id": str(flow_run.id), "accuracy": accuracy, "answers": answers}

        bbh2.__name__ = bbh2.__qualname__ = fn_name
        bbh2.__module__ = __name__
        obj = flow(name=name, log_prints=False)(genopt.pipeline(name=name, params=BBH2Params)(bbh2))
        globals()[fn_name] = obj  # load_entrypoint: getattr(module, fn_name)
        return obj

    return genopt, make_flow, model, optimizer_model


# -- one (task, seed, variant) -----------------------------------------------------------


def step_credit_available() -> bool:
    from prefect_genopt.optimize import OptimizerSettings

    return "step_credit" in OptimizerSettings.model_fields


def step_credits(genopt: Any, proposal_id: str) -> list[dict[str, Any]]:
    """The steps step credit blamed for the failed units of one proposal's minibatch."""
    wh = genopt.Warehouse()
    try:
        wh.ingest_if_free()
        return wh.sql(
            "SELECT item_key, step, method, round(score, 3) AS score, reason FROM step_credit "
            "WHERE proposal_id = ? ORDER BY item_key",
            [proposal_id],
        )
    finally:
        wh.close()


def gate_candidate(
    genopt: Any,
    task: str,
    cache: Cache,
    current: dict[str, str],
    candidate: dict[str, str],
    candidate_id: str,
    proposal_id: str,
    evidence_run_ids: list[str],
) -> dict[str, Any]:
    """The replay gate on a proposal, with start_rollout's bookkeeping (rating, rejection:
    ``replay.gate.gate_proposal``)."""
    from prefect_genopt.replay.gate import gate_proposal
    from prefect_genopt.tunables import param_set_id

    pipeline = f"bbh2-{task}"
    stable_id = param_set_id(current)
    wh = genopt.Warehouse()
    try:
        wh.ingest()  # the validation run of the stable params must be in SQL
        before = _counts(cache)
        g = gate_proposal(
            pipeline,
            candidate,
            kpi=KPI,
            stable_param_set_id=stable_id,
            candidate_param_set_id=candidate_id,
            proposal_id=proposal_id,
            actor="bench_learning",
            direction="higher",
            tolerance=GATE_TOLERANCE,
            exclude_run_ids=evidence_run_ids,
            runs=1,
            warehouse=wh,
        )
        cost = _delta(_counts(cache), before)
        wh.ingest_if_free()
    finally:
        wh.close()
    return {
        "outcome": g.outcome,
        "reason": g.reason,
        "n_items": g.n_items,
        "stable_mean": g.stable_mean,
        "candidate_mean": g.candidate_mean,
        "effect": g.effect,
        "relative_effect": g.relative_effect,
        "llm_calls": g.llm_calls,
        "llm_tokens": g.llm_tokens,
        "task_calls_real": cost["real_calls"],
        "task_calls_cached": cost["cached_calls"],
        "real_seconds": cost["real_seconds"],
        "seconds": round(g.seconds, 1),
        "source_run_ids": g.source_run_ids,
        "replay_run_ids": g.replay_run_ids,
    }


def run_variant(
    genopt: Any,
    make_flow: Callable[[str], Any],
    model: str,
    cache: StepCache,
    task: str,
    seed: int,
    variant: str,
    updates: int,
    n_test: int,
    step_credit: bool,
    judge_stops: bool,
    optimizer_model: str | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    from prefect_genopt.optimize import OptimizerSettings, optimize

    examples = bench_bbh.load_examples(task, N_TRAIN + N_VAL + N_TEST, synthetic=quick)
    train = examples[:N_TRAIN]
    val = examples[N_TRAIN : N_TRAIN + N_VAL]
    test = examples[N_TRAIN + N_VAL :][:n_test]
    folder = bench_bbh.work_folder(WORK_FOLDER, quick)
    wpath = bench_bbh.fresh_warehouse(folder, f"{task}-s{seed}-{variant}")
    cache.reset_counts()
    pipe = make_flow(task)
    t_start = time.perf_counter()
    order = list(range(N_TRAIN))
    random.Random(seed).shuffle(order)

    memory_size = 0 if variant == "alone" else MEMORY_SIZE
    use_step = step_credit and variant in ("step", "gate")
    gated = variant == "gate"
    start = {"reason_prompt": START_REASON, "extract_prompt": START_EXTRACT}
    current = dict(start)
    history: list[dict[str, Any]] = []
    gates: list[dict[str, Any]] = []
    opt_seconds = 0.0
    tag = f"{task} s{seed} {variant}"
    for u in range(updates):
        batch = [train[order[(u * MINIBATCH + j) % N_TRAIN]] for j in range(MINIBATCH)]
        step: dict[str, Any] = {"update": u + 1, "minibatch": [e["id"] for e in batch]}
        if gated:  # a "production" run of the current (stable) params, for the gate to replay
            v = run_pinned(pipe, cache, current, val, "stable")
            step["stable_run_id"] = v["run_id"]
            step["stable_val_accuracy"] = v["accuracy"]
        mb = run_pinned(pipe, cache, current, batch, "train")
        step.update(
            {
                "minibatch_run_id": mb["run_id"],
                "minibatch_accuracy": mb["accuracy"],
                "parent": dict(current),
            }
        )
        log(f"{tag} update {u + 1}/{updates}: minibatch acc {mb['accuracy']:.2f}")
        extra: dict[str, Any] = {"step_credit": True} if use_step else {}
        settings = OptimizerSettings(
            pipeline=f"bbh2-{task}",
            search=False,
            model=optimizer_model or model,
            max_updates=1,
            minibatch_size=MINIBATCH,
            memory_size=memory_size,
            seed=seed,
            starting_artifact={"start_from": "values", "values": dict(current)},
            evidence_run_ids=[mb["run_id"]],
            kpi=KPI,
            max_output_tokens=MAX_OUTPUT_TOKENS,
            credit_horizon=CREDIT_HORIZON,
            timeout_s=OPTIMIZER_TIMEOUT_S,
            **extra,
            **(bench_bbh.QUICK_OPTIMIZER if quick else {}),
        )
        t_opt = time.perf_counter()
        said: list[str] = []

        def progress(line: str, said: list[str] = said) -> None:
            said.append(line)
            log(f"    optimizer: {line}")

        try:
            res = optimize(settings, progress=progress)
        except Exception as exc:  # noqa: BLE001 - recorded, the loop goes on
            step["status"] = "error"
            step["error"] = f"{type(exc).__name__}: {exc}"
            log(f"  optimizer error: {step['error']}")
            opt_seconds += time.perf_counter() - t_opt
            history.append(step)
            continue
        opt_seconds += time.perf_counter() - t_opt
        step["step_credit_note"] = next((x.strip() for x in said if "step credit:" in x), None)
        step["optimizer_seconds"] = round(time.perf_counter() - t_opt, 1)
        step["stop_reason"] = res.stop_reason
        if not res.updates:
            step["status"] = "none"
            history.append(step)
            continue
        row = bench_bbh.proposal_row(genopt, res.updates[0].proposal_id)
        step.update({k: row.get(k) for k in bench_bbh.PROPOSAL_FIELDS})
        if use_step:
            step["step_credits"] = bench_bbh._safe(step_credits, genopt, row["proposal_id"])
        log(describe_proposal(row))
        if row["status"] == "proposed":
            cand = {**current, **(row.get("candidate_values") or {})}
            step["candidate"] = cand
            log(f"  candidate: {json.dumps(cand)[:400]}")
            accept = True
            if gated:
                g = gate_candidate(
                    genopt,
                    task,
                    cache,
                    current,
                    cand,
                    row["candidate_param_set_id"],
                    row["proposal_id"],
                    [mb["run_id"]],
                )
                g.update({"update": u + 1, "parent": dict(current), "candidate": cand})
                gates.append(g)
                step["gate"] = {k: g[k] for k in g if k not in ("parent", "candidate")}
                accept = g["outcome"] != "stopped"  # skipped: nothing to replay, goes on
                log(
                    f"  gate {g['outcome']}: {g['reason']}; {g['llm_calls']} LLM calls "
                    f"({g['task_calls_real']} real), {g['seconds']:.0f}s"
                )
            step["accepted"] = accept
            if accept:
                current = cand
        history.append(step)

    log(f"{tag}: test ({len(test)} items) of the start and the final params")
    before = run_pinned(pipe, cache, start, test, "test")
    after = run_pinned(pipe, cache, current, test, "test")
    log(f"  {tag}: test {before['accuracy']:.3f} -> {after['accuracy']:.3f}")
    if gated and judge_stops:  # were the stops right? the stopped candidate vs its parent
        for g in gates:
            if g["outcome"] != "stopped":
                continue
            p = run_pinned(pipe, cache, g["parent"], test, "test")
            c = run_pinned(pipe, cache, g["candidate"], test, "test")
            g["test_parent"], g["test_candidate"] = p["accuracy"], c["accuracy"]
            g["stop_right"] = c["accuracy"] < p["accuracy"]
            log(
                f"  stopped candidate of update {g['update']}: test {c['accuracy']:.3f} vs "
                f"parent {p['accuracy']:.3f}"
            )
    statuses = [str(h.get("status")) for h in history]
    usage = bench_bbh._safe(bench_bbh.warehouse_usage, genopt)
    props = usage.get("proposals_table", {}) if isinstance(usage, dict) else {}
    return {
        "task": task,
        "seed": seed,
        "variant": variant,
        "memory_size": memory_size,
        "step_credit": use_step,
        "replay_gate": gated,
        "warehouse": str(wpath),
        "train_order": [train[i]["id"] for i in order],
        "final_params": current,
        "test_n": len(test),
        "test_start": before["accuracy"],
        "test_final": after["accuracy"],
        "test_start_answers": [[a["id"], a["answer"], a["ok"]] for a in before["answers"]],
        "test_final_answers": [[a["id"], a["answer"], a["ok"]] for a in after["answers"]],
        "proposals_by_status": {s: statuses.count(s) for s in sorted(set(statuses))},
        "accepted": sum(bool(h.get("accepted")) for h in history),
        "task_calls": dict(cache.counts),
        "task_calls_by_step": {k: dict(v) for k, v in cache.by_step.items()},
        "optimizer_calls": sum(h.get("attempts") or 0 for h in history),
        "optimizer_input_tokens": sum(h.get("input_tokens") or 0 for h in history),
        "optimizer_output_tokens": sum(h.get("output_tokens") or 0 for h in history),
        "optimizer_seconds": round(opt_seconds, 1),
        "blamed_steps": _blamed(history),
        "proposals_table": props,
        "warehouse_usage": usage,
        "gates": gates,
        "updates": history,
        "seconds": round(time.perf_counter() - t_start, 1),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _blamed(history: list[dict[str, Any]]) -> dict[str, int]:
    """How many failed units step credit blamed on each step, over all updates."""
    out: dict[str, int] = {}
    for h in history:
        rows = h.get("step_credits")
        for c in rows if isinstance(rows, list) else []:
            key = f"{c['step']} ({c['method']})"
            out[key] = out.get(key, 0) + 1
    return out


# -- report ------------------------------------------------------------------------------


PROMPT_SHOWN = 90


def _short(text: str) -> str:
    text = " ".join(text.split()).replace("`", "'")
    return text if len(text) <= PROMPT_SHOWN else text[:PROMPT_SHOWN] + f"… ({len(text)} chars)"


def _vindex(key: str) -> int:
    v = key.rsplit("/", 1)[-1]
    return VARIANTS.index(v) if v in VARIANTS else len(VARIANTS)


def merge(results: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """``results`` with ``other``'s runs folded in (a run saved in both is an error)."""
    both = set(results.get("runs_by_key", {})) & set(other.get("runs_by_key", {}))
    if both:
        raise SystemExit(f"runs saved in both files: {sorted(both)}")
    results.setdefault("runs_by_key", {}).update(other.get("runs_by_key", {}))
    results.setdefault("discarded", {}).update(other.get("discarded", {}))
    results.setdefault("runs", []).extend(other.get("runs", []))
    order = [*results.get("tasks_order", []), *other.get("tasks_order", [])]
    results["tasks_order"] = list(dict.fromkeys(order))
    return results


def report(results: dict[str, Any]) -> str:
    """Markdown tables of the saved results: every (task, seed, variant), then the gates."""
    runs = results.get("runs_by_key", {})
    out: list[str] = []
    for task in results.get("tasks_order", []):
        rows = [r for r in runs.values() if r["task"] == task]
        rows.sort(key=lambda r: (r["seed"], VARIANTS.index(r["variant"])))
        if not rows:
            continue
        out += [
            f"**{task}** ({len(rows)} run(s); test on {rows[0]['test_n']} items)",
            "",
            "| seed | variant | test start → final | proposed / rejected / no-change | "
            "accepted | task calls real (+cached) | optimizer calls | optimizer tokens in + out "
            "| optimizer min | wall min | step credit blamed |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            st = r["proposals_by_status"]
            tc = r["task_calls"]
            label = r["variant"] + ("" if r["variant"] != "gate" or r["step_credit"] else "*")
            out.append(
                f"| {r['seed']} | {label} | {r['test_start']:.3f} → **{r['test_final']:.3f}** | "
                f"{st.get('proposed', 0)} / {st.get('rejected', 0)} / {st.get('no_change', 0)}"
                + (f" (+{st['error']} error)" if st.get("error") else "")
                + f" | {r['accepted']} | {tc['real_calls']} (+{tc['cached_calls']}) | "
                f"{r['optimizer_calls']} | {r['optimizer_input_tokens']} + "
                f"{r['optimizer_output_tokens']} | {r['optimizer_seconds'] / 60:.1f} | "
                f"{r['seconds'] / 60:.1f} | "
                + (", ".join(f"{k}: {n}" for k, n in (r.get("blamed_steps") or {}).items()) or "")
                + " |"
            )
        by_variant: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            by_variant.setdefault(r["variant"], []).append(r)
        for v, rs in by_variant.items():
            out.append(
                f"| mean ({len(rs)}) | {v} | {mean([r['test_start'] for r in rs]):.3f} → "
                f"**{mean([r['test_final'] for r in rs]):.3f}** | | "
                f"{mean([r['accepted'] for r in rs]):.1f} | | "
                f"{mean([r['optimizer_calls'] for r in rs]):.1f} | "
                f"{mean([r['optimizer_input_tokens'] for r in rs]):.0f} + "
                f"{mean([r['optimizer_output_tokens'] for r in rs]):.0f} | | | |"
            )
        out.append("")
    gates = [(r, g) for r in runs.values() for g in r.get("gates", [])]
    if gates:
        out += [
            "**Replay gates**",
            "",
            "| task | seed | update | outcome | items | stable → candidate (val) | gate LLM calls "
            "(real) | gate s | test: parent vs stopped candidate |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r, g in sorted(gates, key=lambda x: (x[0]["task"], x[0]["seed"], x[1]["update"])):
            judged = (
                f"{g['test_parent']:.3f} vs {g['test_candidate']:.3f} "
                f"({'right' if g['stop_right'] else 'not worse: wrong stop'})"
                if "test_parent" in g
                else ""
            )
            sm, cm = g.get("stable_mean"), g.get("candidate_mean")
            means = f"{sm:.2f} → {cm:.2f}" if sm is not None and cm is not None else "-"
            out.append(
                f"| {r['task']} | {r['seed']} | {g['update']} | {g['outcome']} | "
                f"{g['n_items']} | {means} | {g['llm_calls']} ({g['task_calls_real']}) | "
                f"{g['seconds']:.0f} | {judged} |"
            )
        out.append("")
    if any(r["variant"] == "gate" and not r["step_credit"] for r in runs.values()):
        out.append("\\* gate run without step credit (the library had no `step_credit` yet).")
    not_run = results.get("not_run") or {}
    if not_run:
        out += ["", "Not run: " + "; ".join(f"{k}: {v}" for k, v in sorted(not_run.items()))]
    for key, d in sorted((results.get("discarded") or {}).items()):
        r = d["record"]
        out += [
            "",
            f"Discarded and re-run: {key} (had scored {r['test_start']:.3f} → "
            f"{r['test_final']:.3f}): {d['reason']}",
        ]
    out += ["", f"Final params (first {PROMPT_SHOWN} characters; the JSON has them whole):", ""]
    for key in sorted(runs, key=lambda k: (k.split("/")[0], k.split("/")[1], _vindex(k))):
        fp = runs[key]["final_params"]
        out.append(
            f"- {key}: reason_prompt `{_short(fp['reason_prompt'])}`; extract_prompt "
            f"`{_short(fp['extract_prompt'])}`"
        )
    return "\n".join(out)


# -- main --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated BBH tasks")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {VARIANTS}")
    ap.add_argument("--updates", type=int, default=UPDATES, help="optimizer updates per run")
    ap.add_argument("--test-n", type=int, default=N_TEST, help="test items (first N)")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="1 task, 1 seed, 1 update, 5 test items, scripted models; writes to the work "
        "directory (a plumbing check)",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help=f"results file (default {common.results_path(NAME)})"
    )
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="task cache (default <work>/bbh-learning/cache.json; quick: in bbh-learning-quick/)",
    )
    ap.add_argument(
        "--no-judge-stops",
        action="store_true",
        help="do not test the gate's stopped candidates (and their parents) on the test set",
    )
    ap.add_argument("--report", action="store_true", help="print the saved results as Markdown")
    ap.add_argument(
        "--merge",
        type=Path,
        metavar="OTHER_JSON",
        help="fold the runs of another results file (a second process's --out) into --out",
    )
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
    updates, n_test = args.updates, args.test_n
    if args.quick:
        tasks, seeds, updates, n_test = tasks[:1], seeds[:1], 1, 5
    out = args.out or common.results_path(NAME, quick=args.quick)
    folder = common.settings().work / bench_bbh.work_folder(WORK_FOLDER, args.quick)
    cache_path = args.cache or folder / "cache.json"
    if args.report:
        print(report(json.loads(out.read_text())))
        return 0
    if args.merge:
        merged = merge(json.loads(out.read_text()), json.loads(args.merge.read_text()))
        save_json(out, merged, indent=1)
        log(f"merged {args.merge} into {out}: {len(merged['runs_by_key'])} run(s)")
        return 0
    common.prefect_env()
    os.environ.setdefault("GENOPT_LOCAL_THREADS", LOCAL_THREADS)
    if args.quick:  # a plumbing check starts afresh, and never shares the real cache
        bench_bbh.start_quick(WORK_FOLDER, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_path.parent.mkdir(parents=True, exist_ok=True)

    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    info = library_state()
    step_credit = step_credit_available()
    results.setdefault("runs", []).append(
        {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "git": info,
            "argv": sys.argv[1:],
            "step_credit_in_library": step_credit,
            "local_threads": os.environ.get("GENOPT_LOCAL_THREADS"),
            "quick": args.quick,
        }
    )
    results["tasks_order"] = list(dict.fromkeys([*results.get("tasks_order", []), *tasks]))
    results["protocol"] = {
        "pipeline": "two LLM calls per item: reason (reason_prompt as system message, the "
        f"question as user message, max_tokens {REASON_MAX_TOKENS}), then extract "
        "(extract_prompt as system message, question + reasoning as user message, max_tokens "
        f"{EXTRACT_MAX_TOKENS}); temperature 0; answer = first \\b(yes|no)\\b of extract's reply",
        "start_params": {"reason_prompt": START_REASON, "extract_prompt": START_EXTRACT},
        "split": f"first {N_TRAIN} train, next {N_VAL} validation, next {N_TEST} test",
        "updates": updates,
        "minibatch": MINIBATCH,
        "test_n": n_test,
        "seed": "permutation of the train examples into minibatches, and the optimizer's seed",
        "variants": {
            "alone": "memory_size=0; every proposed candidate becomes current",
            "memory": f"memory_size={MEMORY_SIZE}",
            "step": "memory + step_credit=True",
            "gate": "step (or memory, if the library has no step_credit) + replay gate on a "
            f"{N_VAL}-item stable-arm validation run of the current params each update; the "
            "candidate becomes current only if the gate does not stop it",
        },
        "optimizer": {
            "model": "scripted (--quick)"
            if args.quick
            else "embedded Qwen2.5-Coder-1.5B-Instruct Q4_K_M (also the task model)",
            "max_output_tokens": MAX_OUTPUT_TOKENS,
            "credit_horizon": CREDIT_HORIZON,
            "timeout_s": OPTIMIZER_TIMEOUT_S,
            "kpi": KPI,
            "evidence": "the minibatch run only (evidence_run_ids)",
            "starting_artifact": "start_from=values, the current params",
        },
        "gate": {"tolerance": GATE_TOLERANCE, "tolerance_mode": "relative", "runs": 1},
        "cache": "task replies cached by (system prompt + max_tokens, user content), replayed "
        "through litellm.completion(mock_response=...); counted separately",
    }
    # Candidate prompts may quote parts of BBH examples (the optimizer copies them): the
    # results carry the data's canary string, read from the data file.
    data_file = bench_bbh.data_dir() / f"{tasks[0]}.json"
    if data_file.is_file() or not args.quick:
        results["canary"] = json.loads(data_file.read_text())["canary"]
    else:
        log(f"{data_file} is missing; --quick runs on synthetic questions")
    results.setdefault("runs_by_key", {})
    results.setdefault("not_run", {})
    save_json(out, results, indent=1)

    todo = [
        (t, s, v)
        for t in tasks
        for s in seeds
        for v in variants
        if f"{t}/{s}/{v}" not in results["runs_by_key"]
    ]
    skipped = [f"{t}/{s}/{v}" for t in tasks for s in seeds for v in variants]
    skipped = [k for k in skipped if k in results["runs_by_key"]]
    if skipped:
        log(f"already saved, skipped: {skipped}")
    if not step_credit:
        log(
            "OptimizerSettings has no step_credit: variant 'step' is not run; 'gate' runs on memory"
        )
        for t, s, v in todo:
            if v == "step":
                results["not_run"][f"{t}/{s}/step"] = "OptimizerSettings has no step_credit field"
        todo = [x for x in todo if x[2] != "step"]
    else:
        for k in [k for k in results["not_run"] if k.endswith("/step")]:
            results["not_run"].pop(k)
    save_json(out, results, indent=1)
    if not todo:
        print(report(results))
        return 0
    log(
        f"{common.describe_library(info)}; "
        f"GENOPT_LOCAL_THREADS={os.environ.get('GENOPT_LOCAL_THREADS')}; step_credit "
        f"{step_credit}; todo {[f'{t}/{s}/{v}' for t, s, v in todo]}"
    )
    cache = StepCache(cache_path)
    genopt, make_flow, model, optimizer_model = build(cache, quick=args.quick)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        log("prefect test harness up")
        for task, seed, variant in todo:
            key = f"{task}/{seed}/{variant}"
            log(f"== {key}")
            rec = run_variant(
                genopt,
                make_flow,
                model,
                cache,
                task,
                seed,
                variant,
                updates,
                n_test,
                step_credit,
                not args.no_judge_stops,
                optimizer_model,
                args.quick,
            )
            rec["git_at_start"] = info
            results["runs_by_key"][key] = rec
            save_json(out, results, indent=1)
            log(
                f"saved {key}: test {rec['test_start']:.3f} -> {rec['test_final']:.3f} "
                f"({rec['seconds'] / 60:.1f} min)"
            )
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Optimizer quality on BBH: the whole genopt loop with the embedded local model.

A one-call pipeline answers BIG-Bench Hard yes/no questions with a tunable
instruction (the system message). The embedded model (Qwen2.5-Coder-1.5B, via
``prefect_genopt.local_model``) is both the task model and the optimizer. Each
update runs the pipeline on a minibatch of 3 train examples, pinned to the current
best instruction, then calls ``prefect_genopt.optimize.optimize`` on that run's
evidence; a ``proposed`` candidate is kept when its validation accuracy is at
least the current best's. The final best is tested on 50 held-out examples.

Protocol (from the issue): split 15 train / 10 validation / 50 test (the first 75
examples, in file order); task call temperature 0, max_tokens 16, answer = first
``\\b(yes|no)\\b`` in the reply (case-insensitive), exact match with the target;
5 updates of minibatch 3; 3 seeds (the seed picks which train examples form each
minibatch and is the optimizer's ``seed``).

Everything goes through the library: ``@flow`` + ``@genopt.pipeline`` +
``@genopt.task``, ``genopt.current_params``, ``genopt.feedback``,
``pinned_params``, ``optimize(OptimizerSettings(...))`` and the warehouse
(one fresh warehouse file per task and seed in ``<work>/bbh``, one Prefect test harness
for the whole process). The data is read from ``<data>/bbh`` (directories: see
:mod:`bench.common`).

The task model is deterministic at temperature 0, so its replies are cached by
(instruction, input) in ``bench/results/bbh_cache.json``; a cached reply is
replayed through ``litellm.completion(mock_response=...)`` so the run's trace
(what the optimizer reads) is the same as for a real call. Real and cached
calls are counted separately.

Results are saved after each task+seed to ``bench/results/bbh.json`` (the run is
resumable: finished task+seed pairs are skipped).

``--quick`` is a plumbing check without the embedded model: 1 task, 1 seed, 2 updates on
6 train / 3 validation / 5 test examples, answered by scripted models (the task model
answers yes or no by a hash of instruction and question; the optimizer appends a sentence
to the instruction, see :func:`quick_model`); it starts afresh each time and writes
``bbh.quick.json`` and its own cache in the work directory. Without the BBH data it runs on
synthetic questions.

    GENOPT_LOCAL_THREADS=2 python -m bench.bench_bbh                 # ~1.5-3 h on 2 cores
    python -m bench.bench_bbh --quick                                # plumbing check, < 1 min
    python -m bench.bench_bbh --tasks navigate --seeds 0,1
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from bench import common
from bench.common import library_state, log, mean, save_json

START_INSTRUCTION = "Answer the question."


class Split(NamedTuple):
    """How many examples, in file order, go to train, validation and test."""

    train: int
    val: int
    test: int

    @property
    def total(self) -> int:
        return self.train + self.val + self.test


SPLIT = Split(15, 10, 50)
QUICK_SPLIT = Split(6, 3, 5)
MINIBATCH = 3
UPDATES = 5
SEEDS = (0, 1, 2)
TASKS = ("sports_understanding", "navigate")
TASK_MAX_TOKENS = 16
#: optimizer settings chosen here (the issue leaves them open); recorded in the results
MEMORY_SIZE = 4  # every earlier update of the same seed (at most 4 before the 5th)
MAX_OUTPUT_TOKENS = 700  # reasoning <= 800 chars + an instruction <= 1000 chars, as JSON
CREDIT_HORIZON = {"max_steps": 12, "max_value_chars": 1200, "include_llm_messages": True}
OPTIMIZER_TIMEOUT_S = 900.0  # the shared 2-core machine is slow; the default is 300 s

ANSWER_RE = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
#: the scripted provider of ``--quick``: routes ``task`` and ``optimizer``
QUICK_PROVIDER = "bench-bbh"
#: optimizer settings of ``--quick`` (the scripted optimizer answers plain text)
QUICK_OPTIMIZER = {"response_format": "none"}


def data_dir() -> Path:
    """The BBH task files: ``<data>/bbh`` (``GENOPT_BENCH_DATA``)."""
    return common.settings().data / "bbh"


def parse_answer(text: str) -> str | None:
    """The first ``yes``/``no`` word of a reply, lower-cased, or None.

    Example:
        >>> parse_answer("Yes, the sentence is plausible."), parse_answer("Maybe.")
        ('yes', None)
    """
    m = ANSWER_RE.search(text or "")
    return m.group(1).lower() if m else None


def synthetic_examples(task: str, n: int) -> list[dict[str, str]]:
    """``n`` yes/no questions made up here, for ``--quick`` without the BBH data.

    Example:
        >>> synthetic_examples("navigate", 1)[0]["target"] in ("Yes", "No")
        True
    """
    rng = random.Random(task)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        out.append({"input": f"Is {a} greater than {b}?", "target": "Yes" if a > b else "No"})
    return out


def load_examples(task: str, n: int = SPLIT.total, synthetic: bool = False) -> list[dict[str, str]]:
    """The first ``n`` examples of a BBH task (``synthetic``: made-up ones when the data
    file is missing)."""
    path = data_dir() / f"{task}.json"
    if synthetic and not path.is_file():
        examples = synthetic_examples(task, n)
    else:
        examples = json.loads(path.read_text())["examples"][:n]
    return [
        {"id": f"{task[:5]}-{i:03d}", "input": e["input"], "target": str(e["target"])}
        for i, e in enumerate(examples)
    ]


def quick_answer(call: Any) -> str:
    """The ``--quick`` task model: ``yes`` or ``no`` by a hash of the messages (so a new
    instruction changes some answers)."""
    digest = hashlib.sha256(f"{call.system}\0{call.user}".encode()).digest()
    return "Yes." if digest[0] % 2 else "No."


_REWRITES = itertools.count(1)
_STRING_VARIABLE = re.compile(r'^\(string\) (\w+) = ("(?:[^"\\]|\\.)*")$', re.M)


def quick_optimizer(call: Any) -> str:
    """The ``--quick`` optimizer: at once, every string variable of the problem's
    #Variables gets a sentence added, numbered by the calls so far (so every answer
    proposes a new candidate).

    Example:
        >>> from prefect_genopt.testing import Call
        >>> problem = '#Variables\\n(string) instruction = "Answer."\\n'
        >>> reply = quick_optimizer(Call("o/x", "x", [{"role": "user", "content": problem}]))
        >>> json.loads(reply)["suggestion"]["instruction"].startswith("Answer. Reply with yes")
        True
    """
    prompt = next((str(m["content"]) for m in call.messages if m["role"] == "user"), "")
    n = next(_REWRITES)
    suggestion = {
        name: json.loads(value) + f" Reply with yes or no first. ({n})"
        for name, value in _STRING_VARIABLE.findall(prompt)
    }
    return json.dumps({"reasoning": "state the answer format", "suggestion": suggestion})


def quick_model() -> tuple[str, str]:
    """Register the ``--quick`` scripted models; returns (task model, optimizer model)."""
    from prefect_genopt import testing

    def respond(call: testing.Call) -> str:
        return quick_optimizer(call) if call.route == "optimizer" else quick_answer(call)

    testing.register(QUICK_PROVIDER, respond)
    return f"{QUICK_PROVIDER}/task", f"{QUICK_PROVIDER}/optimizer"


# -- the task-call cache -------------------------------------------------------------


class Cache:
    """Task model replies keyed by (instruction, input); counts real and cached calls."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, dict[str, Any]] = (
            json.loads(path.read_text()) if path.is_file() else {}
        )
        self.reset_counts()

    def reset_counts(self) -> None:
        self.counts = {
            "real_calls": 0,
            "real_input_tokens": 0,
            "real_output_tokens": 0,
            "real_seconds": 0.0,
            "cached_calls": 0,
            "cached_input_tokens": 0,
            "cached_output_tokens": 0,
        }

    @staticmethod
    def key(instruction: str, question: str) -> str:
        return hashlib.sha256(f"{instruction}\0{question}".encode()).hexdigest()

    def save(self) -> None:
        save_json(self.path, self.data, indent=1)

    def complete(
        self, key: str, model: str, messages: list[dict[str, str]], max_tokens: int
    ) -> tuple[str, bool]:
        """``(text, cached)``: one task-model call at temperature 0 through litellm. A
        reply cached under ``key`` is replayed via ``mock_response``, so the call is traced
        exactly like a real one; a real reply is cached (and saved at once)."""
        import litellm
        from litellm import ModelResponse

        hit = self.data.get(key)
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        if hit is not None:
            kwargs["mock_response"] = ModelResponse(
                model=model,
                choices=[
                    {
                        "message": {"role": "assistant", "content": hit["text"]},
                        "finish_reason": hit.get("finish_reason") or "stop",
                    }
                ],
                usage={
                    "prompt_tokens": hit["input_tokens"],
                    "completion_tokens": hit["output_tokens"],
                    "total_tokens": hit["input_tokens"] + hit["output_tokens"],
                },
            )
        started = time.perf_counter()
        resp = litellm.completion(**kwargs)
        seconds = time.perf_counter() - started
        text = resp.choices[0].message.content or ""
        c = self.counts
        if hit is not None:
            c["cached_calls"] += 1
            c["cached_input_tokens"] += hit["input_tokens"]
            c["cached_output_tokens"] += hit["output_tokens"]
            return text, True
        n_in = int(resp.usage.prompt_tokens or 0)
        n_out = int(resp.usage.completion_tokens or 0)
        self.data[key] = {
            "text": text,
            "finish_reason": resp.choices[0].finish_reason,
            "input_tokens": n_in,
            "output_tokens": n_out,
            "seconds": round(seconds, 3),
        }
        c["real_calls"] += 1
        c["real_input_tokens"] += n_in
        c["real_output_tokens"] += n_out
        c["real_seconds"] += seconds
        self.save()  # a stopped run keeps every reply it paid for
        return text, False


# -- the pipeline ----------------------------------------------------------------------


def build(cache: Cache, quick: bool = False) -> tuple[Any, Any, str, str]:
    """Import the library and define the pipeline; returns (genopt, make_flow, task model,
    optimizer model): the embedded model for both, or with ``quick`` the scripted ones."""
    from prefect import flow
    from prefect.runtime import flow_run

    import prefect_genopt as genopt
    from prefect_genopt import local_model

    model, optimizer_model = quick_model() if quick else (local_model.register(),) * 2

    class BBHParams(genopt.Tunables):
        """What the optimizer may change in the BBH pipeline."""

        instruction: str = genopt.prompt(
            START_INSTRUCTION,
            description="system message of the answering model (a small LLM that sees this "
            "instruction and then the question, and answers in at most 16 tokens); the first "
            "word 'yes' or 'no' in its reply is taken as its answer",
            max_length=1000,
        )

    def answer_question(example_id: str, question: str) -> str:
        """Ask the model the question, with the tunable instruction as system message."""
        p = genopt.current_params(item_key=example_id)
        messages = [
            {"role": "system", "content": p.instruction},
            {"role": "user", "content": question},
        ]
        text, _ = cache.complete(
            cache.key(p.instruction, question), model, messages, TASK_MAX_TOKENS
        )
        return text

    answer_question.__qualname__ = "answer_question"  # the name the optimizer reads in #Code
    answer_question = genopt.task(answer_question)

    def make_flow(task: str) -> Any:
        name = f"bbh-{task}"

        def bbh(examples: list[dict[str, str]]) -> dict[str, Any]:
            """Answer yes/no questions with one small-LLM call each and score the answers.

            The instruction is the system message, the question the user message; the first
            'yes' or 'no' in the reply is the answer, compared with the expected one.
            """
            replies = [answer_question(e["id"], e["input"]) for e in examples]
            answers = []
            correct = 0
            for e, reply in zip(examples, replies, strict=True):
                got = parse_answer(reply)
                ok = got is not None and got == e["target"].strip().lower()
                correct += ok
                answers.append({"id": e["id"], "reply": reply, "answer": got, "ok": ok})
                genopt.feedback(
                    "correct",
                    1.0 if ok else 0.0,
                    item_key=e["id"],
                    comment=f"expected {e['target']}, got {got if got else repr(reply)}",
                )
            accuracy = correct / len(examples)
            genopt.feedback("accuracy", accuracy)
            return {"run_id": str(flow_run.id), "accuracy": accuracy, "answers": answers}

        bbh.__name__ = bbh.__qualname__ = name.replace("-", "_")
        return flow(name=name, log_prints=False)(genopt.pipeline(name=name, params=BBHParams)(bbh))

    return genopt, make_flow, model, optimizer_model


# -- one task + seed -------------------------------------------------------------------


def run_pinned(
    pipe: Any, cache: Cache, values: dict[str, str], examples: list[dict], arm: str
) -> dict[str, Any]:
    """One pipeline run on ``examples`` with ``values`` pinned, on arm ``arm``."""
    from prefect_genopt.pipeline import pinned_params

    with pinned_params(values, arm=arm):
        out = pipe(examples=examples)
    cache.save()
    return out


def work_folder(name: str, quick: bool) -> str:
    """A BBH benchmark's folder in the work directory: ``name``, or ``name-quick`` for
    ``--quick`` (its own cache and warehouses, emptied by :func:`start_quick`)."""
    return f"{name}-quick" if quick else name


def start_quick(name: str, out: Path) -> None:
    """A ``--quick`` run starts afresh: its results file and its work folder go."""
    out.unlink(missing_ok=True)
    shutil.rmtree(common.settings().work / work_folder(name, True), ignore_errors=True)


def fresh_warehouse(folder: str, name: str) -> Path:
    """A new warehouse file ``<work>/<folder>/<name>-<UTC time>.duckdb`` (its spool and WAL
    removed), made the process's ``GENOPT_WAREHOUSE``."""
    wpath = common.work_dir(folder) / f"{name}-{datetime.now(UTC):%Y%m%d%H%M%S}.duckdb"
    for p in (wpath, wpath.with_name(wpath.name + ".spool"), wpath.with_name(wpath.name + ".wal")):
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    os.environ["GENOPT_WAREHOUSE"] = str(wpath)
    return wpath


#: what a step of the history records of its proposal
PROPOSAL_FIELDS = (
    "proposal_id",
    "status",
    "status_reason",
    "reasoning",
    "suggestion",
    "attempts",
    "input_tokens",
    "output_tokens",
    "llm_seconds",
    "prompt_chars",
    "response_format",
)


def describe_proposal(row: dict[str, Any]) -> str:
    """One log line: a proposal's status, optimizer calls, tokens and seconds."""
    return (
        f"  {row['status']}"
        + (f" ({row.get('status_reason')})" if row.get("status_reason") else "")
        + f", {row.get('attempts')} call(s), {row.get('input_tokens')}+"
        f"{row.get('output_tokens')} tokens, {row.get('llm_seconds') or 0:.0f}s"
    )


def proposal_row(genopt: Any, proposal_id: str) -> dict[str, Any]:
    wh = genopt.Warehouse()
    try:
        rows = wh.sql(
            "SELECT proposal_id, status, status_reason, reasoning, suggestion, diff, attempts, "
            "input_tokens, output_tokens, llm_seconds, prompt_chars, response_format, "
            "candidate_param_set_id FROM proposals WHERE proposal_id = ?",
            [proposal_id],
        )
        row = rows[0] if rows else {"proposal_id": proposal_id, "status": "missing"}
        cand = row.get("candidate_param_set_id")
        if cand:
            vals = wh.sql('SELECT "values" FROM param_sets WHERE param_set_id = ? LIMIT 1', [cand])
            row["candidate_values"] = json.loads(vals[0]["values"]) if vals else None
    finally:
        wh.close()
    for k in ("suggestion", "diff"):
        for _ in range(2):  # the proposals table stores `suggestion` as a JSON string of JSON
            if isinstance(row.get(k), str):
                try:
                    row[k] = json.loads(row[k])
                except ValueError:
                    break
    return row


def warehouse_usage(genopt: Any) -> dict[str, Any]:
    """LLM calls and tokens from the warehouse: task calls (pipeline set) vs optimizer."""
    wh = genopt.Warehouse()
    try:
        rows = wh.sql(
            "SELECT pipeline, sum(calls) AS calls, sum(input_tokens) AS input_tokens, "
            "sum(output_tokens) AS output_tokens, sum(errors) AS errors, "
            "median(median_latency_ms) AS median_latency_ms FROM llm_usage GROUP BY pipeline"
        )
        props = wh.sql(
            "SELECT count(*) AS updates, sum(attempts) AS calls, sum(input_tokens) AS "
            "input_tokens, sum(output_tokens) AS output_tokens, sum(llm_seconds) AS seconds "
            "FROM proposals"
        )
    finally:
        wh.close()
    return {
        "llm_usage_view": [
            {k: (float(v) if isinstance(v, int | float) else v) for k, v in r.items()} for r in rows
        ],
        "proposals_table": {k: (float(v) if v is not None else None) for k, v in props[0].items()},
    }


def _safe(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, or the error as a string (a bookkeeping bug must not lose a seed)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def run_seed(
    genopt: Any,
    make_flow: Any,
    model: str,
    cache: Cache,
    task: str,
    seed: int,
    updates: int,
    optimizer_model: str | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    from prefect_genopt.optimize import OptimizerSettings, optimize

    split = QUICK_SPLIT if quick else SPLIT
    examples = load_examples(task, split.total, synthetic=quick)
    train = examples[: split.train]
    val = examples[split.train : split.train + split.val]
    test = examples[split.train + split.val :]
    wpath = fresh_warehouse(work_folder("bbh", quick), f"{task}-s{seed}")
    cache.reset_counts()
    pipe = make_flow(task)
    t_start = time.perf_counter()
    rng = random.Random(seed)
    order = list(range(split.train))
    rng.shuffle(order)

    current = START_INSTRUCTION
    log(f"{task} seed {seed}: validation of the start instruction")
    v = run_pinned(pipe, cache, {"instruction": current}, val, "eval")
    current_val = v["accuracy"]
    log(f"  start instruction: val {current_val:.2f}")
    history: list[dict[str, Any]] = []
    opt_seconds = 0.0
    for u in range(updates):
        idx = [order[(u * MINIBATCH + j) % split.train] for j in range(MINIBATCH)]
        batch = [train[i] for i in idx]
        mb = run_pinned(pipe, cache, {"instruction": current}, batch, "train")
        log(
            f"{task} seed {seed} update {u + 1}/{updates}: minibatch {[e['id'] for e in batch]} "
            f"acc {mb['accuracy']:.2f} (run {mb['run_id'][:8]})"
        )
        settings = OptimizerSettings(
            pipeline=f"bbh-{task}",
            search=False,
            model=optimizer_model or model,
            max_updates=1,
            minibatch_size=MINIBATCH,
            memory_size=MEMORY_SIZE,
            seed=seed,
            starting_artifact={"start_from": "values", "values": {"instruction": current}},
            evidence_run_ids=[mb["run_id"]],
            kpi="correct",
            max_output_tokens=MAX_OUTPUT_TOKENS,
            credit_horizon=CREDIT_HORIZON,
            timeout_s=OPTIMIZER_TIMEOUT_S,
            **(QUICK_OPTIMIZER if quick else {}),
        )
        step: dict[str, Any] = {
            "update": u + 1,
            "minibatch": [e["id"] for e in batch],
            "minibatch_run_id": mb["run_id"],
            "minibatch_accuracy": mb["accuracy"],
            "parent_instruction": current,
            "parent_val": current_val,
        }
        t_opt = time.perf_counter()
        try:
            res = optimize(settings, progress=lambda s: log(f"    optimizer: {s}"))
        except Exception as exc:  # noqa: BLE001 - recorded, the loop goes on
            step["status"] = "error"
            step["error"] = f"{type(exc).__name__}: {exc}"
            log(f"  optimizer error: {step['error']}")
            history.append(step)
            opt_seconds += time.perf_counter() - t_opt
            continue
        opt_seconds += time.perf_counter() - t_opt
        step["optimizer_seconds"] = round(time.perf_counter() - t_opt, 1)
        step["optimizer_llm_calls"] = res.llm_calls
        step["stop_reason"] = res.stop_reason
        if not res.updates:
            step["status"] = "none"
            history.append(step)
            continue
        row = proposal_row(genopt, res.updates[0].proposal_id)
        step.update({k: row.get(k) for k in PROPOSAL_FIELDS})
        log(describe_proposal(row))
        if row["status"] == "proposed":
            cand = (row.get("candidate_values") or {}).get("instruction")
            step["candidate_instruction"] = cand
            log(f"  candidate: {cand!r}")
            cv = run_pinned(pipe, cache, {"instruction": cand}, val, "eval")
            step["candidate_val"] = cv["accuracy"]
            step["accepted"] = cv["accuracy"] >= current_val
            step["choice"] = (
                f"candidate val {cv['accuracy']:.2f} "
                f"{'>=' if step['accepted'] else '<'} current {current_val:.2f}: "
                f"{'keep the candidate' if step['accepted'] else 'keep the current one'}"
                + (" (tie goes to the newer)" if cv["accuracy"] == current_val else "")
            )
            log(f"  {step['choice']}")
            if step["accepted"]:
                current, current_val = cand, cv["accuracy"]
        history.append(step)

    log(f"{task} seed {seed}: test before (start instruction) and after")
    before = run_pinned(pipe, cache, {"instruction": START_INSTRUCTION}, test, "test")
    after = run_pinned(pipe, cache, {"instruction": current}, test, "test")
    log(f"  test {before['accuracy']:.2f} -> {after['accuracy']:.2f}; final {current!r}")
    statuses = [h.get("status") for h in history]
    opt_calls = sum(h.get("attempts") or 0 for h in history)
    return {
        "task": task,
        "seed": seed,
        "warehouse": str(wpath),
        "train_order": [train[i]["id"] for i in order],
        "final_instruction": current,
        "final_val": current_val,
        "test_before": before["accuracy"],
        "test_after": after["accuracy"],
        "test_before_answers": before["answers"],
        "test_after_answers": after["answers"],
        "proposals_by_status": {s: statuses.count(s) for s in sorted(set(map(str, statuses)))},
        "task_calls": dict(cache.counts),
        "optimizer_calls": opt_calls,
        "optimizer_input_tokens": sum(h.get("input_tokens") or 0 for h in history),
        "optimizer_output_tokens": sum(h.get("output_tokens") or 0 for h in history),
        "optimizer_seconds": round(opt_seconds, 1),
        "warehouse_usage": _safe(warehouse_usage, genopt),
        "updates": history,
        "seconds": round(time.perf_counter() - t_start, 1),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# -- main ------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    """Markdown tables of the saved results: one per task, one row per seed, then the mean."""
    out: list[str] = []
    for task, seeds in results.get("tasks", {}).items():
        rows = [seeds[k] for k in sorted(seeds, key=int)]
        out += [
            f"**{task}** ({len(rows)} seed(s))",
            "",
            "| seed | test before → after | val start → final | proposed / rejected / "
            "no-change | accepted | task calls real (+cached) | task tokens real (+cached) | "
            "optimizer calls | optimizer tokens in + out | optimizer s | wall min |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            tc = r["task_calls"]
            st = r["proposals_by_status"]
            ups = r["updates"]
            val0 = ups[0]["parent_val"] if ups else r["final_val"]
            acc = sum(bool(u.get("accepted")) for u in ups)
            real_tok = tc["real_input_tokens"] + tc["real_output_tokens"]
            cached_tok = tc["cached_input_tokens"] + tc["cached_output_tokens"]
            out.append(
                f"| {r['seed']} | {r['test_before']:.2f} → **{r['test_after']:.2f}** | "
                f"{val0:.2f} → {r['final_val']:.2f} | {st.get('proposed', 0)} / "
                f"{st.get('rejected', 0)} / {st.get('no_change', 0)}"
                + (f" (+{st['error']} error)" if st.get("error") else "")
                + f" | {acc} | {tc['real_calls']} (+{tc['cached_calls']}) | "
                f"{real_tok} (+{cached_tok}) | {r['optimizer_calls']} | "
                f"{r['optimizer_input_tokens']} + {r['optimizer_output_tokens']} | "
                f"{r['optimizer_seconds']:.0f} | {r['seconds'] / 60:.1f} |"
            )
        if rows:
            out.append(
                f"| **mean** | {mean([r['test_before'] for r in rows]):.3f} → "
                f"**{mean([r['test_after'] for r in rows]):.3f}** | → "
                f"{mean([r['final_val'] for r in rows]):.2f} | | | | | "
                f"{mean([r['optimizer_calls'] for r in rows]):.1f} | "
                f"{mean([r['optimizer_input_tokens'] for r in rows]):.0f} + "
                f"{mean([r['optimizer_output_tokens'] for r in rows]):.0f} | | |"
            )
        out += ["", "Final instructions:", ""]
        out += [f"- seed {r['seed']}: `{r['final_instruction']}`" for r in rows]
        out.append("")
    return "\n".join(out)


def replies(results: dict[str, Any]) -> str:
    """Every optimizer call's raw reply, classified (read from the saved warehouses).

    Each optimizer LLM call is a ``gen_ai`` span outside any pipeline run; its stored
    completion is parsed the way the library does (``parse_reply``) and compared with
    the instruction it was asked to improve.
    """
    import duckdb

    from prefect_genopt.optimize.llm import ReplyError, parse_reply

    lines: list[str] = []
    for task, seeds in results.get("tasks", {}).items():
        kinds: dict[str, int] = {}
        n = 0
        for key in sorted(seeds, key=int):
            r = seeds[key]
            path = Path(r["warehouse"])
            if not path.is_file():
                lines.append(f"{task} seed {key}: {path} is gone")
                continue
            con = duckdb.connect(str(path), read_only=True)
            try:
                rows = con.execute(
                    "SELECT coalesce(output, "  # attributes: rows stored before issue 16
                    "json_extract_string(attributes, '$.\"gen_ai.completion\"')), "
                    "json_extract_string(attributes, '$.\"gen_ai.response.finish_reasons\"') "
                    "FROM spans WHERE run_type = 'llm' AND pipeline IS NULL ORDER BY start_time"
                ).fetchall()
            finally:
                con.close()
            parents = [
                u["parent_instruction"] for u in r["updates"] for _ in range(u.get("attempts") or 0)
            ]
            for i, (completion, finish) in enumerate(rows):
                n += 1
                try:
                    text = json.loads(completion)[0] if completion else ""
                except ValueError:
                    text = completion or ""
                parent = parents[i] if i < len(parents) else None
                try:
                    reasoning, sugg = parse_reply(text)
                    if not sugg:
                        kind = "valid JSON, empty suggestion"
                    elif sugg.get("instruction") == parent:
                        kind = "valid JSON, suggestion = current instruction"
                    else:
                        kind = "valid JSON, new instruction"
                except ReplyError as exc:
                    kind = f"unparsable ({exc})"
                kinds[kind] = kinds.get(kind, 0) + 1
                lines.append(f"{task} s{key} call {i + 1} [{kind}] finish={finish}: {text!r}")
        lines.append(f"{task}: {n} optimizer calls: {kinds}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    settings = common.settings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tasks",
        default=",".join(TASKS),
        help=f"comma-separated BBH tasks in {data_dir()} (default: {','.join(TASKS)})",
    )
    ap.add_argument(
        "--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 0,1,2)"
    )
    ap.add_argument("--updates", type=int, default=UPDATES, help="optimizer updates per seed")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="1 task, 1 seed, 2 updates, few examples, scripted models; writes bbh.quick.json "
        "in the work directory (a plumbing check)",
    )
    ap.add_argument("--out", type=Path, default=None, help="results file (default bbh.json)")
    ap.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="task-call cache (deterministic replies at temperature 0; default "
        "bench/results/bbh_cache.json, quick: <work>/bbh-quick/cache.json)",
    )
    ap.add_argument(
        "--report", action="store_true", help="print the saved results as Markdown and exit"
    )
    ap.add_argument(
        "--replies",
        action="store_true",
        help="print every optimizer call's raw reply from the saved warehouses and exit",
    )
    args = ap.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    updates = args.updates
    split = SPLIT
    if args.quick:
        tasks, seeds, updates, split = tasks[:1], seeds[:1], 2, QUICK_SPLIT
    out = args.out or common.results_path("bbh", quick=args.quick)
    cache_path = args.cache or (
        settings.work / work_folder("bbh", True) / "cache.json"
        if args.quick
        else settings.results / "bbh_cache.json"
    )
    if args.report:
        print(report(json.loads(out.read_text())))
        return 0
    if args.replies:
        print(replies(json.loads(out.read_text())))
        return 0
    common.prefect_env()
    os.environ.setdefault("GENOPT_LOCAL_THREADS", "2")
    if args.quick:  # a plumbing check starts afresh, and never shares the real cache
        start_quick("bbh", out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    available = sorted(p.stem for p in data_dir().glob("*.json"))
    missing = [t for t in tasks if t not in available]
    if missing and args.quick:
        log(f"tasks missing from {data_dir()}: {missing}; --quick runs on synthetic questions")
    elif missing:
        log(f"tasks missing from {data_dir()}: {missing} (available: {available}); skipping them")
        tasks = [t for t in tasks if t in available]

    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    info = library_state()
    results.setdefault("runs", []).append(
        {
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "git": info,
            "argv": sys.argv[1:],
            "tasks": tasks,
            "seeds": seeds,
            "updates": updates,
            "missing_tasks": missing,
            "local_threads": os.environ.get("GENOPT_LOCAL_THREADS"),
            "quick": args.quick,
        }
    )
    results["protocol"] = {
        "pipeline": "one LLM call; tunable instruction as system message, example input as "
        f"user message; temperature 0, max_tokens {TASK_MAX_TOKENS}; answer = first "
        r"\b(yes|no)\b (case-insensitive) in the reply; exact match with the target "
        "(lower-cased)",
        "start_instruction": START_INSTRUCTION,
        "split": f"first {split.train} train, next {split.val} validation, next {split.test} test",
        "updates": updates,
        "minibatch": MINIBATCH,
        "seed": "permutation of the train examples into minibatches, and the optimizer's seed",
        "selection": "a proposed candidate is kept when its validation accuracy >= the current "
        "best's (ties go to the newer); rejected/no_change keep the current one",
        "optimizer": {
            "model": "scripted (--quick)"
            if args.quick
            else "embedded Qwen2.5-Coder-1.5B-Instruct Q4_K_M (also the task model)",
            "memory_size": MEMORY_SIZE,
            "max_output_tokens": MAX_OUTPUT_TOKENS,
            "credit_horizon": CREDIT_HORIZON,
            "timeout_s": OPTIMIZER_TIMEOUT_S,
            "kpi": "correct (per item)",
            "evidence": "the minibatch run only (evidence_run_ids)",
            "starting_artifact": "start_from=values, the current best instruction",
        },
        "cache": "task replies cached by (instruction, input); cached calls are replayed "
        "through litellm.completion(mock_response=...) so the trace is unchanged, and are "
        "counted separately",
        "test_runs": "both test evaluations run after the 5 updates, so the optimizer's "
        "memory never sees test feedback",
    }
    results.setdefault("tasks", {})
    save_json(out, results, indent=1)

    todo = [(t, s) for t in tasks for s in seeds if str(s) not in results["tasks"].get(t, {})]
    done = [(t, s) for t in tasks for s in seeds if (t, s) not in todo]
    if done:
        log(f"already saved, skipped: {done}")
    if not todo:
        print(report(results))
        return 0
    log(
        f"{common.describe_library(info)}; "
        f"GENOPT_LOCAL_THREADS={os.environ.get('GENOPT_LOCAL_THREADS')}; todo {todo}"
    )
    cache = Cache(cache_path)
    genopt, make_flow, model, optimizer_model = build(cache, quick=args.quick)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        log("prefect test harness up")
        for task, seed in todo:
            rec = run_seed(
                genopt, make_flow, model, cache, task, seed, updates, optimizer_model, args.quick
            )
            rec["git_at_start"] = info
            results["tasks"].setdefault(task, {})[str(seed)] = rec
            save_json(out, results, indent=1)
            log(f"saved {task} seed {seed} to {out} ({rec['seconds'] / 60:.1f} min)")
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

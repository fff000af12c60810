"""The peer arms of the BBH comparison (issue 14): GEPA and DSPy MIPROv2, re-run here on
the shared harness (:mod:`bench.bbh_harness`) under the same caps as the search.

Each arm is ``fn(ctx: ArmContext) -> ArmResult`` (:data:`ARMS`). It spends at most
``ctx.task_call_cap`` calls of ``ctx.models.task_model`` and ``ctx.optimizer_call_cap``
calls of ``ctx.models.optimizer_model`` on ``ctx.split.pool``, and returns its final
instruction (and demos); the runner tests them through the harness's template.

Both peers get the pool cut the same way (:func:`pool_parts`): train = the first items
(the search's evidence + selection: 70; snarks 50), validation = the rest (the search's
confirmation: 80; snarks 50). Validation is where each peer picks its best candidate, so it
gets the larger held-out part, as the search's confirmation does.

**GEPA** (``gepa.optimize``, its default adapter, seed candidate
``{"system_prompt": START_INSTRUCTION}``):

- the task model is a callable that sends the adapter's (system, user) pair through
  :func:`~bench.bbh_harness.render_messages` (no demos) with
  :func:`~bench.bbh_harness.complete_task`, so GEPA optimises the instruction under the
  template it is tested with; one evaluation (a GEPA *metric call*) is one counted task call;
- the evaluator is the default adapter's ``ContainsAnswerEvaluator`` feedback with the
  harness's parser as the check (the default's ``answer in response`` is case-sensitive:
  target ``yes`` is never "in" the reply ``Yes.``);
- the reflection model is a callable calling ``litellm.completion`` on the optimizer model
  once (no retries) at temperature 1.0 (:data:`REFLECTION_TEMPERATURE`), with the
  provider's defaults otherwise;
- stopped by its stop callbacks: ``max_metric_calls = ctx.task_call_cap`` (GEPA's own
  stopper) and :class:`CallCapStopper`, which stops before an iteration that could pass
  either cap: when the optimizer calls reached ``ctx.optimizer_call_cap``, or fewer task
  calls remain than one iteration's worst case (parent and child on a minibatch of 3, then
  a full validation of an accepted child: ``2 * 3 + len(val)``).

**MIPROv2** (``auto="light"``) on ``dspy.Predict("question -> answer")`` with the start
instruction; task LM ``dspy.LM(task_model, temperature=0, max_tokens=TASK_MAX_TOKENS,
cache=False)``, prompt LM ``dspy.LM(optimizer_model, cache=False)`` (both through litellm,
no retries, so every call reaches the counting provider once); metric
``parse_answer(pred.answer) == target``. What is cut, and how the calls are counted:

- proposer (<= 12 calls): light proposes 3 instructions (one LM call each, not
  program-aware, which would add 2 calls per instruction), after a dataset summary of
  3 calls (``view_data_batch_size = ceil(len(train) / 2)``: 2 observation calls and 1
  summary). 6 predictions, each at most 2 calls (dspy's ChatAdapter and, on a reply it
  cannot parse, its JSON fallback): <= 12;
- task model (<= 700 calls): bootstrapping the demo sets calls it once per train item tried
  (measured, it stops at each set's size); then the trials: the default program's full
  validation, one minibatch per trial and the periodic full validations, computed exactly
  by :func:`mipro_trial_calls`. Light's 10 trials on minibatches of 35 are cut to what the
  calls left after bootstrapping allow (:func:`plan_mipro_trials`: the minibatch first,
  down to 20, then the trials).
  Task predictions get no JSON fallback (a reply dspy cannot parse scores 0), so each is
  exactly one call.

A cap reached anyway raises :class:`~bench.bbh_harness.CapReached` in the provider: the arm
keeps the best candidate found so far (the start if none) and says so in its notes.

Example:
    >>> from bench.bbh_harness import Example
    >>> pool = [Example(f"t-{i}", "q", "yes") for i in range(150)]
    >>> train, val = pool_parts("navigate", pool)
    >>> len(train), len(val), val[0].id
    (70, 80, 't-70')
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.bbh_harness import (
    START_INSTRUCTION,
    TASK_MAX_TOKENS,
    ArmContext,
    ArmResult,
    CapReached,
    Demo,
    Example,
    Models,
    answer_text,
    complete_task,
    parse_answer,
    render_messages,
)
from prefect_genopt._litellm import litellm

__all__ = [
    "ARMS",
    "VAL_SIZE",
    "GEPA_MINIBATCH",
    "CallCapStopper",
    "pool_parts",
    "mipro_trial_calls",
    "plan_mipro_trials",
    "run_gepa",
    "run_miprov2",
]

#: validation items per task (the search's confirmation pool); train gets the rest
VAL_SIZE: dict[str, int] = {"snarks": 50}
DEFAULT_VAL_SIZE = 80
#: GEPA's reflection minibatch (its default, 3)
GEPA_MINIBATCH = 3
#: GEPA's reflection temperature: what its usual hosted reflection models sample at by default
#: (the embedded model's provider would take an unset temperature as 0, where it answered
#: GEPA's reflection prompt "Certainly! Please provide the inputs for the new instruction."
#: 11 times of 12 on sports_understanding seed 0, and "Certainly! Please provide the new
#: instruction." once); the search drafts at 1.0 and MIPROv2 proposes at 1.0 too
REFLECTION_TEMPERATURE = 1.0
#: the GEPA component that holds the instruction
GEPA_COMPONENT = "system_prompt"
#: MIPROv2 light's minibatch and trials are cut down to these floors before giving up
MIPRO_MIN_MINIBATCH = 20
#: MIPROv2's full-validation period (its default)
MIPRO_FULL_EVAL_STEPS = 5
#: an "unlimited" error budget for dspy (a failed prediction scores 0, it never aborts)
DSPY_MAX_ERRORS = 10**6


def pool_parts(task: str, pool: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """(train, validation) of the pool, in pool order: validation is the last
    :data:`VAL_SIZE` items (80, snarks 50), or the last half of a pool too small for it.

    Example:
        >>> from bench.bbh_harness import Example
        >>> pool = [Example(f"s-{i}", "q", "(a)") for i in range(100)]
        >>> [len(p) for p in pool_parts("snarks", pool)]
        [50, 50]
        >>> [len(p) for p in pool_parts("navigate", pool[:9])]
        [5, 4]
    """
    pool = list(pool)
    n_val = VAL_SIZE.get(task, DEFAULT_VAL_SIZE)
    if n_val >= len(pool):
        n_val = len(pool) // 2
    return pool[: len(pool) - n_val], pool[len(pool) - n_val :]


def _cap_error(models: Models, exc: Exception) -> str:
    """What a peer's exception says when a cap stopped it; any other exception is raised
    again (dspy re-wraps :class:`CapReached` in its own error, so the models' record of a
    cap hit decides)."""
    if isinstance(exc, CapReached) or models.cap_hit is not None:
        return f"CapReached ({models.cap_hit} cap): {type(exc).__name__}: {exc}"
    raise exc


def _used(models: Models) -> tuple[int, int]:
    c = models.counts()
    return int(c["task_calls"]), int(c["optimizer_calls"])


class _Stopwatch:
    """CPU seconds of the process (every thread, the embedded model's included)."""

    def __init__(self) -> None:
        self.start = time.process_time()

    def seconds(self) -> float:
        return round(time.process_time() - self.start, 2)


class _FileLog:
    """GEPA's logger: appends its lines to a file (emptied when the logger is made)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        self.path = path

    def log(self, message: str) -> None:
        with self.path.open("a") as fh:
            fh.write(f"{message}\n")


# -- GEPA ---------------------------------------------------------------------------------


class CallCapStopper:
    """A GEPA stop callback on the arm's counted calls: stop before an iteration that could
    pass a cap.

    Args:
        models: The counted models.
        task_cap: The task-call cap.
        optimizer_cap: The optimizer-call cap (one reflection = one call).
        per_iteration: The most task calls one GEPA iteration can make.

    Example:
        >>> class M:
        ...     def counts(self): return {"task_calls": 600, "optimizer_calls": 3}
        >>> CallCapStopper(M(), 700, 12, 86)(None), CallCapStopper(M(), 700, 12, 101)(None)
        (False, True)
    """

    def __init__(self, models: Any, task_cap: int, optimizer_cap: int, per_iteration: int):
        self.models = models
        self.task_cap = task_cap
        self.optimizer_cap = optimizer_cap
        self.per_iteration = per_iteration
        self.reason: str | None = None

    def __call__(self, gepa_state: Any) -> bool:
        task, opt = _used(self.models)
        if opt >= self.optimizer_cap:
            self.reason = f"optimizer calls {opt} reached the cap {self.optimizer_cap}"
        elif task + self.per_iteration > self.task_cap:
            self.reason = (
                f"task calls {task} + one iteration's worst case {self.per_iteration} "
                f"would pass the cap {self.task_cap}"
            )
        return self.reason is not None


class _GepaTracker:
    """GEPA callback: the best fully validated candidate so far, and the calls by stage."""

    def __init__(self, models: Models) -> None:
        self.models = models
        self.best: tuple[float, str] | None = None
        self.validations: list[dict[str, Any]] = []
        self.iterations = 0
        self.skipped = 0

    def on_valset_evaluated(self, event: Any) -> None:
        score = float(event["average_score"])
        text = str(event["candidate"][GEPA_COMPONENT])
        self.validations.append(
            {"iteration": int(event["iteration"]), "candidate": int(event["candidate_idx"]),
             "score": round(score, 4)}
        )  # fmt: skip
        if self.best is None or score > self.best[0]:
            self.best = (score, text)

    def on_iteration_start(self, event: Any) -> None:
        self.iterations += 1

    def on_evaluation_skipped(self, event: Any) -> None:
        self.skipped += 1


def _gepa_evaluator(task: str) -> Callable[[Any, str], Any]:
    from gepa.adapters.default_adapter.default_adapter import EvaluationResult

    def evaluate(data: Any, response: str) -> Any:
        if parse_answer(task, response) == data["answer"]:
            return EvaluationResult(
                1.0,
                "The generated response is correct. The response include the correct answer "
                f"'{answer_text(task, data['answer'])}'",
            )
        return EvaluationResult(
            0.0,
            "The generated response is incorrect. The correct answer is "
            f"'{answer_text(task, data['answer'])}'. Ensure that the correct answer is included "
            "in the response exactly as it is.",
        )

    return evaluate


def run_gepa(ctx: ArmContext) -> ArmResult:
    """GEPA with its default adapter on the pool, stopped at the caps (see the module)."""
    import gepa
    from gepa.adapters.default_adapter.default_adapter import DefaultAdapter

    clock = _Stopwatch()
    models = ctx.models
    train, val = pool_parts(ctx.task, ctx.split.pool)

    def to_inst(e: Example) -> dict[str, Any]:
        return {"input": e.input, "additional_context": {}, "answer": e.target}

    def task_lm(messages: Sequence[dict[str, Any]]) -> str:
        system = next((str(m["content"]) for m in messages if m["role"] == "system"), "")
        user = next(str(m["content"]) for m in reversed(messages) if m["role"] == "user")
        return complete_task(models, render_messages(system, [], user))

    def reflection_lm(prompt: str | list[dict[str, Any]]) -> str:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        resp = litellm.completion(
            model=models.optimizer_model, messages=messages, temperature=REFLECTION_TEMPERATURE
        )
        return resp.choices[0].message.content or ""

    per_iteration = 2 * GEPA_MINIBATCH + len(val)
    stopper = CallCapStopper(models, ctx.task_call_cap, ctx.optimizer_call_cap, per_iteration)
    tracker = _GepaTracker(models)
    log = _FileLog(ctx.work_dir / "gepa.log")
    ctx.progress(f"gepa: train {len(train)}, val {len(val)}, seed {ctx.seed}")
    error: str | None = None
    result = None
    try:
        result = gepa.optimize(
            seed_candidate={GEPA_COMPONENT: START_INSTRUCTION},
            trainset=[to_inst(e) for e in train],
            valset=[to_inst(e) for e in val],
            adapter=DefaultAdapter(model=task_lm, evaluator=_gepa_evaluator(ctx.task)),
            reflection_lm=reflection_lm,
            reflection_minibatch_size=GEPA_MINIBATCH,
            max_metric_calls=ctx.task_call_cap,
            stop_callbacks=[stopper],
            callbacks=[tracker],
            logger=log,
            seed=ctx.seed,
        )
    except Exception as exc:  # only a cap is expected: others are raised again
        error = _cap_error(models, exc)
    task_calls, opt_calls = _used(models)
    if result is not None:
        best_score = float(result.val_aggregate_scores[result.best_idx])
        instruction = str(result.best_candidate[GEPA_COMPONENT])
        candidates = len(result.candidates)
        metric_calls = result.total_metric_calls
    else:
        best_score, instruction = tracker.best or (float("nan"), START_INSTRUCTION)
        candidates = len(tracker.validations)
        metric_calls = None
    notes = {
        "peer": f"gepa {_version('gepa')}",
        "train": len(train),
        "val": len(val),
        "train_ids": [train[0].id, train[-1].id] if train else [],
        "val_ids": [val[0].id, val[-1].id] if val else [],
        "best_val_score": round(best_score, 4),
        "start_val_score": tracker.validations[0]["score"] if tracker.validations else None,
        "validations": tracker.validations,
        "candidates": candidates,
        "iterations": tracker.iterations,
        "iterations_skipped_perfect_minibatch": tracker.skipped,
        "gepa_metric_calls": metric_calls,
        "calls_by_stage": {
            "seed_validation": len(val) if tracker.validations else None,
            "iterations_and_validations": task_calls - len(val) if tracker.validations else None,
            "reflection": opt_calls,
        },
        "stopped_by": stopper.reason or ("gepa max_metric_calls" if result else None),
        "cap_reached": error or (f"cap hit: {models.cap_hit}" if models.cap_hit else None),
        "settings": {
            "adapter": "gepa DefaultAdapter; task model = render_messages(system, [], input) at "
            f"temperature 0, max_tokens {TASK_MAX_TOKENS}",
            "evaluator": "ContainsAnswerEvaluator's feedback, check = harness parse_answer",
            "reflection_lm": "litellm.completion(optimizer_model, temperature="
            f"{REFLECTION_TEMPERATURE}), provider defaults otherwise, no retries",
            "reflection_minibatch_size": GEPA_MINIBATCH,
            "max_metric_calls": ctx.task_call_cap,
            "stop": f"CallCapStopper(per_iteration={per_iteration}, optimizer_cap="
            f"{ctx.optimizer_call_cap})",
            "candidate_selection": "pareto (default)",
            "use_merge": False,
            "seed": ctx.seed,
        },
    }
    ctx.progress(
        f"gepa: best val {best_score:.3f} after {task_calls} task / {opt_calls} optimizer calls"
        + (f" ({error})" if error else "")
    )
    return ArmResult(instruction, [], task_calls, opt_calls, clock.seconds(), notes)


# -- MIPROv2 ------------------------------------------------------------------------------


def mipro_trial_calls(
    num_trials: int, minibatch: bool, minibatch_size: int, n_val: int, steps: int
) -> int:
    """Task calls of MIPROv2's trial stage (``_optimize_prompt_parameters``, dspy 3.4.1):
    the default program's full validation, each trial's minibatch (the full validation set
    without minibatching), and a full validation after every ``steps + 1``-th optuna trial
    number and at the last one. Optuna numbers every trial added, the full validations too.

    Example:
        >>> mipro_trial_calls(10, True, 35, 80, 5)  # light: 80 + 10 * 35 + 2 * 80
        590
        >>> mipro_trial_calls(4, False, 35, 30, 5)
        150
    """
    if not minibatch:
        return n_val * (1 + num_trials)
    batch = min(minibatch_size, n_val)
    adjusted = num_trials + num_trials // steps + 1 + (1 if num_trials % steps else 0)
    calls, number = n_val, 1  # optuna trial 0 is the default program
    for _ in range(num_trials):
        trial_num = number + 1
        number += 1
        calls += batch
        if trial_num % (steps + 1) == 0 or trial_num == adjusted - 1:
            calls += n_val
            number += 1
    return calls


def plan_mipro_trials(
    num_trials: int, minibatch: bool, minibatch_size: int, n_val: int, steps: int, budget: int
) -> tuple[int, int] | None:
    """(trials, minibatch size) within ``budget`` task calls: the most trials that fit, each
    at the largest minibatch that fits, from MIPROv2's own size down by 5 to
    :data:`MIPRO_MIN_MINIBATCH` (so the minibatch is cut before the trials); None if not
    even the default program's validation and one trial fit.

    Example:
        >>> plan_mipro_trials(10, True, 35, 80, 5, 700)
        (10, 35)
        >>> plan_mipro_trials(10, True, 35, 80, 5, 500)  # 80 + 10 * 25 + 2 * 80 = 490
        (10, 25)
        >>> plan_mipro_trials(10, True, 35, 80, 5, 400)
        (8, 20)
        >>> plan_mipro_trials(10, True, 35, 80, 5, 100) is None
        True
    """
    floor = min(MIPRO_MIN_MINIBATCH, minibatch_size)
    sizes = list(range(minibatch_size, floor - 1, -5)) if minibatch else [minibatch_size]
    for trials in range(num_trials, 0, -1):
        for size in sizes:
            if mipro_trial_calls(trials, minibatch, size, n_val, steps) <= budget:
                return trials, size
    return None


def _version(dist: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "?"


def _mipro_class() -> type:
    """MIPROv2 with the trial stage cut to the calls left, and the stages' calls recorded
    (a subclass: dspy 3.4.1 refuses ``num_trials`` with ``auto``)."""
    from dspy.teleprompt import MIPROv2

    class CappedMIPROv2(MIPROv2):  # type: ignore[misc, valid-type]
        def __init__(self, *, models: Models, task_cap: int, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.models = models
            self.task_cap = task_cap
            self.stages: dict[str, Any] = {}
            self.plan: dict[str, Any] = {}
            self.best_full: tuple[float, Any] | None = None
            self.default_score: float | None = None

        def _bootstrap_fewshot_examples(self, *args: Any, **kwargs: Any) -> Any:
            before = _used(self.models)
            try:
                return super()._bootstrap_fewshot_examples(*args, **kwargs)
            finally:
                after = _used(self.models)
                self.stages["bootstrap"] = {"task": after[0] - before[0]}

        def _propose_instructions(self, *args: Any, **kwargs: Any) -> Any:
            before = _used(self.models)
            try:
                return super()._propose_instructions(*args, **kwargs)
            finally:
                after = _used(self.models)
                self.stages["propose"] = {"optimizer": after[1] - before[1]}

        def _optimize_prompt_parameters(
            self,
            program: Any,
            instruction_candidates: Any,
            demo_candidates: Any,
            evaluate: Any,
            valset: list[Any],
            num_trials: int,
            minibatch: bool,
            minibatch_size: int,
            minibatch_full_eval_steps: int,
            seed: int,
        ) -> Any:
            before = _used(self.models)
            budget = self.task_cap - before[0]
            plan = plan_mipro_trials(
                num_trials, minibatch, minibatch_size, len(valset), minibatch_full_eval_steps,
                budget,
            )  # fmt: skip
            self.plan = {
                "light_trials": num_trials,
                "light_minibatch_size": minibatch_size,
                "minibatch": minibatch,
                "val": len(valset),
                "budget": budget,
                "trials": plan[0] if plan else 0,
                "minibatch_size": plan[1] if plan else None,
                "planned_calls": mipro_trial_calls(
                    plan[0], minibatch, plan[1], len(valset), minibatch_full_eval_steps
                )
                if plan
                else 0,
            }
            if plan is None:
                return program
            try:
                return super()._optimize_prompt_parameters(
                    program, instruction_candidates, demo_candidates, evaluate, valset,
                    plan[0], minibatch, plan[1], minibatch_full_eval_steps, seed,
                )  # fmt: skip
            finally:
                self.stages["trials"] = {"task": _used(self.models)[0] - before[0]}

        def _perform_full_evaluation(self, *args: Any, **kwargs: Any) -> Any:
            best_score, best_program, total = super()._perform_full_evaluation(*args, **kwargs)
            self.best_full = (float(best_score), best_program)
            return best_score, best_program, total

    return CappedMIPROv2


def _adapter_class() -> type:
    from dspy.adapters import ChatAdapter
    from dspy.utils.exceptions import AdapterParseError

    class TaskCallsOnceAdapter(ChatAdapter):  # type: ignore[misc, valid-type]
        """dspy's ChatAdapter; its JSON fallback (a second call on a reply it cannot parse)
        is kept for the prompt model only, so one task prediction is one task call."""

        def __init__(self, task_model: str) -> None:
            super().__init__()
            self.task_model = task_model
            self.task_parse_failures = 0
            self.task_predictions = 0

        def __call__(self, lm: Any, lm_kwargs: Any, signature: Any, demos: Any, inputs: Any):
            is_task = getattr(lm, "model", None) == self.task_model
            self.use_json_adapter_fallback = not is_task
            if is_task:
                self.task_predictions += 1
            try:
                return super().__call__(lm, lm_kwargs, signature, demos, inputs)
            except AdapterParseError:
                if is_task:
                    self.task_parse_failures += 1
                raise

    return TaskCallsOnceAdapter


def _demo(d: Any) -> Demo:
    return Demo(str(d.get("question", "")), str(d.get("answer", "")))


def run_miprov2(ctx: ArmContext) -> ArmResult:
    """DSPy MIPROv2 ``auto="light"`` on the pool, cut to the caps (see the module)."""
    import dspy

    # dspy warns at every task call that max_tokens (the harness's 16) cut the reply
    logging.getLogger("dspy.clients.lm").setLevel(logging.ERROR)
    clock = _Stopwatch()
    models = ctx.models
    task = ctx.task
    train, val = pool_parts(task, ctx.split.pool)

    def to_example(e: Example) -> Any:
        return dspy.Example(question=e.input, answer=answer_text(task, e.target)).with_inputs(
            "question"
        )

    def metric(example: Any, pred: Any, trace: Any = None) -> bool:
        got = parse_answer(task, str(getattr(pred, "answer", "") or ""))
        return got is not None and got == parse_answer(task, str(example.answer))

    task_lm = dspy.LM(
        models.task_model, temperature=0, max_tokens=TASK_MAX_TOKENS, cache=False,
        num_retries=0, engine="litellm",
    )  # fmt: skip
    prompt_lm = dspy.LM(models.optimizer_model, cache=False, num_retries=0, engine="litellm")
    adapter = _adapter_class()(models.task_model)
    program = dspy.Predict(dspy.Signature("question -> answer", START_INSTRUCTION))
    view_batch = max(1, math.ceil(len(train) / 2))
    optimizer = _mipro_class()(
        models=models,
        task_cap=ctx.task_call_cap,
        metric=metric,
        prompt_model=prompt_lm,
        task_model=task_lm,
        auto="light",
        num_threads=1,
        max_errors=DSPY_MAX_ERRORS,
        seed=ctx.seed,
        verbose=False,
    )
    ctx.progress(f"miprov2: train {len(train)}, val {len(val)}, seed {ctx.seed}")
    error: str | None = None
    compiled = None
    try:
        with dspy.context(lm=task_lm, adapter=adapter):
            compiled = optimizer.compile(
                program,
                trainset=[to_example(e) for e in train],
                valset=[to_example(e) for e in val],
                seed=ctx.seed,
                view_data_batch_size=view_batch,
                program_aware_proposer=False,
                minibatch_size=35,
                minibatch_full_eval_steps=MIPRO_FULL_EVAL_STEPS,
            )
    except Exception as exc:  # only a cap is expected: others are raised again
        error = _cap_error(models, exc)
    best_score: float | None = None  # dspy's Evaluate scores in percent
    if compiled is not None:
        best_score = getattr(compiled, "score", None)
        best = compiled
    elif optimizer.best_full is not None:
        best_score, best = optimizer.best_full
    else:
        best = program
    predictor = best.predictors()[0]
    instruction = str(predictor.signature.instructions)
    demos = [_demo(d) for d in (predictor.demos or [])]
    task_calls, opt_calls = _used(models)
    trial_logs = getattr(compiled, "trial_logs", None) or {}
    full_scores = [
        round(float(v["full_eval_score"]) / 100, 4)
        for _, v in sorted(trial_logs.items())
        if isinstance(v, dict) and "full_eval_score" in v
    ]
    notes = {
        "peer": f"dspy {_version('dspy')} MIPROv2 auto=light",
        "train": len(train),
        "val": len(val),
        "train_ids": [train[0].id, train[-1].id] if train else [],
        "val_ids": [val[0].id, val[-1].id] if val else [],
        "best_val_score": round(float(best_score) / 100, 4) if best_score is not None else None,
        "start_val_score": full_scores[0] if full_scores else None,
        "full_val_scores": full_scores,
        "demos": len(demos),
        "calls_by_stage": {
            "bootstrap_task": optimizer.stages.get("bootstrap", {}).get("task"),
            "trials_task": optimizer.stages.get("trials", {}).get("task"),
            "propose_optimizer": optimizer.stages.get("propose", {}).get("optimizer"),
        },
        "trial_plan": optimizer.plan,
        "task_predictions": adapter.task_predictions,
        "task_parse_failures": adapter.task_parse_failures,
        "cap_reached": error or (f"cap hit: {models.cap_hit}" if models.cap_hit else None),
        "settings": {
            "program": "dspy.Predict('question -> answer'), instructions = START_INSTRUCTION",
            "task_lm": f"dspy.LM(task_model, temperature=0, max_tokens={TASK_MAX_TOKENS}, "
            "cache=False, num_retries=0, engine='litellm')",
            "prompt_lm": "dspy.LM(optimizer_model, cache=False, num_retries=0, engine='litellm')",
            "adapter": "ChatAdapter; JSON fallback for the prompt model only",
            "view_data_batch_size": view_batch,
            "program_aware_proposer": False,
            "num_threads": 1,
            "seed": ctx.seed,
        },
    }
    ctx.progress(
        f"miprov2: best val {notes['best_val_score']} after {task_calls} task / "
        f"{opt_calls} optimizer calls" + (f" ({error})" if error else "")
    )
    return ArmResult(instruction, demos, task_calls, opt_calls, clock.seconds(), notes)


#: the peer arms, by name
ARMS: dict[str, Callable[[ArmContext], ArmResult]] = {"gepa": run_gepa, "miprov2": run_miprov2}

"""The shared harness of the BBH optimizer comparison (issue 14): data, split, template,
parser, counted and capped models, and the test evaluation every arm goes through.

Protocol (issue 14, "## The benchmark"):

    **Harness.** Every method runs on the same harness:
    - the same one-call pipeline, prompt template, task model (the embedded
      Qwen2.5-Coder-1.5B, temperature 0), max tokens and answer parser;
    - the same 1.5B model as optimizer;
    - the same virtual environment, via the `bench` extra. dspy 3.4.1 with gepa 0.1.4,
      and trace-opt 0.1.3.8, resolve against the project's pins.

    Each peer's final instruction (and demos, where it has them) is tested through our
    template.

    **Tasks:** sports_understanding, navigate and snarks from `../shared/data/bbh/`.

    **Split**, the same for every method:
    - test = file items 25-124 (100 items; snarks 25-102, 78 items), which contains the
      old 50-item test (25-74);
    - every method gets the same pool of the remaining items. For the search: evidence
      30, selection 40, confirmation 80 (snarks 20 / 30 / 50);
    - the same cap per task and seed: <= 700 task-model calls (cached calls counted, test
      calls not) and <= 12 optimizer calls.

    **Seeds:** 2 per task.

    **Statistics:** paired per item, exact McNemar, per seed pooled over the 3 tasks (278
    items). Report p for every comparison.

An arm is a function ``fn(ctx: ArmContext) -> ArmResult``: it may spend up to
``ctx.task_call_cap`` calls of ``ctx.models.task_model`` and ``ctx.optimizer_call_cap``
calls of ``ctx.models.optimizer_model`` (both litellm model strings; a call past a cap
raises :class:`CapReached` inside the provider, and sets :attr:`Models.cap_hit`), on
``ctx.split.pool`` only. Its final instruction and demos are then scored on
``ctx.split.test`` by :func:`test_accuracy`, through :func:`render_messages` and
:func:`parse_answer`, the same for every arm.

The two models are litellm custom providers registered through
:mod:`prefect_genopt._litellm` (so dspy, gepa and genopt all reach them by model string):

* ``bbh-task/<name>``: the task model. Every call runs at temperature 0; its reply is
  cached on disk by a hash of (backend, messages, max_tokens), one file per reply (written
  atomically, so two processes can share the cache). Real and cached calls are counted.
* ``bbh-opt/<name>``: the optimizer model, forwarded as asked (temperature, format,
  seed); never cached; counted.

Both forward to the embedded model (:mod:`prefect_genopt.local_model`), called directly
(not through litellm again, so a call is one LLM span), or with ``quick=True`` to scripted
responders (:func:`quick_task_answer`, :func:`quick_optimizer_answer`).

Example:
    >>> parse_answer("snarks", "The answer is (B).")
    '(b)'
    >>> [m["role"] for m in render_messages("Answer.", [Demo("Q1?", "Yes")], "Q2?")]
    ['system', 'user', 'assistant', 'user']
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import common
from prefect_genopt._litellm import litellm

__all__ = [
    "TASKS",
    "START_INSTRUCTION",
    "TASK_MAX_TOKENS",
    "TASK_CALL_CAP",
    "OPTIMIZER_CALL_CAP",
    "Example",
    "Split",
    "Demo",
    "Models",
    "CapReached",
    "ArmContext",
    "ArmResult",
    "data_dir",
    "load_task",
    "synthetic_task",
    "split",
    "parse_answer",
    "answer_text",
    "render_messages",
    "test_accuracy",
    "file_lock",
    "quick_task_answer",
    "quick_optimizer_answer",
]

TASKS = ("sports_understanding", "navigate", "snarks")
#: the start value of the instruction (as in ``bench/bench_bbh.py``)
START_INSTRUCTION = "Answer the question."
#: max tokens of every task-model call made by the harness (test and the search's pipeline)
TASK_MAX_TOKENS = 16
TASK_CALL_CAP = 700
OPTIMIZER_CALL_CAP = 12
#: test = file items [start, stop) per task (the rest is the pool)
TEST_RANGE: dict[str, tuple[int, int]] = {"snarks": (25, 103)}
DEFAULT_TEST_RANGE = (25, 125)
#: the old 50-item test of ``bench_bbh`` (file items 25-74)
OLD_TEST_RANGE = (25, 75)

TASK_PROVIDER = "bbh-task"
OPTIMIZER_PROVIDER = "bbh-opt"

_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)
_OPTION = re.compile(r"\(\s*([ab])\s*\)", re.IGNORECASE)
_BARE_OPTION = re.compile(r"^\W*(?:answer\s*(?:is)?\s*:?\s*)?([AB])\s*(?:[).:,]|$)", re.IGNORECASE)
_OPTION_TASKS = frozenset({"snarks"})


# -- data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One BBH item: ``id`` is ``<task>-<file index>``, ``target`` normalised (``yes``,
    ``no``, ``(a)``, ``(b)``)."""

    id: str
    input: str
    target: str


@dataclass(frozen=True)
class Split:
    """The test items and the pool every arm may use (disjoint, in file order)."""

    test: list[Example]
    pool: list[Example]


@dataclass(frozen=True)
class Demo:
    """A few-shot demo: the question, and the answer as the assistant turn (``Yes``,
    ``(A)``)."""

    input: str
    answer: str


def data_dir() -> Path:
    """The BBH task files: ``<data>/bbh`` (``GENOPT_BENCH_DATA``, default
    ``../shared/data`` from the repository root)."""
    return common.settings().data / "bbh"


def normalise_target(task: str, target: str) -> str:
    """A file target in the form :func:`parse_answer` returns.

    Example:
        >>> normalise_target("navigate", "Yes"), normalise_target("snarks", "(B)")
        ('yes', '(b)')
    """
    return target.strip().lower()


def synthetic_task(task: str, n: int) -> list[Example]:
    """``n`` made-up items in the task's answer form, for ``--quick`` without the data.

    Example:
        >>> [e.target for e in synthetic_task("snarks", 40)][:3]
        ['(b)', '(b)', '(a)']
    """
    rng = random.Random(task)
    out = []
    for i in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if task in _OPTION_TASKS:
            q = f"Which number is larger?\nOptions:\n(A) {a}\n(B) {b}"
            target = "(a)" if a > b else "(b)"
        else:
            q, target = f"Is {a} greater than {b}?", "yes" if a > b else "no"
        out.append(Example(f"{task}-{i:03d}", q, target))
    return out


def load_task(task: str, data: Path | None = None) -> list[Example]:
    """Every item of a BBH task, in file order (``data``: the folder of the task files,
    default :func:`data_dir`)."""
    path = (data or data_dir()) / f"{task}.json"
    raw = json.loads(path.read_text())["examples"]
    return [
        Example(f"{task}-{i:03d}", str(e["input"]), normalise_target(task, str(e["target"])))
        for i, e in enumerate(raw)
    ]


def split(
    task: str, examples: Sequence[Example], test_range: tuple[int, int] | None = None
) -> Split:
    """test = file items 25..124 (snarks 25..102); pool = every other item, in file order.

    ``test_range`` overrides the [start, stop) of the test (``--quick`` uses a tiny one).

    Example:
        >>> items = [Example(f"t-{i}", "q", "yes") for i in range(250)]
        >>> s = split("navigate", items)
        >>> len(s.test), len(s.pool), s.test[0].id, s.pool[25].id
        (100, 150, 't-25', 't-125')
    """
    lo, hi = test_range or TEST_RANGE.get(task, DEFAULT_TEST_RANGE)
    examples = list(examples)
    return Split(test=examples[lo:hi], pool=examples[:lo] + examples[hi:])


# -- template and parser ----------------------------------------------------------------


def parse_answer(task: str, text: str | None) -> str | None:
    """The answer in a reply, normalised like the targets, or None.

    Yes/no tasks: the first word ``yes`` or ``no`` (any case). Option tasks (snarks): the
    first ``(A)``/``(B)``, else a reply that starts with a bare ``A``/``B`` (``B.``,
    ``Answer: A``).

    Example:
        >>> parse_answer("sports_understanding", "No, it is not plausible.")
        'no'
        >>> parse_answer("snarks", "B) He's a terrible person")
        '(b)'
        >>> parse_answer("snarks", "A sarcastic one") is None
        True
    """
    text = text or ""
    if task in _OPTION_TASKS:
        m = _OPTION.search(text) or _BARE_OPTION.search(text)
        return f"({m.group(1).lower()})" if m else None
    m = _YES_NO.search(text)
    return m.group(1).lower() if m else None


def answer_text(task: str, target: str) -> str:
    """A normalised target as a demo's assistant turn.

    Example:
        >>> answer_text("navigate", "yes"), answer_text("snarks", "(a)")
        ('Yes', '(A)')
    """
    return target.upper() if task in _OPTION_TASKS else target.capitalize()


def render_messages(instruction: str, demos: Sequence[Demo], question: str) -> list[dict[str, str]]:
    """THE template: the instruction as system message, each demo as a user/assistant pair,
    then the question as the last user message.

    Example:
        >>> render_messages("Be brief.", [], "Q?")
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Q?'}]
    """
    messages = [{"role": "system", "content": instruction}]
    for d in demos:
        messages += [
            {"role": "user", "content": d.input},
            {"role": "assistant", "content": d.answer},
        ]
    messages.append({"role": "user", "content": question})
    return messages


# -- scripted models of --quick ----------------------------------------------------------


def _dspy_output_fields(messages: Sequence[dict[str, Any]]) -> list[str]:
    """The output fields a dspy ChatAdapter prompt asks for (none for other prompts)."""
    system = next((str(m.get("content") or "") for m in messages if m["role"] == "system"), "")
    m = re.search(r"Your output fields are:\n(.*?)\n(?:All interactions|\n)", system, re.S)
    return re.findall(r"`(\w+)`", m.group(1)) if m else []


def _dspy_reply(fields: Sequence[str], value: Callable[[str], str]) -> str:
    body = "".join(f"[[ ## {f} ## ]]\n{value(f)}\n\n" for f in fields)
    return body + "[[ ## completed ## ]]"


def quick_task_answer(messages: Sequence[dict[str, Any]]) -> str:
    """The ``--quick`` task model: ``Yes``/``No`` (``(A)``/``(B)`` when the question lists
    options ``(A)``) by a hash of the messages, so a new instruction or demo set changes
    some answers; dspy prompts get their output fields in dspy's format.

    Example:
        >>> quick_task_answer([{"role": "user", "content": "Is it?"}]) in ("Yes", "No")
        True
    """
    digest = hashlib.sha256(json.dumps(list(messages), sort_keys=True).encode()).digest()
    last = str(messages[-1].get("content") or "") if messages else ""
    answer = (
        ("(A)" if digest[0] % 2 else "(B)") if "(A)" in last else ("Yes" if digest[0] % 2 else "No")
    )
    fields = _dspy_output_fields(messages)
    if fields:
        return _dspy_reply(fields, lambda f: answer if f == fields[-1] else "Thinking briefly.")
    return answer


_QUICK_DRAFTS = iter(range(1, 10**9))


def quick_optimizer_answer(messages: Sequence[dict[str, Any]]) -> str:
    """The ``--quick`` optimizer: a new instruction (numbered) in a fenced block; dspy
    prompts get every output field filled with that instruction.

    Example:
        >>> quick_optimizer_answer([{"role": "user", "content": "improve"}]).startswith("```")
        True
    """
    n = next(_QUICK_DRAFTS)
    instruction = f"Answer the question with yes or no (or the option letter) first. ({n})"
    fields = _dspy_output_fields(messages)
    if fields:
        return _dspy_reply(fields, lambda f: instruction)
    prompt = "\n".join(str(m.get("content") or "") for m in messages)
    if "#Variables" in prompt:  # genopt's OptoPrime update answers JSON
        return json.dumps(
            {"reasoning": "state the answer format", "suggestion": {"instruction": instruction}}
        )
    return f"```\n{instruction}\n```"


# -- the counting providers ---------------------------------------------------------------


class CapReached(litellm.BadRequestError):
    """A model's call cap (per arm) is used up; raised by the provider before the call.

    A litellm ``BadRequestError`` (not retried by litellm, dspy or genopt), so litellm
    re-raises it unchanged where it wraps other exceptions of a provider;
    :attr:`Models.cap_hit` records it too, for callers that swallow errors.
    """

    def __init__(self, message: str, model: str = "", llm_provider: str = "") -> None:
        super().__init__(message=message, model=model, llm_provider=llm_provider)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created), for read-modify-write of shared
    files by two processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


Backend = Callable[[list[dict[str, Any]], dict[str, Any]], tuple[str, str, int, int]]


def _scripted_backend(answer: Callable[[Sequence[dict[str, Any]]], str]) -> Backend:
    def run(messages: list[dict[str, Any]], params: dict[str, Any]) -> tuple[str, str, int, int]:
        text = answer(messages)
        n_in = sum(len(str(m.get("content") or "").split()) for m in messages)
        return text, "stop", n_in, len(text.split())

    return run


def _local_backend() -> Backend:
    from prefect_genopt import local_model

    engine = local_model.LocalLLM()

    def run(messages: list[dict[str, Any]], params: dict[str, Any]) -> tuple[str, str, int, int]:
        resp = engine.completion(messages=messages, optional_params=params)
        usage = resp.usage
        return (
            resp.choices[0].message.content or "",
            resp.choices[0].finish_reason or "stop",
            int(usage.prompt_tokens or 0),
            int(usage.completion_tokens or 0),
        )

    return run


class Models:
    """The task and optimizer models of the comparison, counted and capped per arm.

    Args:
        cache_dir: Where task replies are cached (one JSON file per reply).
        quick: Scripted models (:func:`quick_task_answer`, :func:`quick_optimizer_answer`)
            instead of the embedded one.
        task_answer: With ``quick``, another scripted task model (messages -> text).
        optimizer_answer: With ``quick``, another scripted optimizer (messages -> text).
    """

    def __init__(
        self,
        cache_dir: Path,
        quick: bool = False,
        task_answer: Callable[[Sequence[dict[str, Any]]], str] | None = None,
        optimizer_answer: Callable[[Sequence[dict[str, Any]]], str] | None = None,
    ) -> None:
        from prefect_genopt._litellm import register_handler

        self.cache_dir = cache_dir
        self.quick = quick
        #: the backend's name, part of every cache key
        self.backend = "scripted" if quick else "qwen2.5-coder-1.5b-instruct-q4_k_m"
        name = "scripted" if quick else "qwen"
        self.task_model = f"{TASK_PROVIDER}/{name}"
        self.optimizer_model = f"{OPTIMIZER_PROVIDER}/{name}"
        if quick:
            self._task: Backend = _scripted_backend(task_answer or quick_task_answer)
            self._opt: Backend = _scripted_backend(optimizer_answer or quick_optimizer_answer)
        else:
            self._task = self._opt = _local_backend()
        self._lock = threading.Lock()
        self._uncounted = threading.local()
        self.task_cap: int | None = None
        self.optimizer_cap: int | None = None
        #: which cap was hit since the last :meth:`reset_counts` (``task``/``optimizer``)
        self.cap_hit: str | None = None
        self.reset_counts()
        register_handler(TASK_PROVIDER, self._handler(self._task_call))
        register_handler(OPTIMIZER_PROVIDER, self._handler(self._optimizer_call))

    # counts and caps

    def counts(self) -> dict[str, int]:
        """``task_calls`` (real + cached, counted against the cap), ``task_cached``,
        ``task_real``, ``test_calls`` (uncounted), ``optimizer_calls``, tokens and seconds."""
        with self._lock:
            return dict(self._counts)

    def reset_counts(self) -> None:
        """Zero every count and forget a cap hit (start of an arm)."""
        with self._lock:
            self._counts: dict[str, Any] = {
                "task_calls": 0,
                "task_cached": 0,
                "task_real": 0,
                "task_real_s": 0.0,
                "test_calls": 0,
                "test_cached": 0,
                "optimizer_calls": 0,
                "optimizer_input_tokens": 0,
                "optimizer_output_tokens": 0,
                "optimizer_s": 0.0,
            }
            self.cap_hit = None

    def set_caps(self, task: int | None, optimizer: int | None) -> None:
        """Caps on counted task and optimizer calls (None: no cap)."""
        self.task_cap, self.optimizer_cap = task, optimizer

    @contextlib.contextmanager
    def uncounted(self) -> Iterator[None]:
        """Task calls made in this thread inside the block are test calls: counted apart
        (``test_calls``), never against the cap."""
        self._uncounted.on = True
        try:
            yield
        finally:
            self._uncounted.on = False

    def _take(self, kind: str) -> None:
        cap = self.task_cap if kind == "task" else self.optimizer_cap
        with self._lock:
            key = f"{kind}_calls"
            if cap is not None and self._counts[key] >= cap:
                self.cap_hit = kind
                raise CapReached(f"the {kind} model's cap of {cap} calls is used up")
            self._counts[key] += 1

    # the calls

    def cache_key(self, messages: Sequence[dict[str, Any]], max_tokens: int) -> str:
        """The task reply cache key: sha256 of (backend, messages, max_tokens)."""
        blob = json.dumps(
            [self.backend, [[m["role"], str(m.get("content") or "")] for m in messages], max_tokens]
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _task_call(
        self, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> tuple[str, str, int, int]:
        max_tokens = int(params.get("max_tokens") or TASK_MAX_TOKENS)
        test = getattr(self._uncounted, "on", False)
        if not test:
            self._take("task")
        key = self.cache_key(messages, max_tokens)
        path = self._cache_path(key)
        hit = None
        if path.is_file():
            with contextlib.suppress(ValueError, OSError):
                hit = json.loads(path.read_text())
        if hit is not None:
            with self._lock:
                self._counts["test_cached" if test else "task_cached"] += 1
                if test:
                    self._counts["test_calls"] += 1
            return hit["text"], hit["finish_reason"], hit["input_tokens"], hit["output_tokens"]
        started = time.perf_counter()
        text, finish, n_in, n_out = self._task(
            messages, {"temperature": 0.0, "max_tokens": max_tokens}
        )
        seconds = time.perf_counter() - started
        _atomic_write(
            path,
            json.dumps(
                {
                    "text": text,
                    "finish_reason": finish,
                    "input_tokens": n_in,
                    "output_tokens": n_out,
                    "seconds": round(seconds, 3),
                }
            ),
        )
        with self._lock:
            if test:
                self._counts["test_calls"] += 1
            else:
                self._counts["task_real"] += 1
                self._counts["task_real_s"] += seconds
        return text, finish, n_in, n_out

    def _optimizer_call(
        self, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> tuple[str, str, int, int]:
        self._take("optimizer")
        started = time.perf_counter()
        out = self._opt(messages, params)
        with self._lock:
            self._counts["optimizer_input_tokens"] += out[2]
            self._counts["optimizer_output_tokens"] += out[3]
            self._counts["optimizer_s"] += time.perf_counter() - started
        return out

    def _handler(
        self, call: Callable[[list[dict[str, Any]], dict[str, Any]], tuple[str, str, int, int]]
    ) -> Any:
        class Counting(litellm.CustomLLM):
            def completion(self, *args: Any, **kwargs: Any) -> Any:
                params = dict(kwargs.get("optional_params") or {})
                messages = [
                    {"role": m["role"], "content": str(m.get("content") or "")}
                    for m in (kwargs.get("messages") or [])
                ]
                text, finish, n_in, n_out = call(messages, params)
                return litellm.ModelResponse(
                    model=str(kwargs.get("model") or ""),
                    choices=[
                        {"message": {"role": "assistant", "content": text}, "finish_reason": finish}
                    ],
                    usage={
                        "prompt_tokens": n_in,
                        "completion_tokens": n_out,
                        "total_tokens": n_in + n_out,
                    },
                )

            async def acompletion(self, *args: Any, **kwargs: Any) -> Any:
                import asyncio

                return await asyncio.to_thread(self.completion, *args, **kwargs)

        return Counting()


# -- the test evaluation ------------------------------------------------------------------


def complete_task(models: Models, messages: list[dict[str, str]]) -> str:
    """One task-model call through litellm at temperature 0, max :data:`TASK_MAX_TOKENS`."""
    resp = litellm.completion(
        model=models.task_model, messages=messages, temperature=0, max_tokens=TASK_MAX_TOKENS
    )
    return resp.choices[0].message.content or ""


def test_accuracy(
    models: Models,
    task: str,
    instruction: str,
    demos: Sequence[Demo],
    examples: Sequence[Example],
) -> tuple[float, list[int]]:
    """Accuracy and per-item 0/1 of ``instruction`` + ``demos`` on ``examples``, through
    :func:`render_messages` and :func:`parse_answer`; the calls are test calls (uncounted
    against the caps, and never stopped by one)."""
    scores = []
    with models.uncounted():
        for e in examples:
            reply = complete_task(models, render_messages(instruction, demos, e.input))
            scores.append(int(parse_answer(task, reply) == e.target))
    return (sum(scores) / len(scores) if scores else 0.0), scores


test_accuracy.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


# -- arms ---------------------------------------------------------------------------------


@dataclass
class ArmContext:
    """What an arm gets: the task, seed, split, models, its own work folder and a progress
    callback; the caps it must stay under."""

    task: str
    seed: int
    split: Split
    models: Models
    work_dir: Path
    progress: Callable[[str], None]
    task_call_cap: int = TASK_CALL_CAP
    optimizer_call_cap: int = OPTIMIZER_CALL_CAP
    quick: bool = False


@dataclass
class ArmResult:
    """What an arm returns: its final instruction and demos (tested by the runner), the
    calls it spent, its CPU seconds, and notes for the report."""

    instruction: str
    demos: list[Demo]
    task_calls: int
    optimizer_calls: int
    cpu_s: float
    notes: dict[str, Any] = field(default_factory=dict)

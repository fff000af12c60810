"""Scripted litellm providers: offline stand-ins for LLMs in tests, examples and benches.

:func:`register` routes ``<provider>/<anything>`` to a *responder*, a plain function
from a :class:`Call` (the model string, messages, temperature, optional params) to the
answer text or a :class:`Reply`. The call goes through litellm's real path (its
callbacks, genopt's LLM spans, usage and cost accounting, response parsing); only the
network is replaced. The provider records every :class:`Call` it answers, and can sleep
``delay`` seconds per call to stand for a slow model.

Ready-made responders: :func:`keyword_labeler` (a classifier that follows the
``label: word, word`` rules of its system prompt) and :func:`scripted_optimizer` (an
optimizer model whose answers are computed from the prompt it receives, or are
malformed on purpose; the mode is the model's route, see :data:`OPTIMIZER_MODES`).
:func:`kill_at` makes the warehouse ingester SIGKILL its own process at a named point.

Importing this module does not import litellm; :func:`register` does.

Example:
    >>> import litellm
    >>> from prefect_genopt import testing
    >>> mine = testing.register("mine", lambda call: f"{call.route} heard {call.user!r}")
    >>> reply = litellm.completion(model="mine/echo", messages=[{"role": "user", "content": "hi"}])
    >>> reply.choices[0].message.content
    "echo heard 'hi'"
    >>> mine.calls[-1].model, reply.usage.prompt_tokens
    ('mine/echo', 1)
    >>> testing.unregister("mine")
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from litellm import CustomLLM, ModelResponse

__all__ = [
    "Call",
    "Reply",
    "Responder",
    "ScriptedProvider",
    "register",
    "register_handler",
    "unregister",
    "keyword_label",
    "keyword_labeler",
    "scripted_optimizer",
    "OPTIMIZER_MODES",
    "kill_at",
]


def _words(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True)
class Call:
    """One call a scripted provider received.

    Attributes:
        model: The full model string (``provider/route``).
        route: What follows ``provider/`` in the model string.
        messages: The chat messages, as passed to litellm.
        temperature: The sampling temperature asked for (``None`` if none).
        params: litellm's ``optional_params`` (temperature, max_tokens, response_format...).

    Example:
        >>> c = Call("p/x", "x", [{"role": "system", "content": "Be brief."},
        ...                        {"role": "user", "content": "hi"}])
        >>> c.system, c.user
        ('Be brief.', 'hi')
    """

    model: str
    route: str
    messages: list[dict[str, Any]]
    temperature: float | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def _joined(self, role: str) -> str:
        return "\n".join(str(m.get("content") or "") for m in self.messages if m["role"] == role)

    @property
    def system(self) -> str:
        """The contents of the system messages, joined by newlines."""
        return self._joined("system")

    @property
    def user(self) -> str:
        """The contents of the user messages, joined by newlines."""
        return self._joined("user")


@dataclass(frozen=True)
class Reply:
    """A responder's answer with more than its text.

    Attributes:
        text: The answer's content.
        finish_reason: ``stop``, or ``length`` for an answer cut at max_tokens.
        prompt_tokens: Usage reported to litellm (default: words in the messages).
        completion_tokens: Usage reported to litellm (default: words in ``text``).
    """

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


#: A responder answers one call: the text, or a :class:`Reply`.
Responder = Callable[[Call], "str | Reply"]


class _Scripted:
    """What a scripted provider does; the litellm base class is added on first use."""

    def __init__(self, provider: str, responder: Responder, delay: float = 0.0) -> None:
        super().__init__()
        self.provider = provider
        self.responder = responder
        #: seconds slept per call (settable while in use)
        self.delay = delay
        #: every call answered, oldest first
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_flight = 0

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no call is being answered (e.g. one a caller's timeout abandoned,
        still sleeping in its thread); True when idle within ``timeout`` seconds."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def reset(self) -> None:
        """Forget the recorded calls."""
        with self._lock:
            self.calls.clear()

    def _answer(self, kwargs: dict[str, Any]) -> ModelResponse:
        from litellm import ModelResponse

        route = str(kwargs.get("model") or "")
        params = dict(kwargs.get("optional_params") or {})
        messages = list(kwargs.get("messages") or [])
        call = Call(
            model=f"{self.provider}/{route}",
            route=route,
            messages=messages,
            temperature=params.get("temperature"),
            params=params,
        )
        with self._lock:
            self.calls.append(call)
        answer = self.responder(call)
        reply = answer if isinstance(answer, Reply) else Reply(str(answer))
        n_in = (
            reply.prompt_tokens
            if reply.prompt_tokens is not None
            else sum(_words(str(m.get("content") or "")) for m in messages)
        )
        n_out = (
            reply.completion_tokens if reply.completion_tokens is not None else _words(reply.text)
        )
        return ModelResponse(
            model=call.model,
            choices=[
                {
                    "message": {"role": "assistant", "content": reply.text},
                    "finish_reason": reply.finish_reason,
                }
            ],
            usage={"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
        )

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        """litellm's synchronous entry point."""
        with self._answering():
            if self.delay > 0:
                time.sleep(self.delay)
            return self._answer(kwargs)

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        """litellm's asynchronous entry point (the delay does not block the event loop)."""
        with self._answering():
            if self.delay > 0:
                await asyncio.sleep(self.delay)
            return self._answer(kwargs)


def _import_litellm() -> Any:
    from prefect_genopt._litellm import litellm  # offline: the one place that imports it

    return litellm


@cache
def _provider_class() -> type:
    litellm = _import_litellm()

    class ScriptedProvider(_Scripted, litellm.CustomLLM):
        """A litellm ``CustomLLM`` that answers by a responder and records its calls.

        Args:
            provider: The provider name it is registered under.
            responder: Answers each :class:`Call`.
            delay: Seconds to sleep per call (a stand-in for a slow model).
        """

    ScriptedProvider.__module__ = __name__
    return ScriptedProvider


if TYPE_CHECKING:

    class ScriptedProvider(_Scripted, CustomLLM):
        """See :func:`_provider_class`."""

else:

    def __getattr__(name: str) -> Any:
        if name == "ScriptedProvider":  # built on first use: litellm is imported then
            return _provider_class()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_handler(provider: str, handler: Any) -> None:
    """Route litellm's ``provider/<anything>`` to ``handler`` (a ``litellm.CustomLLM``).

    Registering a provider again replaces its handler
    (:func:`prefect_genopt._litellm.register_handler`, which the embedded model uses too).
    """
    from prefect_genopt import _litellm

    _litellm.register_handler(provider, handler)


def unregister(provider: str) -> None:
    """Remove ``provider``: litellm then refuses its models (``litellm.BadRequestError``)."""
    from prefect_genopt import _litellm

    _litellm.unregister(provider)


def register(provider: str, responder: Responder, *, delay: float = 0.0) -> ScriptedProvider:
    """Route ``provider/<anything>`` to ``responder``; returns the provider (its ``calls``).

    Registering a provider again replaces its handler (and starts a new call record).

    Args:
        provider: The provider name (the part of the model string before the first ``/``).
        responder: Answers each :class:`Call` with the text or a :class:`Reply`.
        delay: Seconds to sleep per call, e.g. ``register("bench-sim", answer, delay=0.05)``.
    """
    handler = _provider_class()(provider, responder, delay)
    register_handler(provider, handler)
    return handler


# ---------------------------------------------------------------------------------------
# a keyword classifier
# ---------------------------------------------------------------------------------------

_RULE = re.compile(r"([a-z_]+)\s*:\s*([^;.\n]+)")


def keyword_label(system: str, user: str) -> str:
    """The label a model that follows its prompt's rules *literally* gives ``user``.

    A clause such as ``billing: invoice, refund`` in ``system`` labels ``billing`` a text
    containing one of those words (the first matching clause wins); otherwise ``other``.

    Example:
        >>> keyword_label("Labels. billing: invoice, refund; bug: crash", "The app crash again")
        'bug'
        >>> keyword_label("Classify the ticket as billing, bug or other.", "refund please")
        'other'
    """
    text = user.lower()
    for label, words in _RULE.findall(system.lower()):
        if any(w.strip() and w.strip() in text for w in words.split(",")):
            return label
    return "other"


def keyword_labeler(call: Call) -> str:
    """Responder: :func:`keyword_label` of the call's system and user messages."""
    return keyword_label(call.system, call.user)


# ---------------------------------------------------------------------------------------
# a scripted optimizer model
# ---------------------------------------------------------------------------------------

_LEVEL = re.compile(r"\(number\) level = ([0-9.eE+-]+)")
_FEEDBACK = re.compile(r"closeness = ([0-9.eE+-]+).*?\ncritique: (too low|too high)", re.S)
_PROMPT_VAR = re.compile(r'\(string\) prompt = ("(?:[^"\\]|\\.)*")')
_MISSED = re.compile(r"critique: expected (\w+), got \w+: '([^']*)'")
_VARIABLE = re.compile(r"^\((\w+)\) (\w+) = (.+)$", re.M)
_EXPECTED = re.compile(r"critique: expected '([^']*)', got '([^']*)'")
_CLAUSE = re.compile(r"\b(billing|bug|other)\s*:\s*([^;.]+)")
_ROTATE = {"billing": "bug", "bug": "other", "other": "billing"}


def _json(obj: Any) -> str:
    import orjson

    return orjson.dumps(obj).decode()


def _section(prompt: str, title: str) -> str:
    m = re.search(rf"^{re.escape(title)}[^\n]*\n(.*?)(?=^#|\Z)", prompt, re.S | re.M)
    return m.group(1) if m else ""


def follow(prompt: str) -> dict[str, Any]:
    """A feedback-following optimizer: moves the ``level`` number of #Variables by the mean
    distance the #Feedback critiques (``closeness``, "too low"/"too high") imply.

    Example:
        >>> follow("(number) level = 0.2\\ncloseness = 0.5\\ncritique: too low")
        {'reasoning': 'the critiques say level 0.2 is off by +0.5', 'suggestion': {'level': 0.7}}
    """
    m = _LEVEL.search(prompt)
    if not m:
        return {"reasoning": "no level variable in the problem", "suggestion": {}}
    level = float(m.group(1))
    steps = []
    for value, direction in _FEEDBACK.findall(prompt):
        distance = 1.0 - float(value)
        steps.append(distance if direction == "too low" else -distance)
    if not steps or all(abs(s) < 1e-9 for s in steps):
        return {"reasoning": "every example is at its best already", "suggestion": {}}
    new = min(1.0, max(0.0, level + sum(steps) / len(steps)))
    return {
        "reasoning": f"the critiques say level {level:g} is off by {sum(steps) / len(steps):+.3g}",
        "suggestion": {"level": round(new, 6)},
    }


def rules(prompt: str) -> dict[str, Any]:
    """A rule-writing optimizer: for each failed ticket in #Feedback, a cue word from its
    text added to a 'label: word' rule of the current prompt (#Variables)."""
    import orjson

    m = _PROMPT_VAR.search(prompt)
    if not m:
        return {"reasoning": "no prompt variable", "suggestion": {}}
    current = orjson.loads(m.group(1))
    cues: dict[str, list[str]] = {}
    for label, text in _MISSED.findall(prompt):
        words = sorted(
            (w.lower() for w in re.findall(r"[A-Za-z]{4,}", text)),
            key=lambda w: (-len(w), w),
        )
        new = next((w for w in words if w not in current.lower()), None)
        if new and new not in cues.setdefault(label, []):
            cues[label].append(new)
    if not any(cues.values()):
        return {"reasoning": "no failed example to learn a rule from", "suggestion": {}}
    extra = " ".join(f"{label}: {', '.join(ws)};" for label, ws in sorted(cues.items()) if ws)
    return {
        "reasoning": "the failed tickets contain words no rule names; add them as rules",
        "suggestion": {"prompt": f"{current} {extra}"},
    }


def onevar(prompt: str) -> dict[str, Any]:
    """An optimizer that changes one variable per answer and never retries one its
    #Memory says it changed before; which untried variable it picks is a coin it tosses
    from the prompt's hash (it does not know which step is at fault). A number becomes
    the length of the shortest word the critiques say went missing; a choice becomes
    another option of its #Constraints."""
    import orjson

    variables = _VARIABLE.findall(_section(prompt, "#Variables"))
    memory = _section(prompt, "#Memory")
    tried = {name for _, name, _ in variables if f'"{name}"' in memory}
    untried = [v for v in variables if v[1] not in tried] or variables
    if not untried:
        return {"reasoning": "no variable to change", "suggestion": {}}
    coin = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    typ, name, current = untried[coin % len(untried)]
    if typ in ("integer", "number"):
        missing = [
            w
            for want, got in _EXPECTED.findall(prompt)
            for w in re.findall(r"[a-z]+", want)
            if w not in re.findall(r"[a-z]+", got)
        ]
        if not missing:
            return {"reasoning": f"nothing says {name} is wrong", "suggestion": {}}
        new: Any = min(len(w) for w in missing)
        why = f"words of {new} letters went missing; {name} must let them through"
    else:
        m = re.search(rf"^{re.escape(name)}: .*?one of (\[.*?\])", prompt, re.M)
        options = orjson.loads(m.group(1)) if m else []
        others = [o for o in options if o != orjson.loads(current)]
        if not others:
            return {"reasoning": f"no other value for {name}", "suggestion": {}}
        new = others[coin // 7 % len(others)]
        why = f"the failures may come from {name}; try another value"
    return {"reasoning": why, "suggestion": {name: new}}


def pick_demos(prompt: str) -> dict[str, Any]:
    """Pick the first two experiences of each #Demo candidates list (by id)."""
    section = _section(prompt, "#Demo candidates")
    picks: dict[str, list[str]] = {}
    name = None
    for line in section.splitlines():
        m = re.match(r"(\w+) is a list of few-shot demos", line)
        if m:
            name = m.group(1)
        m = re.match(r"- (exp_\w+):", line)
        if m and name and len(picks.setdefault(name, [])) < 2:
            picks[name].append(m.group(1))
    return {"reasoning": "show the model two verified examples", "suggestion": picks}


def meta(prompt: str) -> dict[str, Any]:
    """Tune the optimizer's instruction: keep it, and add the first sentence of the
    best-rated reflection in #Feedback as a lesson."""
    import ast

    m = re.search(r"^\(string\) instruction = (.+)$", prompt, re.M)
    best = re.search(r"^- best rated: .*?reflection: ([^.\n]+)", prompt, re.M)
    if not m or not best:
        return {"reasoning": "nothing to learn from", "suggestion": {}}
    current = ast.literal_eval(m.group(1))
    lesson = f" Lesson from the best-rated proposals: {best.group(1).strip()}."
    return {
        "reasoning": "the best-rated reflection states the cause before the change",
        "suggestion": {"instruction": current + lesson},
    }


def swap(prompt: str) -> dict[str, Any]:
    """A confidently wrong optimizer: it rewrites every 'label: cue words' rule of the
    current prompt (#Variables) to point at the next label (billing -> bug -> other),
    and adds a rule that sends every other ticket to "bug"."""
    import orjson

    m = _PROMPT_VAR.search(prompt)
    if not m:
        return {"reasoning": "no prompt variable", "suggestion": {}}
    current = orjson.loads(m.group(1))
    new = _CLAUSE.sub(lambda c: f"{_ROTATE[c.group(1)]}: {c.group(2)}", current)
    new = new.rstrip(". ") + "; bug: a, e, i, o, u"
    return {
        "reasoning": "the labels look mixed up; swapping the rules",
        "suggestion": {"prompt": new},
    }


def _optimizer_text(mode: str, prompt: str, attempt: int) -> str:
    good = follow(prompt)
    computed = {
        "follow": lambda: good,
        "rules": lambda: rules(prompt),
        "meta": lambda: meta(prompt),
        "demos": lambda: pick_demos(prompt),
        "onevar": lambda: onevar(prompt),
        "swap": lambda: swap(prompt),
    }
    if mode in computed:
        return _json(computed[mode]())
    if mode == "notjson":
        return "I think the level should go up a bit."
    if mode == "notjson-once":  # unparsable first, then fine after the retry message
        return "Let me think... raise it." if attempt == 1 else _json(good)
    if mode == "fenced":
        return f"```json\n{_json(good)}\n```"
    if mode == "prose":
        return f"Here is my answer:\n{_json(good)}\nHope this helps."
    if mode == "unknown":
        return _json({"reasoning": "change the model", "suggestion": {"model_name": "big"}})
    if mode == "unknown-plus":
        return _json({**good, "suggestion": {**good["suggestion"], "inputs": "x"}})
    if mode == "oob":
        return _json({"reasoning": "much higher", "suggestion": {"level": 7.5}})
    if mode == "wrongtype":
        return _json({"reasoning": "bigger", "suggestion": {"level": "very high"}})
    if mode == "empty":
        return _json({"reasoning": "nothing to change", "suggestion": {}})
    if mode == "unchanged":
        m = _LEVEL.search(prompt)
        return _json({"reasoning": "keep", "suggestion": {"level": float(m.group(1)) if m else 0}})
    if mode == "slow":
        time.sleep(3)
        return _json(good)
    if mode == "cutoff":
        return '{"reasoning": "the level is too low because'
    raise ValueError(f"unknown scripted optimizer mode {mode!r}")


#: The routes :func:`scripted_optimizer` answers: computed answers first (``follow``,
#: ``rules``, ``onevar``, ``demos``, ``meta``, ``swap``), then each malformed answer class
#: an optimizer must handle (not JSON, fenced, unknown or out-of-bounds variables, no
#: change, 3 s late, cut off at max_tokens).
OPTIMIZER_MODES = (
    "follow",
    "rules",
    "onevar",
    "demos",
    "meta",
    "swap",
    "notjson",
    "notjson-once",
    "fenced",
    "prose",
    "unknown",
    "unknown-plus",
    "oob",
    "wrongtype",
    "empty",
    "unchanged",
    "slow",
    "cutoff",
)


def scripted_optimizer(call: Call) -> Reply:
    """Responder: an optimizer model whose mode is the call's route (``opt/follow``...).

    The answer is computed from the call's first user message (the optimizer's problem);
    the attempt number is one more than the assistant messages (a retry conversation).

    Example:
        >>> call = Call("opt/empty", "empty", [{"role": "user", "content": "(number) level = 1"}])
        >>> scripted_optimizer(call).text
        '{"reasoning":"nothing to change","suggestion":{}}'
    """
    prompt = next((str(m["content"]) for m in call.messages if m["role"] == "user"), "")
    attempt = sum(1 for m in call.messages if m["role"] == "assistant") + 1
    text = _optimizer_text(call.route, prompt, attempt)
    return Reply(text, finish_reason="length" if call.route == "cutoff" else "stop")


# ---------------------------------------------------------------------------------------
# fault injection
# ---------------------------------------------------------------------------------------


def kill_at(point: str) -> None:
    """Make this process SIGKILL itself when the warehouse ingester reaches ``point``.

    The points are inside the load transaction: ``after-spans``, ``after-runs``,
    ``before-commit`` (``prefect_genopt.warehouse.ingest.FAULT_POINTS``). For a child
    process a test kills on purpose; nothing else should call it.
    """
    from prefect_genopt.warehouse.ingest import FAULT_POINTS, set_fault_hook

    if point not in FAULT_POINTS:
        raise ValueError(f"unknown ingest point {point!r}; one of {FAULT_POINTS}")

    def _kill(reached: str) -> None:
        if reached == point:
            os.kill(os.getpid(), signal.SIGKILL)

    set_fault_hook(_kill)

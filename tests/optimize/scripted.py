"""A scripted optimizer model behind litellm, and a synthetic pipeline with a known optimum.

``scripted-opt/<mode>`` is a litellm ``CustomLLM``. In mode ``follow`` it
*computes* its answer from the prompt it receives, like a careful optimizer
would: it reads the current ``level`` from #Variables and the #Feedback of each
example (the KPI value and a critique that says "too low" or "too high"), and
moves ``level`` by the mean distance the feedback implies. It never knows the
optimum. The other modes produce each malformed answer class the runner must
handle (see :data:`MODES`).

The ``knob`` pipeline's optimum is ``level = 0.7``: each item's ``closeness``
is ``1 - |level - 0.7|``, with a critique telling the direction.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import litellm
from litellm import CustomLLM, ModelResponse
from prefect import flow

import prefect_genopt as genopt

PROVIDER = "scripted-opt"
OPTIMUM = 0.7

#: every prompt the model received, per mode (tests read what the optimizer sent)
PROMPTS: dict[str, list[list[dict[str, str]]]] = {}
#: the temperature of every call, per mode
TEMPERATURES: dict[str, list[float | None]] = {}
_lock = threading.Lock()

_LEVEL = re.compile(r"\(number\) level = ([0-9.eE+-]+)")
_FEEDBACK = re.compile(r"closeness = ([0-9.eE+-]+).*?\ncritique: (too low|too high)", re.S)


def follow(prompt: str) -> dict[str, Any]:
    """The answer a feedback-following optimizer gives to ``prompt``."""
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


_PROMPT_VAR = re.compile(r'\(string\) prompt = ("(?:[^"\\]|\\.)*")')
_MISSED = re.compile(r"critique: expected (\w+), got \w+: '([^']*)'")


def rules(prompt: str) -> dict[str, Any]:
    """What a rule-writing optimizer answers: for each failed ticket in #Feedback, a cue
    word from its text added to a 'label: word' rule of the current prompt (#Variables)."""
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


_VARIABLE = re.compile(r"^\((\w+)\) (\w+) = (.+)$", re.M)
_EXPECTED = re.compile(r"critique: expected '([^']*)', got '([^']*)'")


def _section(prompt: str, title: str) -> str:
    m = re.search(rf"^{re.escape(title)}[^\n]*\n(.*?)(?=^#|\Z)", prompt, re.S | re.M)
    return m.group(1) if m else ""


def onevar(prompt: str) -> dict[str, Any]:
    """An optimizer that changes one variable per answer and never retries one its
    #Memory says it changed before; which untried variable it picks is a coin it tosses
    from the prompt's hash (it does not know which step is at fault). A number becomes
    the length of the shortest word the critiques say went missing; a choice becomes
    another option of its #Constraints."""
    import hashlib

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


def _json(obj: Any) -> str:
    import orjson

    return orjson.dumps(obj).decode()


_CLAUSE = re.compile(r"\b(billing|bug|other)\s*:\s*([^;.]+)")
_ROTATE = {"billing": "bug", "bug": "other", "other": "billing"}


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
    # and, sure of itself, it sends every other ticket to "bug" too
    new = new.rstrip(". ") + "; bug: a, e, i, o, u"
    return {
        "reasoning": "the labels look mixed up; swapping the rules",
        "suggestion": {"prompt": new},
    }


def _answer(mode: str, prompt: str, attempt: int) -> str:
    good = follow(prompt)
    if mode == "follow":
        return _json(good)
    if mode == "rules":
        return _json(rules(prompt))
    if mode == "demos":
        return _json(pick_demos(prompt))
    if mode == "onevar":
        return _json(onevar(prompt))
    if mode == "swap":
        return _json(swap(prompt))
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
    raise ValueError(f"unknown scripted-opt mode {mode!r}")


MODES = (
    "follow",
    "rules",
    "onevar",
    "demos",
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


class ScriptedOptimizer(CustomLLM):
    """litellm provider ``scripted-opt``: see the module docstring."""

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        model = str(kwargs.get("model") or "")
        mode = model.split("/", 1)[-1]
        messages = kwargs.get("messages") or []
        with _lock:
            PROMPTS.setdefault(mode, []).append(messages)
            temp = (kwargs.get("optional_params") or {}).get("temperature")
            TEMPERATURES.setdefault(mode, []).append(temp)
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        attempt = sum(1 for m in messages if m["role"] == "assistant") + 1
        text = _answer(mode, prompt, attempt)
        n_in = sum(len(str(m["content"]).split()) for m in messages)
        n_out = len(text.split())
        return ModelResponse(
            model=model,
            choices=[
                {
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "length" if mode == "cutoff" else "stop",
                }
            ],
            usage={"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
        )

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self.completion(*args, **kwargs)


def register() -> None:
    """Register ``scripted-opt/<mode>`` with litellm (idempotent)."""
    if not any(p.get("provider") == PROVIDER for p in litellm.custom_provider_map):
        litellm.custom_provider_map = [
            *litellm.custom_provider_map,
            {"provider": PROVIDER, "custom_handler": ScriptedOptimizer()},
        ]


register()


class KnobParams(genopt.Tunables):
    """The synthetic pipeline's one knob."""

    level: float = genopt.numeric(0.2, ge=0.0, le=1.0, description="how hard to push each item")
    note: str = genopt.prompt("keep going", description="a note the steps carry", max_length=200)


@genopt.task
def push(item: str) -> float:
    """Push one item as hard as the level says."""
    return genopt.current_params(item_key=item).level


@flow
@genopt.pipeline(name="knob", params=KnobParams)
def knob(items: list[str]) -> float:
    """Push each item and score how close the level is to what the items need."""
    total = 0.0
    for item in items:
        level = push(item)
        closeness = 1.0 - abs(level - OPTIMUM)
        total += closeness
        critique = "too low" if level < OPTIMUM else "too high"
        genopt.feedback(
            "closeness",
            closeness,
            item_key=item,
            comment=None
            if abs(level - OPTIMUM) < 1e-9
            else f"{critique}: item {item} needed more care",
        )
    genopt.feedback("mean_closeness", total / len(items))
    return total / len(items)

"""An offline stand-in for an LLM, for the example pipeline and the demo.

``genopt-demo/keywords`` is a scripted litellm provider (:mod:`prefect_genopt.testing`):
it goes through litellm's real call path (so spans, tokens and cost accounting are real)
and answers deterministically by following its system prompt *literally*: a clause such
as ``billing: invoice, refund`` makes it answer ``billing`` for a ticket that contains
one of those words. A prompt with no such clauses gets ``other``. So the prompt really
matters, which is what an optimizer needs to see.

Few-shot demos (earlier user / assistant turns before the last user message) matter too,
the way surface similarity sways a small model: a ticket its rules leave as ``other`` gets
the answer of the demo that shares the most words (of 3 letters or more) with it, if any
does (the earlier demo on a tie). Whether a demo set helps is for an evaluation to say.

Set ``GENOPT_DEMO_MODEL`` to any litellm model string (``openai/gpt-4o-mini``,
``ollama/qwen2.5``...) to run the example pipeline on a real model instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from prefect_genopt import testing

__all__ = ["PROVIDER", "MODEL", "answer", "respond", "KeywordModel", "register"]

PROVIDER = "genopt-demo"
MODEL = f"{PROVIDER}/keywords"

_WORD = re.compile(r"[a-z]{3,}")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def answer(system: str, user: str, demos: Sequence[tuple[str, str]] = ()) -> str:
    """The label the keyword model gives ``user`` under the ``system`` prompt and the
    few-shot ``demos`` (``(input, answer)`` pairs).

    Example:
        >>> answer("Labels. billing: invoice, refund; bug: crash", "The app crash again")
        'bug'
        >>> answer("Classify the ticket as billing, bug or other.", "refund please")
        'other'
        >>> answer("billing: invoice", "Why did my bill go up in May?",
        ...        [("Send the invoice for May", "billing"), ("Thanks for the help", "other")])
        'billing'
    """
    label = testing.keyword_label(system, user)
    if label != "other" or not demos:
        return label
    words = _words(user)
    best, shared = label, 0
    for text, said in demos:
        n = len(words & _words(text))
        if n > shared:
            best, shared = said.strip().lower(), n
    return best


def respond(call: testing.Call) -> str:
    """Responder: :func:`answer` of the call's system prompt, its last user message and
    the user / assistant turns before it (the few-shot demos).

    Example:
        >>> respond(testing.Call(MODEL, "keywords", [
        ...     {"role": "system", "content": "Answer with a label."},
        ...     {"role": "user", "content": "The export freezes on reports"},
        ...     {"role": "assistant", "content": "bug"},
        ...     {"role": "user", "content": "Reports page is broken"}]))
        'bug'
    """
    turns = [m for m in call.messages if m.get("role") in ("user", "assistant")]
    last = next((i for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] == "user"), None)
    if last is None:
        return testing.keyword_label(call.system, "")
    demos = [
        (str(turns[i]["content"] or ""), str(turns[i + 1]["content"] or ""))
        for i in range(last - 1)
        if turns[i]["role"] == "user" and turns[i + 1]["role"] == "assistant"
    ]
    return answer(call.system, str(turns[last]["content"] or ""), demos)


class KeywordModel(testing.ScriptedProvider):
    """litellm provider ``genopt-demo``: a scripted provider answering by :func:`respond`."""

    def __init__(self) -> None:
        super().__init__(PROVIDER, respond)


def register() -> None:
    """Register the ``genopt-demo`` provider with litellm (again: replaces the handler).

    Example:
        >>> import litellm
        >>> register()
        >>> litellm.completion(model=MODEL, messages=[
        ...     {"role": "system", "content": "billing: invoice"},
        ...     {"role": "user", "content": "my invoice is wrong"}]).choices[0].message.content
        'billing'
    """
    testing.register_handler(PROVIDER, KeywordModel())

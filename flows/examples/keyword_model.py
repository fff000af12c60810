"""An offline stand-in for an LLM, for the example pipeline and the demo.

``genopt-demo/keywords`` is a litellm ``CustomLLM``: it goes through litellm's
real call path (so spans, tokens and cost accounting are real) and answers
deterministically by following its system prompt *literally*: a clause such as
``billing: invoice, refund`` makes it answer ``billing`` for a ticket that
contains one of those words. A prompt with no such clauses gets ``other``.
So the prompt really matters, which is what an optimizer needs to see.

Set ``GENOPT_DEMO_MODEL`` to any litellm model string (``openai/gpt-4o-mini``,
``ollama/qwen2.5``...) to run the example pipeline on a real model instead.
"""

from __future__ import annotations

import os
import re
from typing import Any

# litellm fetches a price list at import unless told to use its bundled one (offline here)
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402
from litellm import CustomLLM, ModelResponse  # noqa: E402

PROVIDER = "genopt-demo"
MODEL = f"{PROVIDER}/keywords"
_CLAUSE = re.compile(r"([a-z_]+)\s*:\s*([^;.\n]+)")


def answer(system: str, user: str) -> str:
    """The label the keyword model gives ``user`` under the ``system`` prompt.

    Example:
        >>> answer("Labels. billing: invoice, refund; bug: crash", "The app crash again")
        'bug'
        >>> answer("Classify the ticket as billing, bug or other.", "refund please")
        'other'
    """
    text = user.lower()
    for label, words in _CLAUSE.findall(system.lower()):
        if any(w.strip() and w.strip() in text for w in words.split(",")):
            return label
    return "other"


class KeywordModel(CustomLLM):
    """litellm provider ``genopt-demo``: see the module docstring."""

    def completion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        messages = kwargs.get("messages") or []
        system = " ".join(str(m.get("content", "")) for m in messages if m["role"] == "system")
        user = " ".join(str(m.get("content", "")) for m in messages if m["role"] != "system")
        label = answer(system, user)
        n_in = len(system.split()) + len(user.split())
        return ModelResponse(
            model=MODEL,
            choices=[{"message": {"role": "assistant", "content": label}, "finish_reason": "stop"}],
            usage={"prompt_tokens": n_in, "completion_tokens": 1, "total_tokens": n_in + 1},
        )

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self.completion(*args, **kwargs)


def register() -> None:
    """Register the ``genopt-demo`` provider with litellm (idempotent)."""
    if not any(p.get("provider") == PROVIDER for p in litellm.custom_provider_map):
        litellm.custom_provider_map = [
            *litellm.custom_provider_map,
            {"provider": PROVIDER, "custom_handler": KeywordModel()},
        ]

"""An offline stand-in for an LLM, for the example pipeline and the demo.

``genopt-demo/keywords`` is a scripted litellm provider (:mod:`prefect_genopt.testing`):
it goes through litellm's real call path (so spans, tokens and cost accounting are real)
and answers deterministically by following its system prompt *literally*: a clause such
as ``billing: invoice, refund`` makes it answer ``billing`` for a ticket that contains
one of those words. A prompt with no such clauses gets ``other``. So the prompt really
matters, which is what an optimizer needs to see.

Set ``GENOPT_DEMO_MODEL`` to any litellm model string (``openai/gpt-4o-mini``,
``ollama/qwen2.5``...) to run the example pipeline on a real model instead.
"""

from __future__ import annotations

from prefect_genopt import testing

__all__ = ["PROVIDER", "MODEL", "answer", "KeywordModel", "register"]

PROVIDER = "genopt-demo"
MODEL = f"{PROVIDER}/keywords"


def answer(system: str, user: str) -> str:
    """The label the keyword model gives ``user`` under the ``system`` prompt.

    Example:
        >>> answer("Labels. billing: invoice, refund; bug: crash", "The app crash again")
        'bug'
        >>> answer("Classify the ticket as billing, bug or other.", "refund please")
        'other'
    """
    return testing.keyword_label(system, user)


class KeywordModel(testing.ScriptedProvider):
    """litellm provider ``genopt-demo``: a scripted provider answering by :func:`answer`."""

    def __init__(self) -> None:
        super().__init__(PROVIDER, testing.keyword_labeler)


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

"""A two-step pipeline for the search's multi-step replays: ``summarize`` (upstream: its
own param and its own model) feeds ``classify`` (downstream: the step tuned). Both
record their values; the upstream model counts its calls (:data:`SUMMARIZER`)."""

from __future__ import annotations

import litellm
from prefect import flow

import prefect_genopt as genopt
from flows.examples import keyword_model
from prefect_genopt import testing

keyword_model.register()

#: the upstream step's model: it repeats the ticket in lower case
SUMMARY_MODEL = "twostep-sum/lower"


def _summarize(call: testing.Call) -> str:
    return call.user.lower()


#: the upstream model's provider (its ``calls`` count what the upstream step ran)
SUMMARIZER = testing.register("twostep-sum", _summarize)


class TwoStepParams(genopt.Tunables):
    """Params of the two-step pipeline: one per step."""

    summary_prompt: str = genopt.prompt(
        "Repeat the ticket in lower case.", description="what the summarizer is asked"
    )
    prompt: str = genopt.prompt(
        "billing: invoice; bug: crash", description="the classifier's rules"
    )


@genopt.task(record=True, model=SUMMARY_MODEL, item_key="key")
def summarize(key: str, text: str) -> str:
    """Ask the upstream model for the ticket's summary."""
    p = genopt.current_params(item_key=key)
    resp = litellm.completion(
        model=SUMMARY_MODEL,
        messages=[
            {"role": "system", "content": p.summary_prompt},
            {"role": "user", "content": text},
        ],
    )
    return resp.choices[0].message.content or ""


@genopt.task(record=True, model=keyword_model.MODEL, item_key="key")
def classify(key: str, summary: str) -> str:
    """Ask the keyword model for the summary's label."""
    p = genopt.current_params(item_key=key)
    resp = litellm.completion(
        model=keyword_model.MODEL,
        messages=[{"role": "system", "content": p.prompt}, {"role": "user", "content": summary}],
    )
    return (resp.choices[0].message.content or "").strip()


@flow(name="twostep")
@genopt.pipeline(name="twostep", params=TwoStepParams)
def twostep(items: list[list[str]]) -> int:
    """Summarize, then label each (key, text, expected) item; per-item feedback
    ``correct``."""
    right = 0
    for key, text, expected in items:
        label = classify(key, summarize(key, text))
        ok = label == expected
        right += ok
        genopt.feedback("correct", float(ok), item_key=key, expected=expected)
    return right

"""A two-step pipeline that records its steps and replays verified experiences.

``classify`` calls the offline keyword model through litellm (replay-enabled, its
model declared); ``render`` is a plain-Python step that only records. Feedback per
item says whether the label was right, with the expected label.
"""

from __future__ import annotations

import litellm
from prefect import flow

import prefect_genopt as genopt
from flows.examples import keyword_model

keyword_model.register()

LABELS = ("billing", "bug", "other")
#: the model ``classify`` calls; tests switch it to show a model change invalidates replay
MODEL = {"name": keyword_model.MODEL}


class RecParams(genopt.Tunables):
    """Params of the replaying pipeline."""

    prompt: str = genopt.prompt(
        "billing: invoice, refund; bug: crash, error", description="the classifier's rules"
    )
    prefix: str = genopt.prompt("label", description="what render puts before the label")
    examples: list[dict] = genopt.demos(
        description="worked examples for the classifier", max_items=4, step="classify"
    )


@genopt.check("replayer", step="classify")
def label_known(inputs: dict, output: object) -> bool | str:
    """The classifier's answer is one of the labels."""
    return output in LABELS or f"{output!r} is not a label"


@genopt.task(replay=True, model=lambda: MODEL["name"], item_key="key")
def classify(key: str, text: str) -> str:
    """Ask the model for the ticket's label."""
    p = genopt.current_params(item_key=key)
    resp = litellm.completion(
        model=MODEL["name"],
        messages=[{"role": "system", "content": p.prompt}, {"role": "user", "content": text}],
    )
    return (resp.choices[0].message.content or "").strip()


@genopt.task(record=True)
def render(key: str, label: str) -> str:
    """Format the label for the ticket system."""
    p = genopt.current_params(item_key=key)
    return f"{p.prefix}={label}"


@flow(name="replayer")
@genopt.pipeline(name="replayer", params=RecParams)
def replayer(items: list[list[str]]) -> int:
    """Label each (key, text, expected) item; per-item feedback ``correct``."""
    right = 0
    for key, text, expected in items:
        label = classify(key, text)
        render(key, label)
        ok = label == expected
        right += ok
        genopt.feedback("correct", float(ok), item_key=key, expected=expected)
    return right

"""Example pipeline: triage support tickets with an LLM, then score it.

Run it once (against your Prefect API, or an embedded one):
    python -m flows.examples.triage

Every run lands in the warehouse: the run, its param set, one span per ticket
(inputs, output, the params read), one LLM span per call, and feedback: per
ticket (``correct``, with the ticket id as item key and the expected label) and
per run (``accuracy``). ``classify`` records its full values and replays a
verified experience (``genopt experiences harvest triage --kpi correct``) for a
ticket it has already answered right with the same prompt and model. Its few-shot
``demos`` (empty at first) go before the ticket as chat turns; the nightly search draws
balanced sets of them from ``classify``'s verified answers.
"""

from __future__ import annotations

import os

import litellm
from prefect import flow

import prefect_genopt as genopt
from flows.examples import keyword_model
from flows.examples.tickets import tickets

keyword_model.register()


class TriageParams(genopt.Tunables):
    """What the optimizer may change in the triage pipeline."""

    prompt: str = genopt.prompt(
        "Classify the ticket as billing, bug or other. Answer with the label only. "
        "billing: invoice; bug: crash.",
        description="system prompt of the classifier; the answer must be exactly one of: "
        "billing, bug, other. The classifier follows explicit rules in its prompt, such as "
        "'billing: invoice, refund' (a label, then the words that signal it)",
    )
    temperature: float = genopt.numeric(
        0.0, ge=0.0, le=1.0, description="sampling temperature of the classifier"
    )
    demos: list[dict] = genopt.demos(
        description="worked examples shown to the classifier before the ticket (a ticket "
        "and its right label each), drawn from its verified answers",
        max_items=6,
        step="classify",
    )


LABELS = ("billing", "bug", "other")


def model() -> str:
    """The litellm model the pipeline calls (``GENOPT_DEMO_MODEL``, else the offline one)."""
    return os.environ.get("GENOPT_DEMO_MODEL") or keyword_model.MODEL


def demo_turns(demos: list[dict]) -> list[dict[str, str]]:
    """Few-shot demos as chat turns: the ticket's text as the user's, its label as the
    assistant's (a demo's ``input`` is ``classify``'s arguments, or the text alone).

    Example:
        >>> demo_turns([{"input": {"ticket_id": "T-1", "text": "refund please"},
        ...              "output": "billing"}])
        [{'role': 'user', 'content': 'refund please'}, {'role': 'assistant', 'content': 'billing'}]
    """
    turns = []
    for d in demos:
        given = d.get("input")
        text = given.get("text", "") if isinstance(given, dict) else given
        turns += [
            {"role": "user", "content": str(text)},
            {"role": "assistant", "content": str(d.get("output", ""))},
        ]
    return turns


@genopt.task(replay=True, model=model, item_key="ticket_id")
def classify(ticket_id: str, text: str) -> str:
    """Ask the model for the ticket's label."""
    p = genopt.current_params(item_key=ticket_id)
    resp = litellm.completion(
        model=model(),
        messages=[
            {"role": "system", "content": p.prompt},
            *demo_turns(p.demos),
            {"role": "user", "content": text},
        ],
        temperature=p.temperature,
        max_tokens=5,
    )
    label = (resp.choices[0].message.content or "").strip().lower().rstrip(".")
    return label if label in LABELS else "other"


@flow(name="triage")
@genopt.pipeline(name="triage", params=TriageParams)
def triage(n: int = 8, seed: int = 0) -> float:
    """Label ``n`` tickets and record per-ticket and per-run feedback."""
    batch = tickets(n, seed)
    labels = [classify(t.id, t.text) for t in batch]
    correct = 0
    for t, label in zip(batch, labels, strict=True):
        ok = label == t.label
        correct += ok
        genopt.feedback(
            "correct",
            float(ok),
            item_key=t.id,
            expected=t.label,
            comment=None if ok else f"expected {t.label}, got {label}: {t.text!r}",
        )
    accuracy = correct / len(batch)
    genopt.feedback("accuracy", accuracy)
    return accuracy


if __name__ == "__main__":
    print(f"accuracy: {triage():.2f}")

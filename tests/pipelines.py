"""Pipelines and a scripted LLM shared by the tests (importable by child processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import litellm
from prefect import flow

import prefect_genopt as genopt
from prefect_genopt import testing


def register_scripted_model() -> None:
    """Make ``scripted/<anything>`` a model that labels a ticket by the words its system
    prompt lists for each label ("billing: invoice, refund; bug: crash"), so its answers
    follow the prompt (:func:`prefect_genopt.testing.keyword_labeler`)."""
    testing.register("scripted", testing.keyword_labeler)


register_scripted_model()


class TriageParams(genopt.Tunables):
    prompt: str = genopt.prompt(
        "Classify the ticket as billing, bug or other.", description="system prompt"
    )
    threshold: float = genopt.numeric(
        0.5, ge=0.0, le=1.0, description="min confidence to auto-route"
    )


@genopt.task
def classify(ticket: str) -> str:
    p = genopt.current_params(item_key=ticket)
    resp = litellm.completion(
        model="scripted/triage",
        messages=[{"role": "system", "content": p.prompt}, {"role": "user", "content": ticket}],
    )
    return resp.choices[0].message.content


@flow
@genopt.pipeline(name="triage", params=TriageParams)
def triage(tickets: list[str]) -> list[str]:
    labels = [classify(t) for t in tickets]
    genopt.feedback("accuracy", 0.8, comment="two billing tickets routed to bug")
    return labels


@genopt.task
def priced_call(text: str) -> str:
    resp = litellm.completion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": text}],
        mock_response="ok",
        api_key="sk-proj-abcdefghijklmnopqrstuvwx",
    )
    return resp.choices[0].message.content


@genopt.task
async def async_step(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


@genopt.task
def failing_step(x: int) -> int:
    raise ValueError(f"bad input {x} with password=hunter22")


@flow
@genopt.pipeline(name="fanout", params=TriageParams)
def fanout(n: int) -> int:
    mapped = classify.map([f"ticket {i} invoice" for i in range(n)])
    submitted = [classify.submit(f"crash {i}") for i in range(n)]
    priced_call("hello")
    total = sum(len(f.result()) for f in [*mapped, *submitted])
    return total


@flow
@genopt.pipeline(name="asyncpipe")
async def asyncpipe(n: int) -> int:
    results = await asyncio.gather(*[async_step(i) for i in range(n)])
    return sum(results)


@flow
@genopt.pipeline(name="fails")
def fails() -> None:
    failing_step(3)


@genopt.task
def burst(n: int, run_tag: str) -> int:
    """Emit ``n`` child spans through genopt's tracer (a burst of traced work)."""
    from prefect_genopt.tracing import tracer

    t = tracer()
    for i in range(n):
        with t.start_as_current_span(f"step-{i}") as span:
            span.set_attribute("test.run_tag", run_tag)
            span.set_attribute("test.i", i)
    return n


@flow
@genopt.pipeline(name="load")
def load(n: int, run_tag: str, feedback_items: int) -> int:
    emitted = burst(n, run_tag)
    for i in range(feedback_items):
        genopt.feedback("item_ok", float(i % 2), item_key=f"{run_tag}-{i}")
    return emitted


@genopt.task
def die_now() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(10)


@flow
@genopt.pipeline(name="killed", params=TriageParams)
def killed(before: int) -> None:
    for i in range(before):
        classify(f"invoice {i}")
    die_now()

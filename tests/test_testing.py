"""prefect_genopt.testing: one scripted litellm provider for tests, examples and benches."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import litellm
import pytest

from prefect_genopt import testing
from prefect_genopt.testing import OPTIMIZER_MODES, Call, Reply

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [
    {"role": "system", "content": "billing: invoice, refund; bug: crash"},
    {"role": "user", "content": "The app crash on start"},
]


@pytest.fixture
def provider() -> Iterator[str]:
    """A provider name unregistered after the test."""
    name = "test-scripted"
    yield name
    testing.unregister(name)


def _registered(name: str) -> list[object]:
    return [p["custom_handler"] for p in litellm.custom_provider_map if p["provider"] == name]


LOAD_ALONE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("scripted_alone", sys.argv[1])
module = sys.modules["scripted_alone"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print("litellm" in sys.modules)
"""


def test_import_does_not_import_litellm() -> None:
    path = str(ROOT / "prefect_genopt" / "testing" / "__init__.py")
    out = subprocess.run(
        [sys.executable, "-c", LOAD_ALONE, path], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_register_answers_through_litellm_then_unregister_refuses(provider: str) -> None:
    handler = testing.register(provider, testing.keyword_labeler)
    assert isinstance(handler, litellm.CustomLLM)
    assert isinstance(handler, testing.ScriptedProvider)
    resp = litellm.completion(model=f"{provider}/triage", messages=MESSAGES)
    assert resp.choices[0].message.content == "bug"
    assert resp.model == f"{provider}/triage"
    testing.unregister(provider)
    assert _registered(provider) == []
    with pytest.raises(litellm.BadRequestError):
        litellm.completion(model=f"{provider}/triage", messages=MESSAGES)


def test_every_call_is_recorded(provider: str) -> None:
    handler = testing.register(provider, lambda call: "ok")
    litellm.completion(
        model=f"{provider}/a/b", messages=MESSAGES, temperature=0.3, max_tokens=7, seed=4
    )
    litellm.completion(model=f"{provider}/c", messages=MESSAGES[1:])
    first, second = handler.calls
    assert first == Call(
        model=f"{provider}/a/b",
        route="a/b",
        messages=MESSAGES,
        temperature=0.3,
        params=first.params,
    )
    assert first.params["max_tokens"] == 7 and first.params["seed"] == 4
    assert first.system == MESSAGES[0]["content"] and first.user == MESSAGES[1]["content"]
    assert (second.route, second.temperature, second.system) == ("c", None, "")
    handler.reset()
    assert handler.calls == []


def test_calls_from_many_threads_are_all_recorded(provider: str) -> None:
    handler = testing.register(provider, lambda call: call.user)

    answers: list[str] = []

    def work(i: int) -> None:
        for j in range(10):
            msg = [{"role": "user", "content": f"{i}-{j}"}]
            resp = litellm.completion(model=f"{provider}/x", messages=msg)
            answers.append(resp.choices[0].message.content)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent = sorted(f"{i}-{j}" for i in range(6) for j in range(10))
    assert sorted(c.user for c in handler.calls) == sent
    assert sorted(answers) == sent


def test_a_reply_sets_finish_reason_and_usage(provider: str) -> None:
    testing.register(
        provider,
        lambda call: (
            Reply("cut", finish_reason="length", prompt_tokens=120, completion_tokens=30)
            if call.route == "long"
            else Reply("three word answer")
        ),
    )
    resp = litellm.completion(model=f"{provider}/long", messages=MESSAGES)
    assert resp.choices[0].finish_reason == "length"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (120, 30)
    assert resp.usage.total_tokens == 150
    resp = litellm.completion(model=f"{provider}/short", messages=MESSAGES)
    assert resp.choices[0].finish_reason == "stop"
    # default usage: words in the messages, words in the answer
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (10, 3)


def test_delay_is_slept_per_call_and_can_change(provider: str) -> None:
    handler = testing.register(provider, lambda call: "ok", delay=0.3)
    t0 = time.perf_counter()
    litellm.completion(model=f"{provider}/x", messages=MESSAGES)
    assert time.perf_counter() - t0 >= 0.3
    handler.delay = 0.0
    t0 = time.perf_counter()
    litellm.completion(model=f"{provider}/x", messages=MESSAGES)
    assert time.perf_counter() - t0 < 0.3


def test_async_calls_answer_and_wait_concurrently(provider: str) -> None:
    handler = testing.register(provider, testing.keyword_labeler, delay=0.5)

    async def ask(n: int) -> list[str]:
        replies = await asyncio.gather(
            *[litellm.acompletion(model=f"{provider}/a", messages=MESSAGES) for _ in range(n)]
        )
        return [r.choices[0].message.content for r in replies]

    t0 = time.perf_counter()
    assert asyncio.run(ask(4)) == ["bug"] * 4
    assert time.perf_counter() - t0 < 1.5  # 4 x 0.5 s, slept side by side
    assert len(handler.calls) == 4


def test_registering_again_replaces_the_handler(provider: str) -> None:
    first = testing.register(provider, lambda call: "first")
    second = testing.register(provider, lambda call: "second")
    assert _registered(provider) == [second]
    resp = litellm.completion(model=f"{provider}/x", messages=MESSAGES)
    assert resp.choices[0].message.content == "second"
    assert (len(first.calls), len(second.calls)) == (0, 1)


def test_register_handler_keeps_other_providers(provider: str) -> None:
    others = [p for p in litellm.custom_provider_map if p["provider"] != provider]
    testing.register(provider, lambda call: "x")
    testing.unregister(provider)
    assert litellm.custom_provider_map == others


def test_scripted_optimizer_answers_every_mode() -> None:
    prompt = "#Variables\n(number) level = 0.2\n#Feedback\ncloseness = 0.5\ncritique: too low"
    for mode in OPTIMIZER_MODES:
        if mode == "slow":  # follow's answer, 3 s late
            continue
        call = Call(f"opt/{mode}", mode, [{"role": "user", "content": prompt}])
        reply = testing.scripted_optimizer(call)
        assert isinstance(reply.text, str) and reply.text
        assert reply.finish_reason == ("length" if mode == "cutoff" else "stop")
    follow = testing.scripted_optimizer(Call("opt/follow", "follow", call.messages))
    assert '"level":0.7' in follow.text
    with pytest.raises(ValueError, match="unknown scripted optimizer mode"):
        testing.scripted_optimizer(Call("opt/nope", "nope", call.messages))


def test_kill_at_refuses_an_unknown_point() -> None:
    with pytest.raises(ValueError, match="unknown ingest point"):
        testing.kill_at("halfway")

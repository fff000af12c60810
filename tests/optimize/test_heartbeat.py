"""A long optimizer LLM call says it is still waiting, and stops saying so when it returns."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from prefect_genopt import testing
from prefect_genopt.optimize.llm import LLMClient, LLMTimeout

ANSWER = '{"reasoning": "r", "suggestion": {"level": 0.5}}'


@pytest.fixture
def slow_model() -> Iterator[str]:
    testing.register("slowopt", lambda call: ANSWER, delay=0.6)
    yield "slowopt/answer"
    testing.unregister("slowopt")


def _client(model: str, timeout: float = 30.0) -> tuple[LLMClient, list[str]]:
    client = LLMClient(model, "none", timeout_s=timeout)
    lines: list[str] = []
    client.heartbeat = lines.append
    return client, lines


def test_a_slow_call_prints_a_heartbeat_until_it_returns(
    slow_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_LLM_HEARTBEAT", "0.1")
    client, lines = _client(slow_model)
    reply = client.complete([{"role": "user", "content": "go"}], None)
    assert reply.text == ANSWER
    assert lines, "no heartbeat during a 0.6 s call with a 0.1 s heartbeat"
    assert all(line.startswith("still waiting for slowopt/answer (") for line in lines)
    seen = len(lines)
    time.sleep(0.3)  # the call returned: no heartbeat line after it
    assert len(lines) == seen


def test_no_heartbeat_when_turned_off(slow_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENOPT_LLM_HEARTBEAT", "0")
    client, lines = _client(slow_model)
    client.complete([{"role": "user", "content": "go"}], None)
    assert lines == []


def test_the_timeout_still_holds_with_a_heartbeat(
    slow_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_LLM_HEARTBEAT", "0.1")
    client, lines = _client(slow_model, timeout=0.25)
    with pytest.raises(LLMTimeout, match="did not answer within 0.25s"):
        client.complete([{"role": "user", "content": "go"}], None)
    assert lines  # it said it was waiting before giving up


def test_heartbeat_goes_to_the_module_logger_outside_a_run(
    slow_model: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GENOPT_LLM_HEARTBEAT", "0.1")
    client = LLMClient(slow_model, "none", timeout_s=30)
    with caplog.at_level("INFO", logger="prefect_genopt.optimize"):
        client.complete([{"role": "user", "content": "go"}], None)
    assert any("still waiting for slowopt/answer" in r.getMessage() for r in caplog.records)

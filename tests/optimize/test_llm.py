"""The optimizer's LLM layer: lenient parsing, response formats, timeout, budget, cost."""

from __future__ import annotations

import pytest

from prefect_genopt.optimize.llm import (
    Budget,
    BudgetExhausted,
    LLMCallError,
    LLMClient,
    LLMReply,
    LLMTimeout,
    ReplyError,
    parse_reply,
    resolve_model,
    resolve_response_format,
)
from tests.optimize import scripted

ANSWER = '{"reasoning": "r", "suggestion": {"level": 0.5}}'


@pytest.mark.parametrize(
    "text",
    [
        ANSWER,
        f"```json\n{ANSWER}\n```",
        f"```\n{ANSWER}\n```",
        f"Sure, here it is:\n{ANSWER}\nLet me know.",
        f"Thinking about {{braces}} first. {ANSWER}",
        '{"reasoning": "a } in a string", "suggestion": {"level": 0.5}}',
        '{"reasoning": "raw\nnewline\tand tab", "suggestion": {"level": 0.5}}',
    ],
)
def test_lenient_parsing(text: str) -> None:
    reasoning, suggestion = parse_reply(text)
    assert suggestion == {"level": 0.5}
    assert reasoning


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("raise the level", "no JSON object"),
        ('{"reasoning": "r"}', "no 'suggestion' key"),
        ('{"reasoning": "r", "suggestion": "level=0.5"}', "must be an object"),
        ('{"reasoning": "r", "suggestion": {"level": 0.5}', "does not parse"),
    ],
)
def test_unusable_answers_say_why(text: str, why: str) -> None:
    with pytest.raises(ReplyError, match=why):
        parse_reply(text)


def test_null_suggestion_means_no_change() -> None:
    assert parse_reply('{"reasoning": "fine", "suggestion": null}') == ("fine", {})


def test_response_format_defaults_by_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENOPT_RESPONSE_FORMAT", raising=False)
    assert resolve_response_format("openai/gpt-4o-mini") == "json_schema"
    assert resolve_response_format("gpt-4o-mini") == "json_schema"
    assert resolve_response_format("ollama/qwen2.5") == "json_schema"
    assert resolve_response_format("genopt-local/qwen2.5-coder-1.5b-instruct") == "json_schema"
    assert resolve_response_format("scripted-opt/follow") == "none"
    monkeypatch.setenv("GENOPT_RESPONSE_FORMAT", "json_object")
    assert resolve_response_format("openai/gpt-4o-mini") == "json_object"
    assert resolve_response_format("openai/gpt-4o-mini", "none") == "none"


def test_model_comes_from_the_argument_then_genopt_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENOPT_MODEL", "openai/gpt-4o-mini")
    assert resolve_model() == "openai/gpt-4o-mini"
    assert resolve_model("scripted-opt/follow") == "scripted-opt/follow"


def test_request_carries_the_schema_only_for_json_schema() -> None:
    schema = {"type": "object"}
    msgs = [{"role": "user", "content": "x"}]
    req = LLMClient("m/x", "json_schema", 5)._request(msgs, schema)
    assert req["response_format"]["json_schema"]["schema"] is schema
    assert req["timeout"] == 5
    assert LLMClient("m/x", "json_object", 5)._request(msgs, schema)["response_format"] == {
        "type": "json_object"
    }
    assert "response_format" not in LLMClient("m/x", "none", 5)._request(msgs, schema)


def test_call_goes_through_litellm_and_counts_tokens_cost_unknown_is_none() -> None:
    client = LLMClient("scripted-opt/follow", "none", 10)
    reply = client.complete([{"role": "user", "content": "(number) level = 0.2"}], None)
    assert reply.input_tokens > 0 and reply.output_tokens > 0
    assert reply.cost_usd is None  # litellm has no price for this model: NULL, not 0


def test_known_price_gives_a_cost() -> None:
    client = LLMClient("gpt-4o-mini", "none", 10)
    import litellm

    response = litellm.completion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        mock_response=ANSWER,
        api_key="sk-test",
    )
    from prefect_genopt.optimize.llm import _cost

    assert _cost(response) is not None and _cost(response) > 0
    assert client.model == "gpt-4o-mini"


def test_timeout_is_enforced_even_for_a_custom_provider() -> None:
    client = LLMClient("scripted-opt/slow", "none", 0.5)
    with pytest.raises(LLMTimeout, match="did not answer within 0.5s"):
        client.complete([{"role": "user", "content": "(number) level = 0.2"}], None)
    scripted.wait_idle()


def test_provider_errors_become_one_clear_type() -> None:
    client = LLMClient("openai/gpt-4o-mini", "none", 5, api_base="http://127.0.0.1:9")
    with pytest.raises(LLMCallError, match="openai/gpt-4o-mini"):
        client.complete([{"role": "user", "content": "hi"}], None)


def test_budget_in_tokens_and_usd() -> None:
    b = Budget(max_tokens=1000, max_usd=0.01)
    b.check(900)
    b.charge(LLMReply("{}", "m", 500, 100, 0.004, 1.0, "stop"))
    assert (b.tokens, b.calls, b.priced) == (600, 1, True)
    with pytest.raises(BudgetExhausted, match="token budget"):
        b.check(500)
    b.charge(LLMReply("{}", "m", 10, 10, 0.007, 1.0, "stop"))
    with pytest.raises(BudgetExhausted, match="USD budget"):
        b.check(1)


def test_scripted_model_is_registered() -> None:
    assert scripted.PROVIDER == "scripted-opt"

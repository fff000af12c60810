"""LLM calls through litellm become gen_ai child spans, recorded in the calling thread."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import litellm
import pytest

import prefect_genopt as genopt
from prefect_genopt.llm_spans import is_instrumented


@pytest.fixture(autouse=True)
def _tracing() -> None:
    genopt.setup_tracing()


def test_litellm_is_instrumented() -> None:
    assert is_instrumented(litellm)


def test_calls_outside_a_run_are_recorded_without_a_run(warehouse_path: Path) -> None:
    litellm.completion(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], mock_response="yo"
    )
    row = genopt.Warehouse().sql("SELECT * FROM spans WHERE run_type = 'llm'")[0]
    assert row["run_id"] is None and row["llm_model"] == "gpt-4o-mini"
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0 and row["cost_usd"] > 0
    assert row["status"] == "OK" and row["duration_ms"] > 0
    # the messages and the completion are the span's inputs and output, not attributes
    assert json.loads(row["output"]) == ["yo"]
    assert json.loads(row["inputs"]) == [{"role": "user", "content": "hi"}]
    attributes = json.loads(row["attributes"])
    assert "gen_ai.completion" not in attributes and "gen_ai.prompt" not in attributes


def test_llm_inputs_and_output_are_redacted_and_truncated(
    warehouse_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_MAX_VALUE_CHARS", "300")
    secret = "sk-proj-abcdefghijklmnopqrstuvwx"
    litellm.completion(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"key {secret} " + "x" * 2000}],
        mock_response="y" * 2000,
    )
    row = genopt.Warehouse().sql("SELECT inputs, output FROM spans WHERE run_type = 'llm'")[0]
    assert secret not in row["inputs"] and "REDACTED" in row["inputs"]
    assert len(row["inputs"]) < 400 and len(row["output"]) < 400


def test_failed_calls_are_error_spans(warehouse_path: Path) -> None:
    with pytest.raises(litellm.RateLimitError):
        litellm.completion(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "hi"}],
            mock_response=litellm.RateLimitError("slow down", "openai", "gpt-4o-mini"),
        )
    row = genopt.Warehouse().sql("SELECT * FROM spans WHERE run_type = 'llm'")[0]
    assert row["status"] == "ERROR" and "RateLimitError" in row["error"]


def test_async_calls_are_recorded(warehouse_path: Path) -> None:
    async def go() -> None:
        await litellm.acompletion(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}], mock_response="b"
        )

    asyncio.run(go())
    rows = genopt.Warehouse().sql("SELECT llm_model FROM spans WHERE run_type = 'llm'")
    assert rows == [{"llm_model": "gpt-4o-mini"}]


def test_litellm_is_traced_once_a_decorator_sets_up_tracing(tmp_path: Path) -> None:
    code = (
        "import prefect_genopt as genopt, litellm\n"
        "from prefect_genopt.llm_spans import is_instrumented\n"
        "print(is_instrumented(litellm))\n"  # importing genopt patches nothing
        "@genopt.task\n"  # no explicit setup_tracing(): the decorator calls it
        "def step() -> None: ...\n"
        "from litellm import completion, acompletion\n"
        "print(is_instrumented(litellm), getattr(completion, '__genopt_traced__', False),"
        " getattr(acompletion, '__genopt_traced__', False))\n"
    )
    env = {**os.environ, "GENOPT_WAREHOUSE": str(tmp_path / "w.duckdb")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["False", "True", "True", "True"], out.stderr[-2000:]

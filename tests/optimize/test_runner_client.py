"""optimize(client=...): the optimizer calls the client it is given, not settings.model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_genopt import testing
from prefect_genopt.optimize import OptimizerSettings, optimize
from prefect_genopt.optimize.llm import LLMClient
from tests.optimize import scripted

PROVIDER = "client-opt"


@pytest.fixture
def own_model() -> Iterator[testing.ScriptedProvider]:
    """The scripted optimizer under a provider of this test's own."""
    yield testing.register(PROVIDER, testing.scripted_optimizer)
    testing.unregister(PROVIDER)


def test_optimize_calls_the_client_it_is_given(
    prefect_api: str, warehouse_path: Path, own_model: testing.ScriptedProvider
) -> None:
    for r in range(2):
        scripted.knob([f"item-{i}-r{r}" for i in range(6)])
    scripted.PROMPTS.pop("empty", None)
    settings = OptimizerSettings(
        pipeline="knob",
        model="scripted-opt/empty",
        response_format="none",
        max_updates=1,
        search=False,
    )
    client = LLMClient(f"{PROVIDER}/follow", "none", timeout_s=10)
    result = optimize(settings, client=client)
    assert result.model == f"{PROVIDER}/follow"
    assert [u.status for u in result.updates] == ["proposed"]  # "empty" would ask no change
    assert [c.route for c in own_model.calls] == ["follow"]
    assert "(number) level = 0.2" in own_model.calls[0].user
    assert "empty" not in scripted.PROMPTS  # settings.model was not called

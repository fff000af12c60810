"""The public API is curated: exactly these names, each documented."""

from __future__ import annotations

import prefect_genopt as genopt

PUBLIC = {
    "Tunables",
    "prompt",
    "numeric",
    "choice",
    "demos",
    "pipeline",
    "task",
    "current_params",
    "pinned_params",
    "feedback",
    "check",
    "harvest",
    "OptimizerSettings",
    "Optimizer",
    "OptoPrime",
    "RolloutPlan",
    "Warehouse",
    "IngestResult",
    "setup_tracing",
    "GenoptSettings",
    "get_settings",
    "FeedbackError",
    "UnknownRunError",
    "WarehouseBusyError",
    "WarehouseMissingError",
    "__version__",
}


def test_all_is_exactly_the_public_surface() -> None:
    assert set(genopt.__all__) == PUBLIC
    assert len(genopt.__all__) == len(set(genopt.__all__))


def test_every_public_name_exists_and_is_documented() -> None:
    for name in genopt.__all__:
        obj = getattr(genopt, name)
        if name != "__version__":
            assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"


def test_feedback_signature_matches_the_contract() -> None:
    import inspect

    sig = inspect.signature(genopt.feedback)
    assert list(sig.parameters) == [
        "kpi",
        "value",
        "comment",
        "run_id",
        "item_key",
        "source",
        "idempotency_key",
    ]
    assert sig.parameters["source"].default == "code"
    assert sig.parameters["value"].default is None
    assert all(
        sig.parameters[n].kind is inspect.Parameter.KEYWORD_ONLY
        for n in ["comment", "run_id", "item_key", "source", "idempotency_key"]
    )
    wsig = inspect.signature(genopt.Warehouse)
    assert wsig.parameters["path"].default is None and wsig.parameters["read_only"].default
    assert list(inspect.signature(genopt.current_params).parameters) == ["item_key"]

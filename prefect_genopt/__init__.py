"""prefect-genopt: self-improving Prefect pipelines.

Declare what may be tuned, run the pipeline as usual, and every run lands in a
DuckDB trace warehouse (spans, params, LLM calls, KPI feedback) that answers SQL.

Importing the package is light and changes nothing in the process: each public
name is imported from its module on first use (PEP 562), so Prefect, DuckDB,
litellm and the OpenTelemetry SDK load only when something needs them, and
litellm is traced once tracing is set up (:func:`setup_tracing`, which
``@genopt.pipeline`` and ``@genopt.task`` call).

Example:
    >>> import prefect_genopt as genopt
    >>> class Params(genopt.Tunables):
    ...     threshold: float = genopt.numeric(0.5, ge=0, le=1, description="min confidence")
    >>> Params().values()
    {'threshold': 0.5}
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports these
    from prefect_genopt.context import pinned_params
    from prefect_genopt.feedback import FeedbackError, UnknownRunError, feedback
    from prefect_genopt.optimize import Optimizer, OptimizerSettings, OptoPrime
    from prefect_genopt.pipeline import current_params, pipeline, task
    from prefect_genopt.replay.checks import check
    from prefect_genopt.replay.experiences import harvest
    from prefect_genopt.rollout import RolloutPlan
    from prefect_genopt.settings import GenoptSettings, get_settings
    from prefect_genopt.tracing import setup_tracing
    from prefect_genopt.tunables import Tunables, choice, demos, numeric, prompt
    from prefect_genopt.warehouse import (
        IngestResult,
        Warehouse,
        WarehouseBusyError,
        WarehouseMissingError,
    )

__version__ = "0.1.0"

__all__ = [
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
]

#: Where each public name lives (the module it is imported from on first use).
_LAZY: dict[str, str] = {
    **dict.fromkeys(("Tunables", "prompt", "numeric", "choice", "demos"), "tunables"),
    **dict.fromkeys(("pipeline", "task", "current_params"), "pipeline"),
    "pinned_params": "context",
    **dict.fromkeys(("feedback", "FeedbackError", "UnknownRunError"), "feedback"),
    "check": "replay.checks",
    "harvest": "replay.experiences",
    **dict.fromkeys(("OptimizerSettings", "Optimizer", "OptoPrime"), "optimize"),
    "RolloutPlan": "rollout",
    **dict.fromkeys(
        ("Warehouse", "IngestResult", "WarehouseBusyError", "WarehouseMissingError"), "warehouse"
    ),
    "setup_tracing": "tracing",
    **dict.fromkeys(("GenoptSettings", "get_settings"), "settings"),
}


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access, then keep it here.

    A submodule not imported yet is imported too (``genopt.errors.BusyError``
    works without ``import prefect_genopt.errors``, as with eager imports).
    """
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    if not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # the import binds it here too
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """This package's module type: a loaded submodule does not hide the function it exports.

    ``pipeline`` and ``feedback`` name both a submodule and the public function in
    it. The import system binds a submodule on its package once it is loaded; here
    the package keeps the public function instead, as eager imports used to.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if (
            isinstance(value, types.ModuleType)
            and _LAZY.get(name) == name
            and value.__name__ == f"{__name__}.{name}"
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

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

from typing import TYPE_CHECKING

from prefect_genopt._lazy import attach

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports these
    from prefect_genopt.context import pinned_params
    from prefect_genopt.feedback import FeedbackError, UnknownRunError, feedback
    from prefect_genopt.optimize import Optimizer, OptimizerSettings, OptoPrime
    from prefect_genopt.pipeline import current_params, pipeline, task
    from prefect_genopt.replay.checks import check
    from prefect_genopt.replay.experiences import harvest
    from prefect_genopt.rollout import RolloutPlan
    from prefect_genopt.rollout.store import ParamSetBlock as ParamSetBlock
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
    # not in __all__: listed (dir, inspect.getmembers) so that `prefect block register -m
    # prefect_genopt` finds and registers the genopt-param-set block type
    "ParamSetBlock": "rollout.store",
    **dict.fromkeys(
        ("Warehouse", "IngestResult", "WarehouseBusyError", "WarehouseMissingError"), "warehouse"
    ),
    "setup_tracing": "tracing",
    **dict.fromkeys(("GenoptSettings", "get_settings"), "settings"),
}


# Each public name is imported from its module on first access, then kept here; a
# submodule not imported yet is imported on attribute access too (``genopt.errors.BusyError``
# works without ``import prefect_genopt.errors``, as with eager imports); a loaded
# pipeline/feedback submodule does not hide the function of the same name.
__getattr__, __dir__ = attach(__name__, _LAZY)

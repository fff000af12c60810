"""prefect-genopt: self-improving Prefect pipelines.

Declare what may be tuned, run the pipeline as usual, and every run lands in a
DuckDB trace warehouse (spans, params, LLM calls, KPI feedback) that answers SQL.

Example:
    >>> import prefect_genopt as genopt
    >>> class Params(genopt.Tunables):
    ...     threshold: float = genopt.numeric(0.5, ge=0, le=1, description="min confidence")
    >>> Params().values()
    {'threshold': 0.5}
"""

from __future__ import annotations

import os as _os

# litellm fetches a price list at import unless told otherwise; genopt runs offline.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from prefect_genopt import llm_spans as _llm_spans  # noqa: E402
from prefect_genopt.feedback import FeedbackError, UnknownRunError, feedback  # noqa: E402
from prefect_genopt.optimize import Optimizer, OptimizerSettings, OptoPrime  # noqa: E402
from prefect_genopt.pipeline import current_params, pinned_params, pipeline, task  # noqa: E402
from prefect_genopt.replay.checks import check  # noqa: E402
from prefect_genopt.replay.experiences import harvest  # noqa: E402
from prefect_genopt.rollout import RolloutPlan  # noqa: E402
from prefect_genopt.settings import GenoptSettings, get_settings  # noqa: E402
from prefect_genopt.tracing import setup_tracing  # noqa: E402
from prefect_genopt.tunables import Tunables, choice, demos, numeric, prompt  # noqa: E402
from prefect_genopt.warehouse import (  # noqa: E402
    IngestResult,
    Warehouse,
    WarehouseBusyError,
    WarehouseMissingError,
)

_llm_spans.install()  # LLM calls through litellm become spans (once tracing is set up)

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

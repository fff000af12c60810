"""litellm, imported offline: the one place where genopt first imports litellm.

litellm downloads its model price list when it is imported, unless
``LITELLM_LOCAL_MODEL_COST_MAP`` is set; genopt runs offline. A genopt module
that needs litellm imports it from here, not directly, so the variable is set
(only if it is unset, and only if litellm is not imported yet) right before
litellm loads. Importing :mod:`prefect_genopt` itself sets nothing.

Custom providers (the embedded model, the scripted ones of :mod:`prefect_genopt.testing`)
are registered here too (:func:`register_handler`), in litellm's
``custom_provider_map``.

Example:
    >>> from prefect_genopt._litellm import litellm
    >>> litellm.__name__
    'litellm'
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

COST_MAP_VARIABLE = "LITELLM_LOCAL_MODEL_COST_MAP"

if "litellm" not in sys.modules:
    os.environ.setdefault(COST_MAP_VARIABLE, "True")

import litellm  # noqa: E402 - after the variable, which litellm reads at import

__all__ = ["litellm", "register_handler", "unregister"]

_registry_lock = threading.Lock()


def register_handler(provider: str, handler: Any) -> None:
    """Route litellm's ``provider/<anything>`` to ``handler`` (a ``litellm.CustomLLM``).

    Registering a provider again replaces its handler.
    """
    with _registry_lock:
        litellm.custom_provider_map = [
            *(p for p in litellm.custom_provider_map if p.get("provider") != provider),
            {"provider": provider, "custom_handler": handler},
        ]


def unregister(provider: str) -> None:
    """Remove ``provider``: litellm then refuses its models (``litellm.BadRequestError``)."""
    with _registry_lock:
        litellm.custom_provider_map = [
            p for p in litellm.custom_provider_map if p.get("provider") != provider
        ]

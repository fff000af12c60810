"""litellm, imported offline: the one place where genopt first imports litellm.

litellm downloads its model price list when it is imported, unless
``LITELLM_LOCAL_MODEL_COST_MAP`` is set; genopt runs offline. A genopt module
that needs litellm imports it from here, not directly, so the variable is set
(only if it is unset, and only if litellm is not imported yet) right before
litellm loads. Importing :mod:`prefect_genopt` itself sets nothing.

Example:
    >>> from prefect_genopt._litellm import litellm
    >>> litellm.__name__
    'litellm'
"""

from __future__ import annotations

import os
import sys

COST_MAP_VARIABLE = "LITELLM_LOCAL_MODEL_COST_MAP"

if "litellm" not in sys.modules:
    os.environ.setdefault(COST_MAP_VARIABLE, "True")

import litellm  # noqa: E402 - after the variable, which litellm reads at import

__all__ = ["litellm"]

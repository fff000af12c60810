"""Test-session environment, set before anything imports Prefect or litellm.

A private PREFECT_HOME and warehouse, quiet logs, no analytics, litellm's
bundled price list (no network). Applies to tests/ and to the doctests.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_HOME = tempfile.mkdtemp(prefix="genopt-tests-")
os.environ["PREFECT_HOME"] = _HOME
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# a loaded 2-core machine can take longer than Prefect's default 20 s to start the test API
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ["GENOPT_WAREHOUSE"] = str(Path(_HOME) / "session.duckdb")

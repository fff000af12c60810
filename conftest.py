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
# Harness services the suite never reads, off: every task-state event the task-run recorder
# writes and every log line sent to the API compete for the test server's one SQLite file,
# and under load a request then waited out SQLite's 60 s busy timeout (seen: 60-65 s stalls
# in set_flow_run_state). Events stay on: tests read genopt.rollout.* events back.
for _service in ("TASK_RUN_RECORDER", "TRIGGERS", "EVENT_LOGGER"):
    os.environ.setdefault(f"PREFECT_SERVER_SERVICES_{_service}_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
os.environ["GENOPT_WAREHOUSE"] = str(Path(_HOME) / "session.duckdb")

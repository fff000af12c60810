"""``import prefect_genopt`` is light and changes nothing; public names load on first use."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import prefect_genopt as genopt

HEAVY = ("litellm", "duckdb", "prefect", "opentelemetry.sdk")

# Run in a fresh interpreter: this test session has imported everything already.
FRESH_IMPORT = """
import importlib, inspect, json, os, sys
env = dict(os.environ)
finders = list(sys.meta_path)

import prefect_genopt

out = {
    "heavy": [m for m in HEAVY if m in sys.modules],
    "env_changed": dict(os.environ) != env,
    "new_finders": [type(f).__module__ for f in sys.meta_path if f not in finders],
    "dir_missing": sorted(set(prefect_genopt.__all__) - set(dir(prefect_genopt))),
}
out["submodule"] = prefect_genopt.semconv.__name__  # not imported yet: imported on access
module = importlib.import_module("prefect_genopt.feedback")  # loaded before the name is used
out["feedback_is_the_function"] = prefect_genopt.feedback is module.feedback
out["warehouse"] = prefect_genopt.Warehouse.__name__
found = dict(inspect.getmembers(prefect_genopt))
out["members_missing"] = sorted(set(prefect_genopt.__all__) - set(found))
print(json.dumps(out))
"""


def test_a_fresh_import_is_light_and_changes_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    code = f"HEAVY = {HEAVY!r}\n{FRESH_IMPORT}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["heavy"] == []  # litellm, DuckDB, Prefect, the OTel SDK load on first use
    assert not out["env_changed"]  # no LITELLM_LOCAL_MODEL_COST_MAP, nothing else
    assert out["new_finders"] == []  # litellm is not patched, nor hooked, at import
    assert out["dir_missing"] == []
    assert out["submodule"] == "prefect_genopt.semconv"
    assert out["feedback_is_the_function"]
    assert out["warehouse"] == "Warehouse"
    assert out["members_missing"] == []


def test_public_names_resolve_to_their_modules() -> None:
    from prefect_genopt.pipeline import pipeline
    from prefect_genopt.warehouse import Warehouse

    assert genopt.pipeline is pipeline and genopt.Warehouse is Warehouse
    assert set(genopt.__all__) <= set(dir(genopt))
    assert isinstance(genopt.__version__, str)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        genopt.no_such_name  # noqa: B018

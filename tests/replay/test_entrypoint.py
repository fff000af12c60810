"""The replay gate loads a pipeline from the file it was recorded running from, whatever
the current directory (issue 15, item 7)."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from prefect_genopt.pipeline import entrypoint_of
from prefect_genopt.replay.gate import load_entrypoint


def _project(tmp_path: Path) -> tuple[Path, str]:
    """A project with a package whose flow module uses a relative import."""
    pkg = f"gateproj_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "project"
    (root / pkg / "flows").mkdir(parents=True)
    (root / pkg / "__init__.py").write_text("")
    (root / pkg / "flows" / "__init__.py").write_text("")
    (root / pkg / "flows" / "rules.py").write_text("ANSWER = 42\n")
    (root / pkg / "flows" / "triage.py").write_text(
        "from .rules import ANSWER\n\ndef triage_flow():\n    return ANSWER\n"
    )
    return root, pkg


def test_a_module_entrypoint_loads_from_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, pkg = _project(tmp_path)
    # recorded by a run started in the project directory
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    module = __import__(f"{pkg}.flows.triage", fromlist=["triage_flow"])
    ep = entrypoint_of(module.triage_flow)
    assert ep["file"] == f"{pkg}/flows/triage.py" and Path(ep["path"]).is_absolute()
    monkeypatch.undo()  # back to the test's cwd and sys.path: the project is not importable
    for name in [m for m in sys.modules if m.startswith(pkg)]:
        del sys.modules[name]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ModuleNotFoundError):
        __import__(f"{pkg}.flows.triage")
    try:
        flow = load_entrypoint(ep)
        assert flow() == 42  # its package's relative import works
        assert flow.__module__ == f"{pkg}.flows.triage"
    finally:
        for name in [m for m in sys.modules if m.startswith(pkg)]:
            del sys.modules[name]
        if str(root) in sys.path:
            sys.path.remove(str(root))


def test_a_script_entrypoint_loads_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "project" / "run_me.py"
    script.parent.mkdir()
    script.write_text("def my_flow():\n    return 'ran'\n\nif __name__ == '__main__':\n    1 / 0\n")
    # recorded as `python run_me.py` from the project: a relative file, and its full path
    ep = {"module": "__main__", "function": "my_flow", "file": "run_me.py", "path": str(script)}
    monkeypatch.chdir(tmp_path)  # run_me.py is not here
    assert load_entrypoint(ep)() == "ran"
    gone = {**ep, "path": str(tmp_path / "moved.py"), "file": "moved.py"}
    with pytest.raises(ImportError, match="file is not found"):
        load_entrypoint(gone)

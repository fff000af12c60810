"""The README's path runs as written (issue 16, item 4): its first Python example, copied into
a fresh directory, runs offline through a model one variable swaps, calls the flow, gives
feedback per item, and nothing in it makes litellm reach for the network; the shell lines of
"Use it" then run on what it recorded; the work-pool step is there, with the pool the
deployments name."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()

#: A sitecustomize for the child: refuses and records every name lookup of a host that is not
#: this machine, and records which top-level modules of this checkout (flows, tests) it loaded.
GUARD = """
import atexit, os, socket, sys

_refused = []
_getaddrinfo = socket.getaddrinfo


def _guarded(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name not in ("localhost", "::1", "0.0.0.0") and not name.startswith("127."):
        _refused.append(name)
        raise OSError("network refused by the test: " + name)
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _guarded


@atexit.register
def _report():
    import json

    checkout = sorted({m.split(".")[0] for m in sys.modules} & {"flows", "tests", "bench"})
    with open(os.environ["GUARD_REPORT"], "w") as f:
        json.dump({"refused": _refused, "checkout_modules": checkout}, f)
"""


def first_python_block() -> str:
    return re.search(r"```python\n(.*?)```", README, re.S).group(1)


def use_it_shell_lines() -> list[str]:
    """The command lines of the shell block that follows the example under "Use it"."""
    section = README.split("## Use it", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line for line in block.splitlines() if line.strip()]


def guarded_env(tmp_path: Path, child_env: dict[str, str]) -> dict[str, str]:
    """The child's environment: the session's Prefect API and warehouse, a network guard, and
    not the suite's offline litellm setting (the example must set what it needs itself)."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    env = {k: v for k, v in child_env.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    env["PYTHONPATH"] = str(guard)  # not the checkout: flows/ is not installed with the package
    env["GUARD_REPORT"] = str(tmp_path / "guard.json")
    return env


def test_the_guard_catches_litellm_reaching_for_the_network(
    tmp_path: Path, child_env: dict[str, str]
) -> None:
    """Without the example's first lines, importing litellm first looks up its price list's
    host: the guard sees it (so a clean report below means something)."""
    env = guarded_env(tmp_path, child_env)
    out = subprocess.run(
        [sys.executable, "-c", "import litellm"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = orjson.loads((tmp_path / "guard.json").read_bytes())
    assert "raw.githubusercontent.com" in report["refused"]


def test_the_first_python_example_runs_as_written(
    tmp_path: Path, child_env: dict[str, str], warehouse_path: Path
) -> None:
    code = first_python_block()
    # one variable swaps the model; the example calls it, and calls the flow
    assert len(re.findall(r"^MODEL = \"", code, re.M)) == 1 and "model=MODEL" in code
    assert 'if __name__ == "__main__":\n    print(triage(' in code
    work = tmp_path / "fresh"
    work.mkdir()
    (work / "triage.py").write_text(code)
    env = guarded_env(tmp_path, child_env)
    out = subprocess.run(
        [sys.executable, "triage.py"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = orjson.loads((tmp_path / "guard.json").read_bytes())
    assert report == {"refused": [], "checkout_modules": []}, report
    score = float(out.stdout.strip().splitlines()[-1])
    assert 0.0 <= score <= 1.0

    import prefect_genopt as genopt

    wh = genopt.Warehouse()
    (run,) = wh.sql("SELECT run_id, pipeline, status FROM runs")
    assert (run["pipeline"], run["status"]) == ("triage", "completed")
    items = wh.sql(
        "SELECT item_key, value, comment FROM feedback WHERE kpi = 'correct' ORDER BY item_key"
    )
    assert [r["item_key"] for r in items] == ["T-1", "T-2", "T-3"]  # per item: arms can split
    assert sum(r["value"] for r in items) / 3 == pytest.approx(score)
    assert all((r["value"] == 1.0) == (r["comment"] is None) for r in items)
    (llm,) = wh.sql(
        "SELECT count(*) AS n, any_value(llm_model) AS m FROM spans WHERE run_type = 'llm'"
    )
    assert llm["n"] == 3 and llm["m"].startswith("offline")

    # the shell lines of "Use it" run on what the example recorded
    lines = use_it_shell_lines()
    assert not any(line.startswith("duckdb ") for line in lines)  # duckdb-cli cannot read it
    ran = 0
    for line in lines:
        argv = shlex.split(line, comments=True)
        if argv[0] != "genopt" or any("<" in a for a in argv):  # a placeholder: not runnable
            continue
        done = subprocess.run(
            [sys.executable, "-m", "prefect_genopt.cli", *argv[1:]],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (line, done.stderr[-2000:])
        ran += 1
    assert ran >= 3


def test_the_work_pool_step_is_in_the_readme_with_the_pool_the_deployments_use(
    child_env: dict[str, str],
) -> None:
    lines = [
        line.split("#")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", README, re.S)
        for line in block.splitlines()
        if line.startswith("prefect ")
    ]
    create = [line for line in lines if line.startswith("prefect work-pool create")]
    assert len(create) == 1
    deploy = lines.index("prefect deploy --prefect-file deployments/prefect.yaml --all")
    worker = next(i for i, line in enumerate(lines) if line.startswith("prefect worker start"))
    assert lines.index(create[0]) < deploy < worker  # in the order they must run
    argv = shlex.split(create[0])
    pool = argv[3]
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    assert {d["work_pool"]["name"] for d in spec["deployments"]} == {pool}
    assert shlex.split(lines[worker])[-1] == pool
    # the step runs as written against a Prefect API (the session's test server)
    env = {**child_env, "PREFECT_LOGGING_LEVEL": "WARNING"}
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *argv[1:], "--overwrite"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        assert client.read_work_pool(pool).type == "process"


def test_the_example_does_not_need_the_checkout_on_the_path() -> None:
    code = first_python_block()
    assert not re.search(r"^\s*(from|import) (flows|tests|bench)\b", code, re.M)

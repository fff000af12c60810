"""The optimizer edits only what the evidence shows being read (issue 16, item 7): a Tunables
field no task and no flow body read in the evidence runs is not editable that night, and the
run says so; an explicit editable list wins. Decided once in optimize(), before the
single-shot or the night path."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow

import prefect_genopt as genopt
from prefect_genopt.optimize import OptimizerSettings, optimize
from prefect_genopt.optimize.runner import editable_tonight, params_read_in
from tests.optimize import scripted


class BodyParams(genopt.Tunables):
    """level: read by a task; cutoff: read by the flow body only; unused: by nobody."""

    level: float = genopt.numeric(0.2, ge=0.0, le=1.0, description="how hard to push")
    cutoff: float = genopt.numeric(0.5, ge=0.0, le=1.0, description="what counts as close")
    unused: str = genopt.prompt("never read", description="a note nothing reads")


@flow
@genopt.pipeline(name="bodyread", params=BodyParams)
def bodyread(items: list[str]) -> float:
    """Push each item (the task reads level); the flow body reads cutoff."""
    cutoff = genopt.current_params().cutoff
    close = 0
    for item in items:
        level = scripted.push(item)
        closeness = 1.0 - abs(level - scripted.OPTIMUM)
        close += closeness >= cutoff
        genopt.feedback("closeness", closeness, item_key=item, comment="too low: push harder")
    return close / len(items)


@pytest.fixture
def body_runs(prefect_api: str, warehouse_path: Path) -> Path:
    bodyread([f"item-{i}" for i in range(4)])
    return warehouse_path


def test_the_reads_of_tasks_and_of_the_flow_body_are_recorded(body_runs: Path) -> None:
    wh = genopt.Warehouse()
    runs, read = params_read_in(wh, "bodyread", 7)
    assert runs == 1 and read == ["cutoff", "level"]
    flow_reads = wh.sql("SELECT params_read FROM spans WHERE run_type = 'flow'", json=True)
    assert [r["params_read"] for r in flow_reads] == [{"cutoff": 0.5}]
    assert params_read_in(wh, "no-such-pipeline", 7) == (0, [])


def test_an_unread_param_is_not_editable_and_the_run_says_so(body_runs: Path) -> None:
    said: list[str] = []
    s = OptimizerSettings(pipeline="bodyread", model="scripted-opt/follow", search=False)
    tonight = editable_tonight(genopt.Warehouse(), s, said.append)
    assert tonight.starting_artifact.editable == ["cutoff", "level"]  # the stored schema's order
    (line,) = said
    assert line.startswith("not editable tonight: unused (read by no task or flow body in the 1")
    assert "--editable cutoff level unused" in line
    # the settings given are not changed
    assert s.starting_artifact.editable is None


def test_an_explicit_editable_list_wins(body_runs: Path) -> None:
    said: list[str] = []
    explicit = OptimizerSettings(
        pipeline="bodyread",
        model="scripted-opt/follow",
        search=False,
        starting_artifact={"editable": ["unused"]},
    )
    assert editable_tonight(genopt.Warehouse(), explicit, said.append) is explicit
    assert said == []


def test_nothing_is_narrowed_without_reads_to_go_by(prefect_api: str, warehouse_path: Path) -> None:
    said: list[str] = []
    s = OptimizerSettings(pipeline="bodyread", model="scripted-opt/follow", search=False)
    assert editable_tonight(genopt.Warehouse(), s, said.append) is s  # unknown pipeline
    assert said == []


@pytest.mark.parametrize("search", [False, True], ids=["single-shot", "night"])
def test_optimize_applies_it_on_both_paths(
    search: bool, prefect_api: str, warehouse_path: Path
) -> None:
    """Nothing reads `unused`: neither path may edit it, and both say so."""
    for r in range(2):
        bodyread([f"item-{i}-r{r}" for i in range(6)])
    said: list[str] = []
    settings = OptimizerSettings(
        pipeline="bodyread", model="scripted-opt/follow", response_format="none", search=search
    )
    result = optimize(settings, progress=said.append)
    assert any(line.startswith("not editable tonight: unused (") for line in said), said
    if not search:
        rows = genopt.Warehouse().sql(
            "SELECT settings FROM proposals WHERE pipeline = 'bodyread'", json=True
        )
        assert rows and all(
            r["settings"]["starting_artifact"]["editable"] == ["cutoff", "level"] for r in rows
        )
    else:
        assert "unused" not in result.editable

"""One answer to "which param set is stable": the pointer, else the latest stable-arm run."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import orjson
import pytest

from prefect_genopt.rollout import store
from prefect_genopt.rollout.stable import stable_param_set
from prefect_genopt.rollout.state import RoutingState
from prefect_genopt.warehouse import Warehouse
from prefect_genopt.warehouse.param_sets import param_set_values
from prefect_genopt.warehouse.schema import migrate

T0 = datetime(2026, 12, 1, 8, 0)


def make_warehouse(path: Path, runs: list[tuple[str, str]]) -> Warehouse:
    """A warehouse whose pipeline ``p`` ran ``runs`` ((arm, param set) pairs) in order."""
    with duckdb.connect(str(path)) as con:
        migrate(con)
        for i, (arm, ps) in enumerate(runs):
            con.execute(
                "INSERT INTO runs (run_id, pipeline, param_set_id, arm, start_time) "
                "VALUES (?, 'p', ?, ?, ?)",
                [f"run-{i}", ps, arm, T0 + timedelta(minutes=i)],
            )
            con.execute(
                'INSERT OR IGNORE INTO param_sets (pipeline, param_set_id, "values") '
                "VALUES ('p', ?, ?)",
                [ps, orjson.dumps({"level": i}).decode()],
            )
    return Warehouse(path)


@pytest.fixture
def no_api(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(pipeline: str, timeout: float | None = None) -> RoutingState:
        raise store.RoutingUnavailable("no Prefect API in this test")

    monkeypatch.setattr(store, "read_state", unreachable)


def test_the_pointer_wins_over_every_run(tmp_path: Path) -> None:
    wh = make_warehouse(tmp_path / "w.duckdb", [("stable", "ps_old"), ("stable", "ps_new")])
    pointer = RoutingState(pipeline="p", stable="ps_promoted")
    assert stable_param_set(wh, "p", state=pointer) == "ps_promoted"
    assert stable_param_set(wh, "p", state=pointer, any_arm=True) == "ps_promoted"


def test_the_pointer_is_read_from_the_api_when_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wh = make_warehouse(tmp_path / "w.duckdb", [("stable", "ps_run")])
    read: list[str] = []

    def read_state(pipeline: str, timeout: float | None = None) -> RoutingState:
        read.append(pipeline)
        return RoutingState(pipeline=pipeline, stable="ps_pointer")

    monkeypatch.setattr(store, "read_state", read_state)
    assert stable_param_set(wh, "p") == "ps_pointer"
    assert read == ["p"]


def test_without_a_pointer_the_latest_stable_run_counts_not_a_later_pinned_one(
    tmp_path: Path, no_api: None
) -> None:
    runs = [("stable", "ps_a"), ("stable", "ps_b"), ("offline", "ps_eval"), ("canary", "ps_c")]
    wh = make_warehouse(tmp_path / "w.duckdb", runs)
    empty = RoutingState(pipeline="p")  # reachable, nothing promoted yet
    assert stable_param_set(wh, "p", state=empty) == "ps_b"
    assert stable_param_set(wh, "p") == "ps_b"  # API down: the same answer from the runs
    assert stable_param_set(wh, "p", any_arm=True) == "ps_b"  # stable runs still come first


def test_only_the_optimizer_falls_back_to_a_pipeline_run_only_pinned(
    tmp_path: Path, no_api: None
) -> None:
    wh = make_warehouse(tmp_path / "w.duckdb", [("offline", "ps_1"), ("offline", "ps_2")])
    assert stable_param_set(wh, "p") is None
    assert stable_param_set(wh, "p", any_arm=True) == "ps_2"
    assert stable_param_set(wh, "other", any_arm=True) is None


def test_param_set_values(tmp_path: Path) -> None:
    wh = make_warehouse(tmp_path / "w.duckdb", [("stable", "ps_a"), ("stable", "ps_b")])
    assert param_set_values(wh, "p", "ps_b") == {"level": 1}
    assert param_set_values(wh, "p", "ps_missing") is None
    assert param_set_values(wh, "other", "ps_a") is None


def test_the_optimizer_and_the_controller_ask_the_same_function() -> None:
    from prefect_genopt.optimize import evidence
    from prefect_genopt.rollout import controller

    assert evidence.stable_param_set is stable_param_set
    assert controller.stable_param_set is stable_param_set

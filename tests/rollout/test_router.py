"""Routing: the item hash, and a worker that cannot read the routing state."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import prefect_genopt as genopt
from prefect_genopt.rollout import controller, store
from prefect_genopt.rollout.router import Route, bucket, resolve_route
from tests.rollout.pipelines import KnobParams, make_pipeline


@pytest.mark.parametrize("weight", [0.05, 0.1, 0.25, 0.5])
def test_the_item_hash_gives_the_configured_share(weight: float) -> None:
    route = Route(
        pipeline="p",
        stable=KnobParams(),
        canary=KnobParams(quality=1.0),
        rollout_id="ro_x",
        weight=weight,
    )
    keys = [f"ticket-{i}" for i in range(10_000)]
    share = sum(route.arm_for(k) == "canary" for k in keys) / len(keys)
    assert abs(share - weight) < 0.015  # 3.5 standard deviations at 10k items


def test_an_item_keeps_its_arm_and_growing_weights_only_add_canary_items() -> None:
    keys = [f"doc-{i}" for i in range(2000)]
    at = {w: {k for k in keys if bucket("ro_1", k) < w} for w in (0.1, 0.25, 0.5)}
    assert at[0.1] <= at[0.25] <= at[0.5]
    other = {k for k in keys if bucket("ro_2", k) < 0.5}
    overlap = len(at[0.5] & other) / len(keys)
    assert 0.2 < overlap < 0.3  # a new rollout draws afresh (independent: 0.25)


def test_pinned_and_idle_routes() -> None:
    stable, pinned = KnobParams(), KnobParams(quality=0.3)
    assert Route(pipeline="p", stable=stable).arm_for("x") == "stable"
    route = Route(pipeline="p", stable=stable, pinned=pinned, canary=stable, weight=1.0)
    assert (route.arm_for("x"), route.params_for("pinned"), route.splitting) == (
        "pinned",
        pinned,
        False,
    )


def test_an_unreachable_api_falls_back_to_stable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import prefect.settings as ps

    monkeypatch.setenv("GENOPT_ROUTING_TTL", "0")
    monkeypatch.setenv("GENOPT_ROUTING_TIMEOUT", "1")
    with ps.temporary_settings(
        {ps.PREFECT_API_URL: "http://127.0.0.1:9/api", ps.PREFECT_CLIENT_MAX_RETRIES: 0}
    ):
        with caplog.at_level(logging.WARNING, logger="prefect_genopt.rollout"):
            route = resolve_route("unreachable-pipeline", KnobParams)
    assert route.stable == KnobParams() and route.canary is None
    assert route.error and "Prefect API unreachable at http://127.0.0.1:9/api" in route.error
    assert "reading genopt-route-unreachable-pipeline" in route.error
    assert route.source == "defaults" and "[routing from defaults" in route.error
    assert "fell back to the stable param set" in caplog.text


def _set_variable(name: str, value: object) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import VariableCreate

    with get_client(sync_client=True) as client:
        client.create_variable(VariableCreate(name=name, value=value))


def test_a_malformed_pointer_or_a_missing_param_set_fails_safe(
    routing: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    routing += ["garbled", "dangling", "misfit"]
    _set_variable(store.variable_name("garbled"), {"weight": "lots"})
    route = resolve_route("garbled", KnobParams)
    assert route.error and "does not hold a routing state" in route.error
    _set_variable(
        store.variable_name("dangling"),
        {"pipeline": "dangling", "stable": "ps_0000000000000000", "revision": 3},
    )
    route = resolve_route("dangling", KnobParams)
    assert route.error and "cannot load param set ps_0000000000000000" in route.error
    assert route.stable == KnobParams()
    store.save_param_set("misfit", "ps_1111111111111111", {"quality": 9.0})
    _set_variable(
        store.variable_name("misfit"),
        {"pipeline": "misfit", "stable": "ps_1111111111111111", "revision": 1},
    )
    route = resolve_route("misfit", KnobParams)
    assert route.error and "does not fit KnobParams" in route.error


def test_a_run_that_cannot_route_says_so_on_its_spans(
    pipeline_name: str, warehouse_path: Path
) -> None:
    _set_variable(store.variable_name(pipeline_name), "not a state")
    knob = make_pipeline(pipeline_name)
    knob(n=3, batch=0)
    wh = genopt.Warehouse()
    (run,) = wh.sql("SELECT arm, param_set_id, routing_error FROM runs")
    assert (run["arm"], run["param_set_id"]) == ("stable", KnobParams().param_set_id)
    assert "does not hold a routing state" in run["routing_error"]
    spans = wh.sql(
        "SELECT count(*) AS n FROM spans WHERE attributes->>'$.\"genopt.routing_error\"' "
        "IS NOT NULL"
    )
    assert spans[0]["n"] >= 1
    with pytest.raises(controller.RolloutError, match="does not hold a routing state"):
        controller.get_state(pipeline_name)


def test_the_last_known_stable_survives_an_outage(
    pipeline_name: str, warehouse_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefect.settings as ps

    knob = make_pipeline(pipeline_name)
    knob(n=3, batch=0)
    controller.start_rollout(
        pipeline_name, values={"quality": 0.95}, plan={"kpi": "ok"}, gate=False
    )
    controller.promote(pipeline_name, "known good")
    promoted = KnobParams(quality=0.95)
    assert resolve_route(pipeline_name, KnobParams).stable == promoted
    monkeypatch.setenv("GENOPT_ROUTING_TIMEOUT", "1")
    with ps.temporary_settings(
        {ps.PREFECT_API_URL: "http://127.0.0.1:9/api", ps.PREFECT_CLIENT_MAX_RETRIES: 0}
    ):
        route = resolve_route(pipeline_name, KnobParams)
    assert route.error and route.stable == promoted and route.canary is None


def test_routing_reads_share_one_client_until_a_read_fails(
    routing: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefect.settings as ps

    built: list[object] = []
    make = store._client

    def counting(timeout: float | None = None) -> object:
        built.append(make(timeout))
        return built[-1]

    monkeypatch.setattr(store, "_client", counting)
    routing.append("shared-reader")
    store._close_reader()
    for _ in range(3):
        assert store.read_state("shared-reader", 2.0).revision == 0
    store.save_param_set("shared-reader", "ps_2222222222222222", {"quality": 0.5})
    store._values_cache.clear()
    assert store.load_param_set("shared-reader", "ps_2222222222222222", 2.0) == {"quality": 0.5}
    assert len(built) == 1  # one client for three pointer reads and a param set
    with ps.temporary_settings(
        {ps.PREFECT_API_URL: "http://127.0.0.1:9/api", ps.PREFECT_CLIENT_MAX_RETRIES: 0}
    ):
        with pytest.raises(store.RoutingUnavailable):
            store.read_state("shared-reader", 2.0)
    assert len(built) == 2  # another API address gets its own client
    assert built[0]._closed  # type: ignore[attr-defined]
    assert store._reader is None  # the failed one is dropped, not kept
    assert store.read_state("shared-reader", 2.0).revision == 0
    assert len(built) == 3 and store._reader is not None and store._reader[1] is built[2]

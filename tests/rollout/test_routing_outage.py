"""Routing when the Prefect API fails (issue 15, item 6): a hard deadline on the read, the
state file a fresh process routes by, and commands that say the API is unreachable."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import prefect_genopt as genopt
from prefect_genopt.rollout import FAST_PLAN, controller, store
from prefect_genopt.rollout.router import resolve_route
from prefect_genopt.rollout.state import RoutingState
from tests.cli.conftest import warehouse_knowing
from tests.conftest import ROOT
from tests.rollout.pipelines import KnobParams, make_pipeline

PLAN = {**FAST_PLAN, "kpi": "ok"}
#: the deadline these tests set, and the slack allowed on a loaded 2-core machine
DEADLINE = 2.0
SLACK = 3.0


@contextlib.contextmanager
def black_hole() -> Iterator[str]:
    """An "API" that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/api"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        srv.close()


class _Unavailable(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = b'{"detail": "database is locked"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815 - stdlib naming

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def always_503() -> Iterator[str]:
    """An "API" that answers every request 503 (Prefect's client retries those)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def dead_url() -> str:
    """The URL of a port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


@pytest.mark.parametrize("server", [black_hole, always_503], ids=["black-hole", "503"])
def test_the_routing_deadline_holds_whatever_the_client_retries(
    server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the deadline, Prefect's retries (2, 4, 8, 16, 32 s) held a run's start for
    96-142 s; with it, the read ends within GENOPT_ROUTING_TIMEOUT."""
    import prefect.settings as ps

    monkeypatch.setenv("GENOPT_ROUTING_TTL", "0")
    monkeypatch.setenv("GENOPT_ROUTING_TIMEOUT", str(DEADLINE))
    monkeypatch.setenv("GENOPT_STATE_DIR", str(tmp_path))
    built: list[Any] = []
    make = store._client

    def counting(timeout: float | None = None) -> Any:
        built.append(make(timeout))
        return built[-1]

    monkeypatch.setattr(store, "_client", counting)
    store._close_reader()
    with server() as url, ps.temporary_settings({ps.PREFECT_API_URL: url}):
        assert ps.PREFECT_CLIENT_MAX_RETRIES.value() >= 5  # Prefect's default retries are on
        t0 = time.monotonic()
        route = resolve_route(f"deadline-{server.__name__}", KnobParams)
        took = time.monotonic() - t0
        # the abandoned read's client is no longer the shared one: the next read builds
        # another (the hung call still holds the old one; it is closed when the call returns)
        assert built and (store._reader is None or store._reader[1] is not built[0])
        t0 = time.monotonic()
        with pytest.raises(store.PrefectUnavailable, match="no answer within"):
            store.read_state("another", DEADLINE)
        again = time.monotonic() - t0
        assert len(built) == 2 and built[1] is not built[0]
    print(f"routing read against {server.__name__}: {took:.2f}s, then {again:.2f}s")
    assert took < DEADLINE + SLACK and again < DEADLINE + SLACK
    assert route.source == "defaults" and route.canary is None
    assert route.stable == KnobParams()
    assert route.error and f"Prefect API unreachable at {url}" in route.error
    assert "no answer within 2s (GENOPT_ROUTING_TIMEOUT)" in route.error


def test_reads_past_the_cap_of_abandoned_ones_fail_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "_abandoned", store.MAX_ABANDONED)
    t0 = time.monotonic()
    with pytest.raises(store.PrefectUnavailable, match="still waiting for an answer"):
        store.read_state("capped", 5.0)
    assert time.monotonic() - t0 < 1.0


def test_a_read_that_answers_in_time_shares_the_client(routing: list[str]) -> None:
    routing.append("in-time")
    store._close_reader()
    first = store.read_state("in-time", 5.0)
    client = store._reader[1] if store._reader else None
    assert first.revision == 0 and client is not None
    assert store.read_state("in-time", 5.0, deadline=time.monotonic() + 5).revision == 0
    assert store._reader is not None and store._reader[1] is client


# -- the state file ---------------------------------------------------------------------------


def test_the_state_file_round_trip_is_atomic_and_never_fails_routing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GENOPT_STATE_DIR", str(tmp_path / "state"))
    state = RoutingState(pipeline="Ticket Triage", stable="ps_a", pinned="ps_b", revision=4)
    assert store.save_last_known(state, {"quality": 0.9}, {"quality": 0.1})
    assert not store.save_last_known(state, {"quality": 0.9}, {"quality": 0.1})  # unchanged
    path = store.state_file("Ticket Triage")
    assert path.parent == tmp_path / "state" and os.listdir(path.parent) == [path.name]
    kept = store.load_last_known("Ticket Triage")
    assert kept is not None and kept.state == state
    assert (kept.stable_values, kept.pinned_values) == ({"quality": 0.9}, {"quality": 0.1})
    assert kept.pid == os.getpid()
    # a damaged file is ignored (with a warning), as if there were none
    path.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="prefect_genopt.rollout"):
        assert store.load_last_known("Ticket Triage") is None
    assert "ignoring the routing state file" in caplog.text
    # a directory that cannot be written: routing goes on, one warning
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    monkeypatch.setenv("GENOPT_STATE_DIR", str(blocked))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prefect_genopt.rollout"):
        assert not store.save_last_known(state.bump("t", revision=5), {"quality": 0.9})
        assert not store.save_last_known(state.bump("t", revision=6), {"quality": 0.9})
    assert caplog.text.count("cannot keep the routing state") == 1


def test_the_state_dir_defaults_under_prefect_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GENOPT_STATE_DIR", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect-home"))
    assert store.state_dir() == tmp_path / "prefect-home" / "genopt" / "state"


# -- a fresh process with the API down ------------------------------------------------------

FRESH_PROCESS = """
import json, sys
from prefect_genopt.rollout.router import resolve_route
from tests.rollout.pipelines import KnobParams
route = resolve_route(sys.argv[1], KnobParams)
print(json.dumps({
    "source": route.source,
    "stable": route.stable.values(),
    "pinned": route.pinned.values() if route.pinned is not None else None,
    "canary": route.canary is not None,
    "arms": sorted({route.arm_for(f"item-{i}") for i in range(200)}),
    "error": route.error,
}))
"""


def _fresh_process(pipeline: str, env: dict[str, str]) -> dict[str, Any]:
    """Route ``pipeline`` in a new process whose Prefect API is a dead port."""
    env = {**env, "PREFECT_API_URL": dead_url(), "GENOPT_ROUTING_TIMEOUT": "3"}
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, pipeline],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    got["seconds"] = time.monotonic() - t0
    return got


def test_a_fresh_process_keeps_the_promotion_and_the_pin_and_never_takes_the_canary(
    pipeline_name: str,
    warehouse_path: Path,
    child_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state_dir = tmp_path / "state"
    monkeypatch.setenv("GENOPT_STATE_DIR", str(state_dir))
    env = {**child_env, "GENOPT_STATE_DIR": str(state_dir)}
    # no state file yet: the code defaults, and it says so
    got = _fresh_process(pipeline_name, env)
    assert (got["source"], got["stable"], got["canary"]) == ("defaults", {"quality": 0.8}, False)
    assert "Prefect API unreachable at http://127.0.0.1:" in got["error"]
    assert "no state file" in got["error"]
    knob = make_pipeline(pipeline_name)
    knob(n=3, batch=0)  # its routing read keeps the (idle) state in the file
    assert store.load_last_known(pipeline_name) is not None

    controller.start_rollout(pipeline_name, values={"quality": 0.95}, plan=PLAN, gate=False)
    controller.promote(pipeline_name, "known good")
    promoted = KnobParams(quality=0.95)
    assert resolve_route(pipeline_name, KnobParams).stable == promoted  # kept in the file
    assert store.state_file(pipeline_name).is_file()
    got = _fresh_process(pipeline_name, env)
    assert got["source"] == "state-file" and got["stable"] == {"quality": 0.95}
    assert got["arms"] == ["stable"] and not got["canary"]
    assert "[routing from state-file: the stable param set " + promoted.param_set_id in got["error"]
    assert got["seconds"] < 60

    # a run of a process that cannot read the API says where its routing came from
    store._state_cache.clear()
    store._values_cache.clear()

    def down(pipeline: str, timeout: float | None = None, **_: Any) -> RoutingState:
        raise store.PrefectUnavailable("Prefect API unreachable at http://down/api (test)")

    with monkeypatch.context() as m:
        m.setattr(store, "read_state", down)
        knob(n=3, batch=1)
    knob(n=3, batch=2)  # the API is back
    runs = genopt.Warehouse().sql(
        "SELECT inputs, param_set_id, arm, routing_source, routing_error FROM runs "
        "WHERE pipeline = ? ORDER BY start_time",
        [pipeline_name],
    )
    by_batch = {json.loads(r["inputs"])["batch"]: r for r in runs}
    outage, back = by_batch[1], by_batch[2]
    assert (outage["param_set_id"], outage["arm"]) == (promoted.param_set_id, "stable")
    assert outage["routing_source"] == "state-file"
    assert "Prefect API unreachable at http://down/api" in outage["routing_error"]
    assert (back["routing_source"], back["routing_error"]) == ("api", None)
    assert by_batch[0]["routing_source"] == "api"

    # a canary running: a process without the API never sends an item to it
    controller.start_rollout(pipeline_name, values={"quality": 0.5}, plan=PLAN, gate=False)
    live = resolve_route(pipeline_name, KnobParams)
    assert live.canary == KnobParams(quality=0.5) and live.source == "api"
    got = _fresh_process(pipeline_name, env)
    assert got["source"] == "state-file" and got["stable"] == {"quality": 0.95}
    assert got["arms"] == ["stable"] and not got["canary"]

    # a pin is honoured from the file: its values, on the pinned arm
    controller.pin(pipeline_name, KnobParams(quality=0.5).param_set_id, "incident 7")
    assert resolve_route(pipeline_name, KnobParams).pinned == KnobParams(quality=0.5)
    got = _fresh_process(pipeline_name, env)
    assert got["source"] == "state-file" and got["pinned"] == {"quality": 0.5}
    assert got["arms"] == ["pinned"]
    assert "the pinned param set" in got["error"]
    controller.unpin(pipeline_name, "over")
    controller.abort(pipeline_name, "test over")


def test_this_process_falls_back_to_what_it_read_last_even_pinned(
    pipeline_name: str, warehouse_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_STATE_DIR", str(tmp_path / "state"))
    knob = make_pipeline(pipeline_name)
    knob(n=3, batch=0)
    controller.start_rollout(pipeline_name, values={"quality": 0.3}, plan=PLAN, gate=False)
    controller.pin(pipeline_name, KnobParams(quality=0.3).param_set_id, "incident 8")
    assert resolve_route(pipeline_name, KnobParams).pinned == KnobParams(quality=0.3)
    store.state_file(pipeline_name).unlink()  # only this process's memory is left

    def down(pipeline: str, timeout: float | None = None, **_: Any) -> RoutingState:
        raise store.PrefectUnavailable("Prefect API unreachable at http://down/api (test)")

    with monkeypatch.context() as m:
        m.setattr(store, "read_state", down)
        route = resolve_route(pipeline_name, KnobParams)
    assert route.source == "process" and route.pinned == KnobParams(quality=0.3)
    assert route.arm_for("anything") == "pinned" and route.canary is None
    controller.unpin(pipeline_name, "over")
    controller.abort(pipeline_name, "test over")


# -- commands with the API down ----------------------------------------------------------------


def test_rollout_commands_say_the_api_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import prefect.settings as ps

    from prefect_genopt.cli import main

    url = dead_url()
    base = ["--warehouse", str(warehouse_knowing(tmp_path / "w.duckdb", "triage")), "rollout"]
    verbs = [
        ["analyze", "triage"],
        ["status", "triage"],
        ["abort", "triage", "--reason", "down"],
        ["pin", "triage", "ps_0123456789abcdef", "--reason", "down"],
        ["start", "triage", "--params", '{"quality": 1}', "--kpi", "ok"],
    ]
    with ps.temporary_settings({ps.PREFECT_API_URL: url}):
        for verb in verbs:
            assert main([*base, *verb]) == 2, verb
            err = capsys.readouterr().err
            assert err.startswith(f"genopt rollout: error: Prefect API unreachable at {url}"), err
            assert "Traceback" not in err


def test_genopt_rollout_analyze_with_the_api_down_exits_2_without_a_traceback(
    tmp_path: Path,
) -> None:
    url = dead_url()
    env = {
        **os.environ,
        "PREFECT_API_URL": url,
        "GENOPT_WAREHOUSE": str(warehouse_knowing(tmp_path / "w.duckdb", "triage")),
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-m", "prefect_genopt.cli", "rollout", "analyze", "triage"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert f"Prefect API unreachable at {url}" in out.stderr
    assert "Traceback" not in out.stderr


def test_any_command_says_the_api_is_unreachable_not_only_rollout() -> None:
    """main() maps an error that says the Prefect API is down (Prefect's own "Failed to reach
    API", a failed request to its address) to PrefectUnavailable: exit 2, one line."""
    import httpx
    import prefect.settings as ps

    from prefect_genopt.cli._errors import exit_status, known_error

    url = dead_url()
    with ps.temporary_settings({ps.PREFECT_API_URL: url}):
        engine = RuntimeError(f"Flow run could not be created. Failed to reach API at {url}/.")
        mapped = known_error(engine)
        assert isinstance(mapped, store.PrefectUnavailable) and exit_status(mapped) == (2, "error")
        assert str(mapped).startswith(f"Prefect API unreachable at {url}: RuntimeError")
        refused = httpx.ConnectError("refused", request=httpx.Request("GET", f"{url}/variables"))
        assert isinstance(known_error(refused), store.PrefectUnavailable)
        # a request elsewhere (an LLM provider, the receiver) is not the Prefect API
        other = httpx.ConnectError("refused", request=httpx.Request("GET", "http://llm:8000/v1"))
        assert known_error(other) is other
        bug = KeyError("a bug")
        assert known_error(bug) is bug

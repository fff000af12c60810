"""A night's replays stay off the console (the "Beginning subflow run" noise of
``genopt optimize``): a replayed run's INFO lines are dropped from Prefect's console handler
while its warnings still show, and nothing changes outside the replay: not after it, nor in
another thread during it."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import pytest
from prefect import flow, get_run_logger
from prefect.logging.handlers import PrefectConsoleHandler

from prefect_genopt.replay.gate import replay_run


def _another_flow_logs() -> None:
    """A line of another flow run, logged like Prefect's run loggers log."""
    logging.getLogger("prefect.flow_runs").info(
        "another thread's line", extra={"flow_run_name": "another-run"}
    )


@flow(name="console-replayed")
def replayed(x: int) -> int:
    log = get_run_logger()
    log.info("an info line of the replayed run")
    log.warning("a warning of the replayed run")
    # another thread of the process (its own context) logs while the replay runs
    other = threading.Thread(target=_another_flow_logs)
    other.start()
    other.join()
    return x


@flow(name="console-night")
def night(replay: bool) -> None:
    if replay:
        replay_run(replayed, {"x": 1}, {})
    else:
        replayed(1)  # a plain subflow: its lines are printed as usual
    get_run_logger().info("the night's own line")


@pytest.fixture
def console() -> Iterator[io.StringIO]:
    """What Prefect's console handler (on the root logger) prints, captured."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    if not handlers:
        pytest.fail("Prefect's console handler is not on the root logger")
    buf = io.StringIO()
    old = [h.console.file for h in handlers]  # the handler prints through a rich Console
    for h in handlers:
        h.console.file = buf
    levels = [h.level for h in handlers]
    for h in handlers:
        h.setLevel(logging.INFO)
    root_level = logging.getLogger("prefect").level
    logging.getLogger("prefect").setLevel(logging.INFO)
    try:
        yield buf
    finally:
        logging.getLogger("prefect").setLevel(root_level)
        for h, stream, level in zip(handlers, old, levels, strict=True):
            h.console.file = stream
            h.setLevel(level)


def test_a_replay_prints_only_its_warnings(prefect_api: str, console: io.StringIO) -> None:
    night(replay=False)
    plain = console.getvalue()
    # the control: without the replay, the subflow's lines are on the console
    assert "Beginning subflow run" in plain and "an info line of the replayed run" in plain
    console.seek(0)
    console.truncate()
    night(replay=True)
    text = console.getvalue()
    assert "Beginning subflow run" not in text and "an info line of the replayed run" not in text
    assert "a warning of the replayed run" in text
    assert "another thread's line" in text  # only the replay's own context is quiet
    assert "the night's own line" in text  # the filter is gone after the replay

"""Feedback for runs that never arrive does not wait forever (issue 15, items 1 and 9): pending
feedback older than GENOPT_PENDING_FEEDBACK_TTL_DAYS is deleted at ingest, and counted."""

from __future__ import annotations

import uuid
from pathlib import Path

import duckdb
import pytest

import prefect_genopt as genopt
from prefect_genopt import spool
from prefect_genopt.cli import main
from prefect_genopt.warehouse.ingest import Ingester


def pending(n: int) -> list[dict[str, object]]:
    return [
        {
            "k": "feedback",
            "feedback_id": uuid.uuid4().hex,
            "run_id": str(uuid.uuid4()),
            "kpi": "ok",
            "value": 1.0,
            # a body's own time is not what expiry goes by: one from the far future
            "created_ns": 4_000_000_000 * 10**9,
        }
        for _ in range(n)
    ]


def test_pending_feedback_expires_and_is_counted(
    warehouse_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool_dir = warehouse_path.with_name(warehouse_path.name + ".spool")
    spool.append(pending(30), spool_dir)
    spool.close_all()
    first = Ingester().ingest()
    assert (first.pending, first.expired) == (30, 0)

    # 20 of them were first ingested 8 days ago, 10 of them 6 days ago (TTL: 7 days)
    con = duckdb.connect(str(warehouse_path))
    ids = [r[0] for r in con.execute("SELECT feedback_id FROM pending_feedback").fetchall()]
    con.execute(
        "UPDATE pending_feedback SET ingested_at = ingested_at - INTERVAL 8 DAY "
        "WHERE list_contains(?, feedback_id)",
        [ids[:20]],
    )
    con.execute(
        "UPDATE pending_feedback SET ingested_at = ingested_at - INTERVAL 6 DAY "
        "WHERE list_contains(?, feedback_id)",
        [ids[20:]],
    )
    con.close()
    second = Ingester().ingest()  # nothing new in the spool: expiry runs all the same
    assert (second.expired, second.pending) == (20, 10)
    assert "20 pending feedback expired" in str(second)

    wh = genopt.Warehouse(ingest=False)
    assert wh.sql("SELECT count(*) AS n FROM pending_feedback") == [{"n": 10}]
    assert wh.sql("SELECT pending_expired FROM ingest_log ORDER BY finished_at DESC LIMIT 1") == [
        {"pending_expired": 20}
    ]
    assert main(["status", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "pending_feedback: 10" in out and "pending_feedback_expired: 20" in out


def test_the_ttl_is_a_setting(warehouse_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool_dir = warehouse_path.with_name(warehouse_path.name + ".spool")
    spool.append(pending(3), spool_dir)
    spool.close_all()
    Ingester().ingest()
    con = duckdb.connect(str(warehouse_path))
    con.execute("UPDATE pending_feedback SET ingested_at = ingested_at - INTERVAL 2 DAY")
    con.close()
    assert Ingester().ingest().expired == 0  # 2 days < the default 7
    monkeypatch.setenv("GENOPT_PENDING_FEEDBACK_TTL_DAYS", "1")
    assert Ingester().ingest().expired == 3

"""The optimizer's evidence reads an LLM span's messages and completion from its
``inputs`` and ``output`` columns, and from ``attributes`` for rows stored before
they moved there."""

from __future__ import annotations

import json
from pathlib import Path

from prefect_genopt import spool
from prefect_genopt.optimize.evidence import _steps_for, _tree
from prefect_genopt.records import span_record
from prefect_genopt.warehouse import Warehouse


def _llm_span(span_id: str, run_id: str, prompt: str, answer: str) -> dict:
    return span_record(
        trace_id="a" * 32,
        span_id=span_id,
        parent_span_id=None,
        name="chat scripted/x",
        span_kind="CLIENT",
        start_ns=1_700_000_000_000_000_000,
        end_ns=1_700_000_000_100_000_000,
        status="OK",
        status_message=None,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "scripted/x",
            "genopt.run_id": run_id,
            "gen_ai.prompt": json.dumps([{"role": "user", "content": prompt}]),
            "gen_ai.completion": json.dumps([answer]),
        },
        events=[],
        resource={},
        source="spool",
        limit=4096,
    )


def test_new_rows_in_columns_old_rows_in_attributes(warehouse_path: Path) -> None:
    record = _llm_span("1" * 16, "run-new", "new question", "new answer")
    assert "gen_ai.prompt" not in record["attributes"]  # moved, not copied
    spool.append([record])
    wh = Warehouse(warehouse_path)
    wh.ingest()
    # a row as ingested before the move: the messages only in attributes
    with Warehouse(warehouse_path, read_only=False) as w:
        w.sql(
            "INSERT INTO spans (trace_id, span_id, run_id, run_type, name, attributes) "
            "VALUES (?, ?, ?, 'llm', 'chat old', ?)",
            [
                "b" * 32,
                "2" * 16,
                "run-old",
                json.dumps({"gen_ai.prompt": '["old question"]', "gen_ai.completion": '["old"]'}),
            ],
        )
    rows = _steps_for(Warehouse(warehouse_path), ["run-new", "run-old"])
    new, old = _tree(rows["run-new"])[0], _tree(rows["run-old"])[0]
    assert "new question" in (new.prompt or "") and "new answer" in (new.completion or "")
    assert new.inputs is None and new.output is None  # not shown twice
    assert old.prompt == '["old question"]' and old.completion == '["old"]'

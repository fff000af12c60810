"""The redaction corpus (issue 15, item 5) through every path that stores text.

At least 30 secret forms never reach storage, and at least 30 lookalikes are stored
unchanged: in text, in structures at any depth (cycles too), span records (local and
OTLP), feedback (comments, expected answers, item keys, over HTTP too), step records, and,
end to end through a real pipeline run: spans, runs, feedback, experiences and the
optimizer's prompt built from the warehouse.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from prefect import flow

import prefect_genopt as genopt
from prefect_genopt import redaction
from prefect_genopt.feedback import build_record
from prefect_genopt.records import span_record, validate_record
from prefect_genopt.redaction import REDACTED, redact, redact_item_key, scrub, to_text
from prefect_genopt.replay.steps import full_json
from prefect_genopt.testing.redaction_corpus import LOOKALIKES, SECRETS, structures

_RUN = "8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10"
SECRET_IDS = [f"secret-{i}" for i in range(len(SECRETS))]
LOOKALIKE_IDS = [f"lookalike-{i}" for i in range(len(LOOKALIKES))]


def _span(attributes: dict[str, Any], name: str = "step") -> dict[str, Any]:
    return span_record(
        trace_id="ab" * 16,
        span_id="cd" * 8,
        parent_span_id=None,
        name=name,
        span_kind="INTERNAL",
        start_ns=1,
        end_ns=2,
        status="ERROR",
        status_message=attributes.get("msg"),
        attributes=attributes,
        events=[{"name": "log", "time_ns": 1, "attributes": dict(attributes)}],
        resource={"service.name": "svc", **attributes},
        source="otlp",
        limit=4096,
    )


def test_the_corpus_is_big_enough() -> None:
    assert len(SECRETS) >= 30 and len(LOOKALIKES) >= 30
    assert len({s for _, s in SECRETS}) == len(SECRETS)


@pytest.mark.parametrize(("text", "secret"), SECRETS, ids=SECRET_IDS)
def test_a_secret_is_redacted_in_every_form(text: str, secret: str) -> None:
    assert secret in text
    stored = [
        redact(text),
        to_text({"text": text}),
        to_text([[{"deep": text}]]),
        orjson.dumps(_span({"msg": text, "genopt.inputs": to_text({"q": text})})).decode(),
        orjson.dumps(_span({"nested": {"a": [text, {"b": text}]}}, name=text)).decode(),
        full_json({"question": text})[0],
    ]
    rec = build_record("csat", 1.0, comment=text, expected=text, run_id=_RUN, verify=False)
    stored.append(orjson.dumps(rec).decode())
    received = validate_record(
        {
            "k": "feedback",
            "feedback_id": "f1",
            "run_id": _RUN,
            "kpi": "csat",
            "value": 1.0,
            "comment": text,
            "expected": orjson.dumps(text).decode(),
        }
    )
    stored.append(orjson.dumps(received).decode())
    for out in stored:
        assert secret not in out, out
    assert REDACTED in stored[0]
    orjson.loads(stored[1])  # redacting JSON text leaves valid JSON
    orjson.loads(stored[5])


@pytest.mark.parametrize("text", LOOKALIKES, ids=LOOKALIKE_IDS)
def test_a_lookalike_is_stored_unchanged(text: str) -> None:
    as_json = orjson.dumps(text).decode()
    assert redact(text) == text
    assert to_text({"text": text}) == '{"text":' + as_json + "}"
    rec = _span({"msg": text, "nested": {"a": [text]}})
    assert rec["status_message"] == text and rec["attributes"]["nested"] == {"a": [text]}
    fb = build_record("csat", 1.0, comment=text, run_id=_RUN, verify=False, item_key=text)
    assert fb["comment"] == text and fb["item_key"] == text
    assert full_json({"q": text}) == ('{"q":' + as_json + "}", True, False)


@pytest.mark.parametrize("index", range(len(structures())))
def test_secret_named_keys_at_any_depth(index: int) -> None:
    value, secret = structures()[index]
    # scrub's copy of any depth, serialised without recursion (orjson stops at 254 levels)
    outputs = [to_text(value), full_json(value)[0], redaction._dumps_deep(scrub(value))]
    if isinstance(value, dict):
        outputs.append(redaction._dumps_deep(_span({"payload": value})))
    for out in outputs:
        assert secret not in out


def test_an_eleven_deep_client_secret_and_a_cycle() -> None:
    value, secret = structures()[0]
    text = to_text(value)
    assert secret not in text and text.count('"level"') == 11 and '"note":"kept"' in text
    loop: dict[str, Any] = {"name": "a"}
    loop["self"] = [loop, {"back": loop}]
    assert to_text(loop) == '{"name":"a","self":["[cycle]",{"back":"[cycle]"}]}'
    deep: Any = "bottom"
    for _ in range(100_000):  # no recursion limit
        deep = [deep]
    assert to_text(deep).count("[") == 100_000


def test_dataclasses_and_models_are_walked_by_their_field_names() -> None:
    @dataclasses.dataclass
    class Creds:
        user: str
        password: str

    assert to_text(Creds("bob", "hunter2")) == '{"user":"bob","password":"[REDACTED]"}'
    from pydantic import BaseModel

    class Conn(BaseModel):
        host: str
        api_key: str

    assert to_text({"c": Conn(host="h", api_key="k-123456")}) == (
        '{"c":{"host":"h","api_key":"[REDACTED]"}}'
    )


# -- item keys: a keyed hash, so items stay apart --------------------------------------------


def test_a_secret_item_key_becomes_a_keyed_hash(
    warehouse_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [text for text, _ in SECRETS[:10]]  # item keys holding secrets
    stored = [redact_item_key(k) for k in keys]
    assert all(s and s.startswith("[REDACTED:") for s in stored)
    assert len(set(stored)) == len(keys)  # items stay apart
    assert [redact_item_key(k) for k in keys] == stored  # and the same one stays one
    assert all(k not in s for k, s in zip(keys, stored, strict=True))
    # not a constant hash: a per-warehouse key, kept beside it, readable by its owner only
    key_file = warehouse_path.with_name(warehouse_path.name + ".redact-key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert hashlib.sha256(keys[0].encode()).hexdigest()[:16] not in stored[0]
    monkeypatch.setenv("GENOPT_REDACT_KEY", "another-deployment-key")
    assert redact_item_key(keys[0]) != stored[0]


def test_item_keys_in_feedback_spans_and_received_feedback_are_hashed(
    warehouse_path: Path,
) -> None:
    secret = "sk-proj-itemkeysecret0123456789abcd"
    fb = build_record("csat", 1.0, run_id=_RUN, verify=False, item_key=secret)
    span = _span({"genopt.item_key": secret})
    received = validate_record(
        {
            "k": "feedback",
            "feedback_id": "f",
            "run_id": _RUN,
            "kpi": "k",
            "value": 1.0,
            "item_key": secret,
        }
    )
    hashed = redact_item_key(secret)
    assert fb["item_key"] == span["item_key"] == received["item_key"] == hashed
    assert span["attributes"]["genopt.item_key"] == hashed
    for rec in (fb, span, received):
        assert secret not in orjson.dumps(rec).decode()


def test_the_key_file_is_made_once_and_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_WAREHOUSE", str(tmp_path / "w.duckdb"))
    first = redaction.hash_key()
    redaction._keys.clear()  # another process: reads the same file
    assert redaction.hash_key() == first and len(first) == 64
    assert os.listdir(tmp_path) == ["w.duckdb.redact-key"]


# -- end to end: a pipeline run, the warehouse, experiences and the optimizer's prompt ------


class CorpusParams(genopt.Tunables):
    instruction: str = genopt.prompt("Answer the ticket.", description="the system prompt")


@genopt.task(record=True, item_key="key")
def answer(key: str, text: str, payload: dict[str, Any]) -> str:
    genopt.current_params(item_key=key)
    if "fail" in payload:
        raise ValueError(f"could not answer: {text}")
    return f"answered: {text}"


@genopt.task
def structured(index: int) -> Any:
    """Returns a structure whose secret is found by its key (the output is stored)."""
    return structures()[index][0]


def _corpus_flow(name: str) -> Any:
    @flow
    @genopt.pipeline(name=name, params=CorpusParams)
    def corpus(texts: list[str], secret_keys: list[str]) -> str:
        for i, text in enumerate(texts):
            answer(f"item-{i}", text, {"text": text, "i": i})
            genopt.feedback("accuracy", 1.0, item_key=f"item-{i}", comment=text, expected=text)
        for i in range(len(structures())):
            if i != 1:  # the 300-deep one: Prefect's own result handling recurses
                structured(i)
        for key in secret_keys:
            genopt.feedback("accuracy", 0.0, item_key=key, comment="keyed by a secret")
        return " | ".join(texts)

    return corpus


def _all_text(wh: genopt.Warehouse) -> str:
    tables = [
        "runs",
        "spans",
        "feedback",
        "pending_feedback",
        "step_values",
        "experiences",
        "experience_steps",
        "spool_rejects",
        "param_sets",
    ]
    return "\n".join(str(wh.sql(f"SELECT * FROM {t}")) for t in tables)


@pytest.mark.usefixtures("prefect_api")
def test_the_corpus_through_a_pipeline_run_the_warehouse_and_the_optimizer(
    warehouse_path: Path,
) -> None:
    from prefect_genopt.optimize import OptimizerSettings, OptoPrime, collect
    from prefect_genopt.replay.experiences import harvest

    name = f"corpus-{uuid.uuid4().hex[:6]}"
    texts = [t for t, _ in SECRETS] + LOOKALIKES
    secret_keys = [text for text, _ in SECRETS[:5]]  # item keys holding secrets
    run_output = _corpus_flow(name)(texts, secret_keys)
    assert run_output.count(" | ") == len(texts) - 1

    wh = genopt.Warehouse()
    harvest(name, "accuracy", threshold=1.0, warehouse=wh)
    wh = genopt.Warehouse()
    assert wh.sql("SELECT count(*) AS n FROM experiences")[0]["n"] >= 1
    assert wh.sql("SELECT count(*) AS n FROM step_values")[0]["n"] == len(texts)
    stored = _all_text(wh)
    for text, secret in SECRETS:
        assert secret not in stored, f"{secret!r} (from {text!r}) reached the warehouse"
    for _, secret in structures():
        if secret != "deeper-than-orjson-goes-9":
            assert secret not in stored
    # what must survive did, in the task inputs and the comments
    inputs = "\n".join(
        r["inputs"] for r in wh.sql("SELECT inputs FROM spans WHERE inputs IS NOT NULL")
    )
    comments = {r["comment"] for r in wh.sql("SELECT comment FROM feedback")}
    for text in LOOKALIKES:
        assert orjson.dumps(text).decode()[1:-1] in inputs and text in comments
    # secret item keys: stored hashed, each its own item
    keyed = wh.sql("SELECT item_key FROM feedback WHERE comment = 'keyed by a secret' ORDER BY 1")
    assert len({r["item_key"] for r in keyed}) == len(secret_keys)
    assert all(r["item_key"].startswith("[REDACTED:") for r in keyed)

    # the optimizer's prompt, built from the warehouse
    settings = OptimizerSettings(pipeline=name, kpi="accuracy", minibatch_size=64)
    evidence = collect(wh, settings)
    prompt = "\n".join(
        m["content"]
        for batch in evidence.minibatches
        for m in OptoPrime().messages(
            OptoPrime().problem(evidence, batch, [], settings, ["instruction"])
        )
    )
    assert "#Feedback" in prompt
    for text, secret in SECRETS:
        assert secret not in prompt, f"{secret!r} (from {text!r}) reached the optimizer prompt"
    shown = [t for t in LOOKALIKES if orjson.dumps(t).decode()[1:-1] in prompt or t in prompt]
    assert shown  # lookalikes the evidence shows are shown as they are


def test_a_span_deeper_than_json_encoders_go_is_stored_redacted(tmp_path: Path) -> None:
    from prefect_genopt import spool
    from prefect_genopt.warehouse import Ingester

    value, secret = structures()[1]  # 300 levels, an api_key at the bottom
    deep = _span({"payload": value})
    deep["span_id"] = "ef" * 8
    spool.append([deep, _span({"ok": 1})], tmp_path / "spool")
    spool.close_all()
    result = Ingester(tmp_path / "w.duckdb", tmp_path / "spool").ingest()
    assert (result.spans, result.rejected) == (2, 0)  # neither lost to the depth
    wh = genopt.Warehouse(tmp_path / "w.duckdb", spool_dir=tmp_path / "spool", ingest=False)
    [row] = wh.sql("SELECT attributes::VARCHAR AS a FROM spans WHERE span_id = ?", ["ef" * 8])
    assert secret not in row["a"] and row["a"].count('"level"') == 300

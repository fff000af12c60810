"""OTLP/HTTP decoding: real SDK spans through the real OTLP encoder, OTLP/JSON by hand.

A span that arrives over OTLP must become the same spool record as the same span
written locally (``records.from_readable_span``), apart from its source; a
malformed request must be refused whole with a message that says what is wrong.
"""

from __future__ import annotations

import base64
import copy
import gzip
import zlib
from typing import Any

import orjson
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from prefect_genopt.records import from_readable_span
from prefect_genopt.warehouse.otlp import (
    JSON,
    PROTOBUF,
    OTLPDecodeError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    decode_traces,
    response_body,
)

LIMIT = 200
RUN_ID = "8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10"
TRACE_HEX = "5B8EFFF798038103D269B633813FC60C"  # OTLP/JSON ids are case-insensitive hex
SPAN_HEX = "eee19b7ec3c1b174"
PARENT_HEX = "00f067aa0ba902b7"


def sdk_spans() -> list[ReadableSpan]:
    """Finished spans from a real SDK tracer provider: a root and a failing CLIENT child."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "worker-7", "host.ids": ("a", "b")})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("flow-run", attributes={"genopt.run_id": RUN_ID}):
        with tracer.start_as_current_span(
            "llm-call",
            kind=SpanKind.CLIENT,
            attributes={
                "genopt.run_id": RUN_ID,
                "gen_ai.request.model": "gpt-x",
                "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.cost": 0.25,
                "ok": False,
                "tags": ("a", "Bearer abcdef123456"),
                "sizes": (1, 2, 3),
                "http.request.header.authorization": "Bearer abcdef123456",
                "genopt.output": "y" * 1000,
            },
        ) as child:
            child.add_event("retry", {"attempt": 2, "why": "rate limited"})
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
    return list(exporter.get_finished_spans())


def protobuf_body(spans: list[ReadableSpan]) -> bytes:
    return encode_spans(spans).SerializeToString()


def comparable(rec: dict[str, Any]) -> dict[str, Any]:
    """A record as the spool stores it, minus what only says where it came from."""
    out = orjson.loads(orjson.dumps(rec))
    for key in ("source", "host", "pid"):
        out.pop(key)
    return out


def test_protobuf_spans_become_the_same_records_as_local_spans() -> None:
    spans = sdk_spans()
    records = decode_traces(protobuf_body(spans), PROTOBUF, limit=LIMIT, max_bytes=10**7)

    assert [comparable(r) for r in records] == [
        comparable(from_readable_span(s, LIMIT)) for s in spans
    ]
    assert {r["source"] for r in records} == {"otlp"}
    assert {r["host"] for r in records} == {None}
    child, root = records  # the SDK finishes the child first
    assert child["parent_span_id"] == root["span_id"] and root["parent_span_id"] is None
    assert len(child["trace_id"]) == 32 and len(child["span_id"]) == 16
    assert (child["span_kind"], child["status"], child["status_message"]) == (
        "CLIENT",
        "ERROR",
        "boom",
    )
    assert (root["span_kind"], root["status"]) == ("INTERNAL", "UNSET")
    assert child["run_id"] == RUN_ID and child["llm_model"] == "gpt-x"
    assert (child["input_tokens"], child["cost_usd"]) == (120, 0.25)
    assert child["attributes"]["sizes"] == [1, 2, 3] and child["attributes"]["ok"] is False
    assert child["events"] == [
        {
            "name": "retry",
            "time_ns": spans[0].events[0].timestamp,
            "attributes": {"attempt": 2, "why": "rate limited"},
        }
    ]
    assert child["resource"]["service.name"] == "worker-7"
    assert child["resource"]["host.ids"] == ["a", "b"]


def test_secrets_are_redacted_and_long_values_truncated() -> None:
    [child, _] = decode_traces(protobuf_body(sdk_spans()), PROTOBUF, limit=LIMIT, max_bytes=10**7)
    raw = orjson.dumps(child).decode()
    assert "abcdef123456" not in raw
    assert (
        child["attributes"]["http.request.header.authorization"] == "[REDACTED]"
    )  # a secret-looking key: the whole value
    assert child["attributes"]["tags"] == ["a", "Bearer [REDACTED]"]
    assert len(child["output"]) <= LIMIT and "truncated" in child["output"]


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send
        ("identity", lambda b: b),
    ],
)
def test_compressed_bodies(encoding: str, compress: Any) -> None:
    body = protobuf_body(sdk_spans())
    plain = decode_traces(body, PROTOBUF, limit=LIMIT, max_bytes=10**7)
    packed = decode_traces(compress(body), PROTOBUF, encoding, limit=LIMIT, max_bytes=10**7)
    assert [comparable(r) for r in packed] == [comparable(r) for r in plain]


def test_gzip_body_of_several_members() -> None:
    a, b = sdk_spans(), sdk_spans()
    # Two gzip members in one body decode as the concatenation of both messages.
    body = gzip.compress(protobuf_body(a)) + gzip.compress(protobuf_body(b))
    assert len(decode_traces(body, PROTOBUF, "gzip", limit=LIMIT, max_bytes=10**7)) == 4


def json_doc() -> dict[str, Any]:
    """A hand-written OTLP/JSON request using every AnyValue kind."""
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "js-worker"}}]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "manual", "version": "1"},
                        "spans": [
                            {
                                "traceId": TRACE_HEX,
                                "spanId": SPAN_HEX,
                                "parentSpanId": PARENT_HEX,
                                "name": "call model",
                                "kind": 3,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": 1700000000250000000,
                                "attributes": [
                                    {"key": "genopt.run_id", "value": {"stringValue": RUN_ID}},
                                    {"key": "s", "value": {"stringValue": "text"}},
                                    {"key": "b", "value": {"boolValue": True}},
                                    {"key": "i", "value": {"intValue": "9007199254740993"}},
                                    {"key": "d", "value": {"doubleValue": 0.5}},
                                    {
                                        "key": "arr",
                                        "value": {
                                            "arrayValue": {
                                                "values": [
                                                    {"stringValue": "x"},
                                                    {"intValue": 2},
                                                    {"arrayValue": {"values": []}},
                                                ]
                                            }
                                        },
                                    },
                                    {
                                        "key": "kv",
                                        "value": {
                                            "kvlistValue": {
                                                "values": [
                                                    {"key": "n", "value": {"intValue": "1"}},
                                                    {"key": "e", "value": {}},
                                                ]
                                            }
                                        },
                                    },
                                    {"key": "raw", "value": {"bytesValue": "AAEC/w=="}},
                                ],
                                "events": [
                                    {
                                        "timeUnixNano": "1700000000100000000",
                                        "name": "chunk",
                                        "attributes": [{"key": "n", "value": {"intValue": "3"}}],
                                    }
                                ],
                                "links": [{"traceId": "not decoded", "spanId": "nor this"}],
                                "status": {"code": 2, "message": "upstream 503"},
                                "futureField": {"ignored": True},
                            },
                            {
                                "traceId": TRACE_HEX.lower(),
                                "spanId": PARENT_HEX,
                                "parentSpanId": "",
                                "name": "root",
                                "kind": "SPAN_KIND_SERVER",
                                "startTimeUnixNano": "1699999999000000000",
                                "status": {"code": "STATUS_CODE_OK"},
                            },
                        ],
                    }
                ],
            }
        ]
    }


def test_hand_written_otlp_json() -> None:
    body = orjson.dumps(json_doc())
    call, root = decode_traces(body, "application/json; charset=utf-8", limit=LIMIT)

    assert call["trace_id"] == TRACE_HEX.lower() == root["trace_id"]
    assert (call["span_id"], call["parent_span_id"]) == (SPAN_HEX, PARENT_HEX)
    assert root["parent_span_id"] is None and root["end_ns"] is None
    assert (call["span_kind"], root["span_kind"]) == ("CLIENT", "SERVER")
    assert (call["status"], call["status_message"], root["status"]) == (
        "ERROR",
        "upstream 503",
        "OK",
    )
    assert (call["start_ns"], call["end_ns"]) == (1700000000000000000, 1700000000250000000)
    assert call["run_id"] == RUN_ID
    assert call["attributes"] == {
        "genopt.run_id": RUN_ID,
        "s": "text",
        "b": True,
        "i": 9007199254740993,
        "d": 0.5,
        "arr": ["x", 2, []],
        "kv": {"n": 1, "e": None},
        "raw": base64.b64encode(b"\x00\x01\x02\xff").decode(),
    }
    assert call["events"] == [
        {"name": "chunk", "time_ns": 1700000000100000000, "attributes": {"n": 3}}
    ]
    assert call["resource"] == {"service.name": "js-worker"}


def test_json_gzip_and_snake_case_field_names() -> None:
    doc = json_doc()
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    span["trace_id"] = span.pop("traceId")
    span["start_time_unix_nano"] = span.pop("startTimeUnixNano")
    [_, root] = decode_traces(gzip.compress(orjson.dumps(doc)), JSON, "gzip", limit=LIMIT)
    assert root["trace_id"] == TRACE_HEX.lower() and root["start_ns"] == 1699999999000000000


def test_json_of_sdk_spans_matches_protobuf_with_hex_or_base64_ids() -> None:
    spans = sdk_spans()
    request = encode_spans(spans)
    expected = [comparable(r) for r in decode_traces(request.SerializeToString(), PROTOBUF)]

    # protobuf's generic JSON mapping: base64 ids, enum names (what MessageToJson emits)
    generic = json_format.MessageToDict(request)
    assert generic["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["kind"] == "SPAN_KIND_CLIENT"
    got = decode_traces(orjson.dumps(generic), JSON)
    assert [comparable(r) for r in got] == expected

    # OTLP/JSON proper: hex ids, integer enums
    otlp = copy.deepcopy(generic)
    for span in otlp["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        for key in ("traceId", "spanId", "parentSpanId"):
            if key in span:
                span[key] = base64.b64decode(span[key]).hex()
        span["kind"] = {"SPAN_KIND_CLIENT": 3, "SPAN_KIND_INTERNAL": 1}[span["kind"]]
    got = decode_traces(orjson.dumps(otlp), JSON)
    assert [comparable(r) for r in got] == expected


def test_empty_requests_are_valid() -> None:
    assert decode_traces(b"", PROTOBUF) == []
    assert decode_traces(b"{}", JSON) == []
    assert decode_traces(b'{"resourceSpans": []}', JSON) == []


def _json_span(**changes: Any) -> bytes:
    doc = json_doc()
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    for key, value in changes.items():
        if value is None:
            span.pop(key, None)
        else:
            span[key] = value
    return orjson.dumps(doc)


def _proto_span(**changes: Any) -> bytes:
    request = encode_spans(sdk_spans())
    span = request.resource_spans[0].scope_spans[0].spans[0]
    for key, value in changes.items():
        setattr(span, key, value)
    return request.SerializeToString()


SPAN0 = "resourceSpans[0].scopeSpans[0].spans[0]"


@pytest.mark.parametrize(
    ("body", "content_type", "encoding", "message"),
    [
        (b"\xff\xfe not protobuf", PROTOBUF, None, "not a protobuf ExportTraceServiceRequest"),
        (orjson.dumps(json_doc()), PROTOBUF, None, "not a protobuf ExportTraceServiceRequest"),
        (b'{"resourceSpans": [', JSON, None, "not valid JSON"),
        (b"[1, 2]", JSON, None, "must be a JSON object"),
        (b'{"resourceSpans": {"a": 1}}', JSON, None, "resourceSpans must be a JSON array"),
        (_json_span(spanId="eee19b7ec3c1b1"), JSON, None, f"{SPAN0}: spanId 'eee19b7ec3c1b1'"),
        (_json_span(traceId="zz" * 16), JSON, None, "expected 32 hex characters"),
        (_json_span(traceId=None), JSON, None, f"{SPAN0}: traceId is missing"),
        (_json_span(traceId=12), JSON, None, "traceId must be a string"),
        (_json_span(startTimeUnixNano=None), JSON, None, "startTimeUnixNano is missing"),
        (_json_span(startTimeUnixNano="soon"), JSON, None, "startTimeUnixNano field"),
        (_json_span(endTimeUnixNano=str(2**63)), JSON, None, "endTimeUnixNano"),
        (_json_span(kind="SIDEWAYS"), JSON, None, "kind 'SIDEWAYS' is not a SpanKind"),
        (_json_span(kind=9), JSON, None, "kind 9 is not a SpanKind"),
        (_json_span(status={"code": 7}), JSON, None, "status code 7"),
        (_json_span(traceId="00" * 16), JSON, None, "traceId is all zeros"),
        (_proto_span(span_id=b"\x01\x02\x03\x04"), PROTOBUF, None, "spanId is 4 bytes; expected 8"),
        (_proto_span(trace_id=b"\x01" * 15), PROTOBUF, None, "traceId is 15 bytes; expected 16"),
        (_proto_span(parent_span_id=b"\x01" * 9), PROTOBUF, None, "parentSpanId is 9 bytes"),
        (_proto_span(start_time_unix_nano=0), PROTOBUF, None, "startTimeUnixNano is missing"),
        (b"not gzip", PROTOBUF, "gzip", "not valid gzip data"),
        # mtime=0: a parameter id must not change with the clock (xdist workers compare them)
        (gzip.compress(b"x" * 100, mtime=0)[:-12], PROTOBUF, "gzip", "truncated"),
    ],
)
def test_malformed_requests_are_refused_with_a_clear_message(
    body: bytes, content_type: str, encoding: str | None, message: str
) -> None:
    with pytest.raises(OTLPDecodeError) as err:
        decode_traces(body, content_type, encoding, limit=LIMIT, max_bytes=10**6)
    assert message in str(err.value)
    assert not isinstance(err.value, UnsupportedMediaTypeError | PayloadTooLargeError)


def test_one_bad_span_refuses_the_whole_request() -> None:
    doc = json_doc()
    doc["resourceSpans"].append(copy.deepcopy(doc["resourceSpans"][0]))
    doc["resourceSpans"][1]["scopeSpans"][0]["spans"][1]["spanId"] = "0102"
    with pytest.raises(OTLPDecodeError, match=r"resourceSpans\[1\]\.scopeSpans\[0\]\.spans\[1\]"):
        decode_traces(orjson.dumps(doc), JSON)


def test_unsupported_media_and_oversized_bodies() -> None:
    body = protobuf_body(sdk_spans())
    with pytest.raises(UnsupportedMediaTypeError, match="text/plain"):
        decode_traces(body, "text/plain")
    with pytest.raises(UnsupportedMediaTypeError, match="is not supported"):
        decode_traces(body, None)
    with pytest.raises(UnsupportedMediaTypeError, match="'br'"):
        decode_traces(body, PROTOBUF, "br")
    with pytest.raises(PayloadTooLargeError, match="limit"):
        decode_traces(body, PROTOBUF, max_bytes=len(body) - 1)
    bomb = gzip.compress(b"\0" * 10_000_000)  # ~10 kB that expands to 10 MB
    assert len(bomb) < 20_000
    with pytest.raises(PayloadTooLargeError, match="decompresses"):
        decode_traces(bomb, PROTOBUF, "gzip", max_bytes=1_000_000)


def test_replies_use_the_request_encoding() -> None:
    body, ctype = response_body(PROTOBUF)
    assert ctype == PROTOBUF
    assert ExportTraceServiceResponse.FromString(body) == ExportTraceServiceResponse()
    assert response_body("application/json; charset=utf-8") == (b"{}", JSON)
    assert ExportTraceServiceRequest.FromString(b"") == ExportTraceServiceRequest()


def test_secrets_inside_kvlist_values_are_redacted() -> None:
    doc = json_doc()
    attrs = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
    attrs.append(
        {
            "key": "http.headers",
            "value": {
                "kvlistValue": {
                    "values": [{"key": "auth", "value": {"stringValue": "Bearer abcdef123456"}}]
                }
            },
        }
    )
    [call, _] = decode_traces(orjson.dumps(doc), JSON)
    assert "abcdef123456" not in orjson.dumps(call).decode()

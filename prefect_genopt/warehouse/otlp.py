"""Decoding OTLP/HTTP trace requests into spool ``span`` records.

The receiver (:mod:`prefect_genopt.warehouse.receiver`) gets spans from workers
on other machines, or from an OpenTelemetry Collector, as OTLP/HTTP requests.
This module turns one request body into the same ``span`` records a local
pipeline process writes to the spool, through the same storage boundary
(:func:`prefect_genopt.records.span_record`, which redacts and truncates), so a
span stored from OTLP looks exactly like one stored locally, except that its
``source`` is ``"otlp"``.

What it accepts:

* ``Content-Type: application/x-protobuf``: a binary
  ``ExportTraceServiceRequest``;
* ``Content-Type: application/json``: OTLP/JSON, the protobuf JSON mapping with
  the OTLP rules: ``traceId``/``spanId`` are **hex** strings (not base64 as in
  the generic mapping; base64 of the right length is still accepted, since
  some exporters send it), enums are integers (their names are accepted too),
  64-bit integers may be strings, unknown fields are ignored;
* ``Content-Encoding: gzip`` (or ``deflate``/``zlib``, or none), with the
  decompressed size bounded too, so a small compressed body cannot expand
  without limit.

A request is decoded whole or not at all: any malformed span makes
:func:`decode_traces` raise :class:`OTLPDecodeError` (a ``ValueError``) whose
message says what is wrong and where (``resourceSpans[0].scopeSpans[0].spans[3]:
spanId is 7 bytes; expected 8``), and nothing of the request is kept.

Not stored: span links, trace state, flags, dropped counts and the
instrumentation scope (the warehouse has no columns for them).

Example:
    >>> body = b'''{"resourceSpans": [{"scopeSpans": [{"spans": [{
    ...     "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
    ...     "name": "step", "kind": 3, "startTimeUnixNano": "1700000000000000000",
    ...     "endTimeUnixNano": "1700000000500000000", "status": {"code": 1},
    ...     "attributes": [{"key": "tokens", "value": {"intValue": "12"}}]}]}]}]}'''
    >>> [rec] = decode_traces(body, "application/json", limit=4096)
    >>> rec["span_id"], rec["span_kind"], rec["status"], rec["attributes"], rec["source"]
    ('eee19b7ec3c1b174', 'CLIENT', 'OK', {'tokens': 12}, 'otlp')
"""

from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from prefect_genopt.errors import BadInputError
from prefect_genopt.records import span_record

__all__ = [
    "OTLPDecodeError",
    "UnsupportedMediaTypeError",
    "PayloadTooLargeError",
    "PROTOBUF",
    "JSON",
    "TRACE_MEDIA_TYPES",
    "media_type",
    "decompress",
    "parse_request",
    "records_from_request",
    "decode_traces",
    "response_body",
]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
#: Media types accepted for protobuf bodies (the OTLP one, and the IANA-style name).
_PROTOBUF_TYPES = frozenset({PROTOBUF, "application/protobuf"})
#: Every media type :func:`decode_traces` accepts.
TRACE_MEDIA_TYPES = _PROTOBUF_TYPES | {JSON}

TRACE_ID_BYTES = 16
SPAN_ID_BYTES = 8
_MAX_NS = 2**63 - 1  # the ingester stores times as signed 64-bit integers
_MAX_DEPTH = 64  # nesting of array/kvlist attribute values

#: Proto ``Span.SpanKind`` -> the SDK's ``SpanKind`` name (UNSPECIFIED reads as INTERNAL,
#: as the OTLP spec allows).
SPAN_KINDS: dict[int, str] = {
    0: "INTERNAL",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}
#: Proto ``Status.StatusCode`` -> the SDK's ``StatusCode`` name.
STATUS_CODES: dict[int, str] = {0: "UNSET", 1: "OK", 2: "ERROR"}

_KIND_BY_NAME = {n: v for n, v in Span.SpanKind.items()} | {
    n.removeprefix("SPAN_KIND_"): v for n, v in Span.SpanKind.items()
}
_STATUS_BY_NAME = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2} | {
    "UNSET": 0,
    "OK": 1,
    "ERROR": 2,
}


class OTLPDecodeError(BadInputError, ValueError):
    """An OTLP request body that cannot be decoded; the message says why."""


class UnsupportedMediaTypeError(OTLPDecodeError):
    """A Content-Type or Content-Encoding the receiver does not speak (HTTP 415)."""


class PayloadTooLargeError(OTLPDecodeError):
    """A body larger than allowed, before or after decompression (HTTP 413)."""


def media_type(content_type: str | None) -> str:
    """The bare, lower-case media type of a Content-Type header value.

    Example:
        >>> media_type("Application/JSON; charset=utf-8")
        'application/json'
    """
    return (content_type or "").split(";", 1)[0].strip().lower()


def decompress(body: bytes, content_encoding: str | None, max_bytes: int) -> bytes:
    """Undo a ``Content-Encoding`` (gzip, deflate/zlib or none), at most ``max_bytes`` out.

    Args:
        body: The request body as received.
        content_encoding: The header value (None or ``identity`` for none).
        max_bytes: Largest decompressed size accepted.

    Raises:
        UnsupportedMediaTypeError: An encoding other than gzip, deflate, zlib, identity.
        PayloadTooLargeError: The body decompresses to more than ``max_bytes``.
        OTLPDecodeError: The body is not valid data of the stated encoding.

    Example:
        >>> import gzip
        >>> decompress(gzip.compress(b"abc"), "gzip", 1024)
        b'abc'
    """
    enc = (content_encoding or "").strip().lower()
    if enc in ("", "identity", "none"):
        if len(body) > max_bytes:
            raise PayloadTooLargeError(f"body is {len(body)} bytes; the limit is {max_bytes}")
        return body
    if enc in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif enc in ("deflate", "zlib"):
        # HTTP "deflate" is the zlib format, but some clients send raw deflate.
        wbits = zlib.MAX_WBITS if body[:1] and (body[0] & 0x0F) == 8 else -zlib.MAX_WBITS
    else:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {content_encoding!r} is not supported (use gzip, deflate or none)"
        )
    out = bytearray()
    data = body
    try:
        while True:  # a gzip body may hold several members, one after another
            d = zlib.decompressobj(wbits)
            out += d.decompress(data, max_bytes + 1 - len(out))
            if len(out) > max_bytes or d.unconsumed_tail:
                raise PayloadTooLargeError(
                    f"body decompresses ({enc}) to more than {max_bytes} bytes, the limit"
                )
            if not d.eof:
                raise OTLPDecodeError(f"Content-Encoding {enc}: the compressed body is truncated")
            data = d.unused_data
            if not data:
                break
            if wbits != 16 + zlib.MAX_WBITS:
                raise OTLPDecodeError(f"Content-Encoding {enc}: trailing bytes after the stream")
    except zlib.error as exc:
        raise OTLPDecodeError(
            f"Content-Encoding is {enc} but the body is not valid {enc} data: {exc}"
        ) from None
    return bytes(out)


# -- parsing --------------------------------------------------------------------------------


def _get(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """A field of a JSON object by its lowerCamelCase name, else its proto (snake) name."""
    v = obj.get(camel)
    if v is None and snake != camel:
        v = obj.pop(snake, None)
        if v is not None:
            obj[camel] = v
    return v


def _json_list(obj: dict[str, Any], camel: str, snake: str, path: str) -> list[Any]:
    v = _get(obj, camel, snake)
    if v is None:
        return []
    if not isinstance(v, list):
        raise OTLPDecodeError(f"{path}.{camel} must be a JSON array, got {type(v).__name__}")
    for i, item in enumerate(v):
        if not isinstance(item, dict):
            raise OTLPDecodeError(
                f"{path}.{camel}[{i}] must be a JSON object, got {type(item).__name__}"
            )
    return v


def _json_id(
    obj: dict[str, Any], camel: str, snake: str, size: int, path: str, required: bool
) -> None:
    """Rewrite a hex id (OTLP/JSON) as base64 (the generic mapping ``ParseDict`` reads)."""
    v = _get(obj, camel, snake)
    if v is None or v == "":
        obj.pop(camel, None)
        if required:
            raise OTLPDecodeError(f"{path}: {camel} is missing")
        return
    if not isinstance(v, str):
        raise OTLPDecodeError(
            f"{path}: {camel} must be a string of {2 * size} hex characters, got {type(v).__name__}"
        )
    raw: bytes | None = None
    if len(v) == 2 * size:
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            raw = None
    if raw is None:
        # Not OTLP/JSON's hex: accept the generic protobuf JSON mapping's base64 if it fits.
        try:
            raw = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raw = None
        if raw is not None and len(raw) != size:
            raw = None
    if raw is None:
        shown = v if len(v) <= 40 else v[:40] + "..."
        raise OTLPDecodeError(
            f"{path}: {camel} {shown!r} is {len(v)} characters; expected {2 * size} hex "
            f"characters ({size} bytes; OTLP/JSON encodes ids as hex)"
        )
    obj[camel] = base64.b64encode(raw).decode("ascii")


def _json_enum(obj: dict[str, Any], key: str, names: dict[str, int], what: str, path: str) -> None:
    """Accept an enum as an integer (OTLP/JSON) or by name (generic mapping, or short)."""
    v = obj.get(key)
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return
    if isinstance(v, str):
        s = v.strip()
        if s.upper() in names:
            obj[key] = names[s.upper()]
            return
        if s.lstrip("-").isdigit():
            obj[key] = int(s)
            return
    raise OTLPDecodeError(f"{path}: {key} {v!r} is not a {what} (an integer, or its name)")


def _prepare_json(doc: Any) -> dict[str, Any]:
    """Validate the shape of an OTLP/JSON document and make it ``ParseDict``-ready."""
    if not isinstance(doc, dict):
        raise OTLPDecodeError(
            f"OTLP/JSON body must be a JSON object with 'resourceSpans', got {type(doc).__name__}"
        )
    for ri, rs in enumerate(_json_list(doc, "resourceSpans", "resource_spans", "request")):
        rpath = f"resourceSpans[{ri}]"
        for si, ss in enumerate(_json_list(rs, "scopeSpans", "scope_spans", rpath)):
            spath = f"{rpath}.scopeSpans[{si}]"
            for pi, sp in enumerate(_json_list(ss, "spans", "spans", spath)):
                path = f"{spath}.spans[{pi}]"
                _json_id(sp, "traceId", "trace_id", TRACE_ID_BYTES, path, required=True)
                _json_id(sp, "spanId", "span_id", SPAN_ID_BYTES, path, required=True)
                _json_id(sp, "parentSpanId", "parent_span_id", SPAN_ID_BYTES, path, False)
                _json_enum(sp, "kind", _KIND_BY_NAME, "SpanKind", path)
                sp.pop("links", None)  # not stored; their ids need no decoding
                status = sp.get("status")
                if isinstance(status, dict):
                    _json_enum(status, "code", _STATUS_BY_NAME, "status code", path + ".status")
    return doc


def parse_request(body: bytes, content_type: str | None) -> ExportTraceServiceRequest:
    """Parse an (already decompressed) body as an ``ExportTraceServiceRequest``.

    Args:
        body: The request body.
        content_type: The Content-Type header value (protobuf or JSON).

    Raises:
        UnsupportedMediaTypeError: Neither protobuf nor JSON.
        OTLPDecodeError: The body is not a valid request of that type.
    """
    mt = media_type(content_type)
    if mt in _PROTOBUF_TYPES:
        try:
            req = ExportTraceServiceRequest.FromString(body)
        except DecodeError as exc:
            raise OTLPDecodeError(
                f"body is not a protobuf ExportTraceServiceRequest "
                f"(Content-Type {content_type}): {exc}"
            ) from None
        if body and not req.resource_spans and len(UnknownFieldSet(req)):
            raise OTLPDecodeError(
                "body is not a protobuf ExportTraceServiceRequest: it parses, but holds no "
                "resource spans, only unknown fields"
            )
        return req
    if mt == JSON:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise OTLPDecodeError(f"body is not valid JSON: {exc}") from None
        doc = _prepare_json(doc)
        req = ExportTraceServiceRequest()
        try:
            json_format.ParseDict(doc, req, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise OTLPDecodeError(f"invalid OTLP/JSON: {exc}") from None
        except RecursionError:
            raise OTLPDecodeError("invalid OTLP/JSON: values nested too deeply") from None
        return req
    raise UnsupportedMediaTypeError(
        f"Content-Type {content_type!r} is not supported: send {PROTOBUF} or {JSON}"
    )


# -- converting -----------------------------------------------------------------------------


def _value(v: AnyValue, path: str, depth: int = 0) -> Any:
    """A plain Python value of an ``AnyValue`` (arrays as lists, kvlists as dicts)."""
    if depth > _MAX_DEPTH:
        raise OTLPDecodeError(f"{path}: attribute value nested deeper than {_MAX_DEPTH}")
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "array_value":
        return [_value(x, path, depth + 1) for x in v.array_value.values]
    if kind == "kvlist_value":
        return _attrs(v.kvlist_value.values, path, depth + 1)
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return None  # string_value_strindex: an index into a profiles string table


def _attrs(kvs: Any, path: str, depth: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kv: KeyValue
    for kv in kvs:
        out[kv.key] = _value(kv.value, f"{path} attribute {kv.key!r}", depth)
    return out


def _hex_id(raw: bytes, size: int, what: str, path: str, required: bool = True) -> str | None:
    if not raw:
        if required:
            raise OTLPDecodeError(f"{path}: {what} is missing")
        return None
    if len(raw) != size:
        raise OTLPDecodeError(f"{path}: {what} is {len(raw)} bytes; expected {size}")
    if not any(raw):
        if not required:
            return None  # an all-zero parent id means "no parent"
        raise OTLPDecodeError(f"{path}: {what} is all zeros, which is not a valid id")
    return raw.hex()


def _time(ns: int, what: str, path: str) -> int:
    if ns > _MAX_NS:
        raise OTLPDecodeError(f"{path}: {what} {ns} is out of range (past year 2262)")
    return ns


def records_from_request(req: ExportTraceServiceRequest, limit: int) -> list[dict[str, Any]]:
    """The spool ``span`` records of a parsed request, one per span.

    Args:
        req: The parsed request.
        limit: Longest string value kept (``GENOPT_MAX_VALUE_CHARS``).

    Raises:
        OTLPDecodeError: A span has a missing or invalid id, start time, kind or status.
    """
    out: list[dict[str, Any]] = []
    for ri, rs in enumerate(req.resource_spans):
        resource = _attrs(rs.resource.attributes, f"resourceSpans[{ri}].resource")
        for si, ss in enumerate(rs.scope_spans):
            for pi, sp in enumerate(ss.spans):
                path = f"resourceSpans[{ri}].scopeSpans[{si}].spans[{pi}]"
                trace_id = _hex_id(sp.trace_id, TRACE_ID_BYTES, "traceId", path)
                span_id = _hex_id(sp.span_id, SPAN_ID_BYTES, "spanId", path)
                parent = _hex_id(sp.parent_span_id, SPAN_ID_BYTES, "parentSpanId", path, False)
                if not sp.start_time_unix_nano:
                    raise OTLPDecodeError(f"{path}: startTimeUnixNano is missing")
                kind = SPAN_KINDS.get(sp.kind)
                if kind is None:
                    raise OTLPDecodeError(f"{path}: kind {sp.kind} is not a SpanKind (0-5)")
                status = STATUS_CODES.get(sp.status.code)
                if status is None:
                    raise OTLPDecodeError(
                        f"{path}: status code {sp.status.code} is not a status code (0-2)"
                    )
                events = [
                    {
                        "name": ev.name,
                        "time_ns": _time(ev.time_unix_nano, "event time", path) or None,
                        "attributes": _attrs(ev.attributes, f"{path}.events[{ei}]"),
                    }
                    for ei, ev in enumerate(sp.events)
                ]
                out.append(
                    span_record(
                        trace_id=trace_id or "",
                        span_id=span_id or "",
                        parent_span_id=parent,
                        name=sp.name,
                        span_kind=kind,
                        start_ns=_time(sp.start_time_unix_nano, "startTimeUnixNano", path),
                        end_ns=_time(sp.end_time_unix_nano, "endTimeUnixNano", path) or None,
                        status=status,
                        status_message=sp.status.message or None,
                        attributes=_attrs(sp.attributes, path),
                        events=events,
                        resource=resource,
                        source="otlp",
                        limit=limit,
                    )
                )
    return out


def decode_traces(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None = None,
    *,
    limit: int | None = None,
    max_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Decode one OTLP/HTTP traces request body into spool ``span`` records.

    All or nothing: the records are returned only if every span decodes.

    Args:
        body: The body as received (possibly compressed).
        content_type: The Content-Type header (``application/x-protobuf`` or ``application/json``).
        content_encoding: The Content-Encoding header (``gzip``, ``deflate`` or None).
        limit: Longest string value kept; default ``GENOPT_MAX_VALUE_CHARS``.
        max_bytes: Largest decompressed body; default ``GENOPT_MAX_BODY_BYTES``.

    Returns:
        One record per span, as :func:`prefect_genopt.records.span_record` builds them.

    Raises:
        UnsupportedMediaTypeError: Unsupported Content-Type or Content-Encoding.
        PayloadTooLargeError: The body decompresses to more than ``max_bytes``.
        OTLPDecodeError: Anything else malformed; the message says what and where.
    """
    if limit is None or max_bytes is None:
        from prefect_genopt.settings import get_settings

        settings = get_settings()
        limit = settings.max_value_chars if limit is None else limit
        max_bytes = settings.max_body_bytes if max_bytes is None else max_bytes
    if media_type(content_type) not in TRACE_MEDIA_TYPES:
        parse_request(b"", content_type)  # raises UnsupportedMediaTypeError
    data = decompress(body, content_encoding, max_bytes)
    return records_from_request(parse_request(data, content_type), limit)


def response_body(content_type: str | None) -> tuple[bytes, str]:
    """The body and Content-Type of a full-success reply, in the request's encoding.

    Example:
        >>> response_body("application/json")
        (b'{}', 'application/json')
        >>> response_body("application/x-protobuf")
        (b'', 'application/x-protobuf')
    """
    if media_type(content_type) == JSON:
        return b"{}", JSON
    return ExportTraceServiceResponse().SerializeToString(), PROTOBUF

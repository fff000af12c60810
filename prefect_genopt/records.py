"""The spool record format: one JSON object per line, one schema for every kind.

A *record* is what a writer appends to the spool and what the ingester loads.
Three kinds share one flat schema (:data:`RECORD_COLUMNS`) so the ingester
reads a whole batch with one DuckDB ``read_json`` call:

* ``span``: one finished span, normalised (genopt and GenAI attributes lifted
  into columns; the full attribute map kept as JSON);
* ``feedback``: one KPI value and/or comment;
* ``drops``: a count of spans a process could not export;
* ``row``: one row of a table genopt itself writes (proposals, their events...):
  ``table`` names it, ``body`` holds its columns (:func:`row_record`).

Every string is redacted and truncated here (:func:`span_record`), the single
storage boundary for local spans and OTLP spans alike. A feedback record that
arrives from elsewhere (the receiver's endpoint) is checked here too
(:func:`validate_record`), by the rules :func:`prefect_genopt.feedback` applies.

Example:
    >>> validate_kpi(" accuracy ")
    'accuracy'
    >>> validate_value(float("nan"))
    Traceback (most recent call last):
    ...
    prefect_genopt.feedback.FeedbackError: feedback value must be a finite number, got nan
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from prefect_genopt import semconv
from prefect_genopt.errors import BadInputError
from prefect_genopt.redaction import (
    REDACTED,
    Patterns,
    is_secret_key,
    patterns,
    redact,
    redact_item_key,
    scrub,
    truncate,
)
from prefect_genopt.settings import get_settings

__all__ = [
    "RECORD_COLUMNS",
    "span_record",
    "from_readable_span",
    "field_type_error",
    "row_record",
    "HOST",
    "FeedbackError",
    "FEEDBACK_FIELDS",
    "validate_kpi",
    "validate_value",
    "validate_record",
    "feedback_id",
]

HOST = socket.gethostname()

#: Column name -> DuckDB type of a spool line (absent keys load as NULL).
RECORD_COLUMNS: dict[str, str] = {
    "k": "VARCHAR",
    # spans
    "trace_id": "VARCHAR",
    "span_id": "VARCHAR",
    "parent_span_id": "VARCHAR",
    "name": "VARCHAR",
    "span_kind": "VARCHAR",
    "start_ns": "BIGINT",
    "end_ns": "BIGINT",
    "status": "VARCHAR",
    "status_message": "VARCHAR",
    "run_type": "VARCHAR",
    "task_name": "VARCHAR",
    "pipeline": "VARCHAR",
    "param_set_id": "VARCHAR",
    "arm": "VARCHAR",
    "inputs": "VARCHAR",
    "output": "VARCHAR",
    "params_read": "JSON",
    "error": "VARCHAR",
    "llm_model": "VARCHAR",
    "llm_provider": "VARCHAR",
    "input_tokens": "BIGINT",
    "output_tokens": "BIGINT",
    "cost_usd": "DOUBLE",
    "attributes": "JSON",
    "events": "JSON",
    "resource": "JSON",
    # shared by spans and feedback
    "run_id": "VARCHAR",
    "item_key": "VARCHAR",
    "source": "VARCHAR",
    # feedback
    "feedback_id": "VARCHAR",
    "kpi": "VARCHAR",
    "value": "DOUBLE",
    "comment": "VARCHAR",
    "idempotency_key": "VARCHAR",
    "created_ns": "BIGINT",
    "verified": "BOOLEAN",
    "expected": "VARCHAR",
    "step": "VARCHAR",
    # rows (``k == "row"``): one row for a warehouse table written by genopt itself
    "table": "VARCHAR",
    "body": "JSON",
    # drops
    "count": "BIGINT",
    "host": "VARCHAR",
    "pid": "BIGINT",
}


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "VARCHAR": (str,),
    "BIGINT": (int,),
    "DOUBLE": (int, float),
    "BOOLEAN": (bool,),
}


def field_type_error(record: Mapping[str, Any]) -> str | None:
    """Why a record's known fields do not fit :data:`RECORD_COLUMNS`, or None.

    Example:
        >>> field_type_error({"k": "span", "start_ns": "yesterday"})
        "field 'start_ns' should be BIGINT, got str"
    """
    for key, value in record.items():
        typ = RECORD_COLUMNS.get(key)
        if value is None or typ is None or typ == "JSON":
            continue
        ok = _PY_TYPES[typ]
        if not isinstance(value, ok) or (typ != "BOOLEAN" and isinstance(value, bool)):
            return f"field {key!r} should be {typ}, got {type(value).__name__}"
    return None


def current_user() -> str:
    """Who is acting, for ``actor`` columns: the login name, else ``"unknown"``."""
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "unknown"


def row_record(table: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """A spool record that becomes one row of ``table`` when ingested.

    Example:
        >>> row_record("proposal_events", {"event_id": "e1"})["k"]
        'row'
    """
    # absent, not JSON null: a missing key loads as SQL NULL
    return {"k": "row", "table": table, "body": {k: v for k, v in body.items() if v is not None}}


def _first(attrs: Mapping[str, Any], names: Iterable[str]) -> Any:
    for n in names:
        v = attrs.get(n)
        if v is not None:
            return v
    return None


def _int(v: Any) -> int | None:
    try:
        return None if v is None else int(v)
    except (TypeError, ValueError):
        return None


def _float(v: Any) -> float | None:
    try:
        f = None if v is None else float(v)
    except (TypeError, ValueError):
        return None
    return f if f is not None and math.isfinite(f) else None


def _json_or_text(v: Any) -> Any:
    """A JSON text attribute as its value (it lands in a JSON column), else as is."""
    if isinstance(v, str):
        try:
            return orjson.loads(v)
        except orjson.JSONDecodeError:
            return v
    return v


def _text_value(v: Any) -> str | None:
    """A value for a text column: strings as they are, anything else as JSON text.

    Example:
        >>> _text_value([{"role": "user", "content": "hi"}])
        '[{"role":"user","content":"hi"}]'
    """
    if v is None or isinstance(v, str):
        return v
    return orjson.dumps(v, default=str).decode()


def _clean_value(key: str, value: Any, limit: int, pats: Patterns) -> Any:
    """Redact and truncate strings anywhere in a value (lists and maps included, at any
    depth: :func:`prefect_genopt.redaction.scrub`); anything under a secret-named key
    becomes ``[REDACTED]``."""
    if key in semconv.VERBATIM or value is None or isinstance(value, bool):
        return value
    if is_secret_key(key):
        return REDACTED
    if isinstance(value, str):
        return truncate(redact(value, pats), limit)
    if isinstance(value, Mapping) and not isinstance(value, dict):
        value = dict(value)
    return scrub(value, lambda text: truncate(redact(text, pats), limit))


def _clean_map(attrs: Mapping[str, Any], limit: int, pats: Patterns) -> dict[str, Any]:
    return {k: _clean_value(k, v, limit, pats) for k, v in attrs.items()}


def _run_type(name: str, attrs: Mapping[str, Any]) -> str:
    rt = attrs.get(semconv.PREFECT_RUN_TYPE)
    if rt:
        return str(rt)
    if name == semconv.RUN_START_SPAN:
        return "run_start"
    if name == semconv.RUN_END_SPAN:
        return "run_end"
    if _first(attrs, semconv.GENAI_MODEL) is not None or semconv.GENAI_OPERATION in attrs:
        return "llm"
    return "other"


def span_record(
    *,
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    name: str,
    span_kind: str,
    start_ns: int,
    end_ns: int | None,
    status: str,
    status_message: str | None,
    attributes: Mapping[str, Any],
    events: list[dict[str, Any]],
    resource: Mapping[str, Any],
    source: str,
    limit: int,
) -> dict[str, Any]:
    """Build a normalised, redacted ``span`` record from a span's parts.

    Args:
        trace_id: 32 hex chars.
        span_id: 16 hex chars.
        parent_span_id: 16 hex chars or None for a root span.
        name: Span name (Prefect uses the run name).
        span_kind: OpenTelemetry span kind name.
        start_ns: Start, ns since the epoch.
        end_ns: End, ns since the epoch.
        status: ``OK``, ``ERROR`` or ``UNSET``.
        status_message: The status description, if any.
        attributes: The span's attributes.
        events: ``[{"name", "time_ns", "attributes"}]``.
        resource: The resource attributes.
        source: Where the span came from (``spool`` for local, ``otlp`` for the receiver).
        limit: Longest string value kept (longer ones are truncated with a marker).
    """
    pats = patterns()
    attrs = _clean_map(attributes, limit, pats)
    if attributes.get(semconv.ITEM_KEY) is not None:  # a secret one: a keyed hash, not a constant
        attrs[semconv.ITEM_KEY] = redact_item_key(str(attributes[semconv.ITEM_KEY]), pats)
    run_id = attrs.get(semconv.RUN_ID)
    if run_id is None and attrs.get(semconv.PREFECT_RUN_TYPE) == "flow":
        run_id = attrs.get(semconv.PREFECT_RUN_ID)
    run_type = _run_type(name, attrs)
    # the bulky genopt values live in their own columns, not twice; an LLM span's
    # messages and completion are its inputs and output
    inputs, output = attrs.pop(semconv.INPUTS, None), attrs.pop(semconv.OUTPUT, None)
    if run_type == "llm":
        if inputs is None:
            inputs = _text_value(attrs.pop(semconv.GENAI_PROMPT, None))
        if output is None:
            output = _text_value(attrs.pop(semconv.GENAI_COMPLETION, None))
    return {
        "k": "span",
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent_span_id,
        "name": truncate(redact(name, pats), 1000),
        "span_kind": span_kind,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "status": status,
        "status_message": (
            truncate(redact(status_message, pats), limit) if status_message else None
        ),
        "run_id": run_id,
        "run_type": run_type,
        "task_name": attrs.get(semconv.TASK_NAME),
        "pipeline": attrs.get(semconv.PIPELINE),
        "param_set_id": attrs.get(semconv.PARAM_SET_ID),
        "arm": attrs.get(semconv.ARM),
        "item_key": attrs.get(semconv.ITEM_KEY),
        "inputs": inputs,
        "output": output,
        "params_read": _json_or_text(attrs.pop(semconv.PARAMS_READ, None)),
        "error": attrs.pop(semconv.ERROR, None),
        "llm_model": _first(attrs, semconv.GENAI_MODEL),
        "llm_provider": _first(attrs, semconv.GENAI_PROVIDER),
        "input_tokens": _int(_first(attrs, semconv.GENAI_INPUT_TOKENS)),
        "output_tokens": _int(_first(attrs, semconv.GENAI_OUTPUT_TOKENS)),
        "cost_usd": _float(_first(attrs, semconv.GENAI_COST)),
        "attributes": attrs,
        "events": [
            {
                "name": e.get("name"),
                "time_ns": e.get("time_ns"),
                "attributes": _clean_map(e.get("attributes") or {}, limit, pats),
            }
            for e in events
        ],
        "resource": _clean_map(resource, limit, pats),
        "source": source,
        "host": HOST if source == "spool" else None,
        "pid": os.getpid() if source == "spool" else None,
    }


def from_readable_span(span: Any, limit: int) -> dict[str, Any]:
    """A ``span`` record from an OpenTelemetry SDK ``ReadableSpan``."""
    ctx = span.context
    parent = span.parent
    return span_record(
        trace_id=format(ctx.trace_id, "032x"),
        span_id=format(ctx.span_id, "016x"),
        parent_span_id=format(parent.span_id, "016x") if parent is not None else None,
        name=span.name,
        span_kind=span.kind.name,
        start_ns=span.start_time,
        end_ns=span.end_time,
        status=span.status.status_code.name,
        status_message=span.status.description,
        attributes=dict(span.attributes or {}),
        events=[
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
        resource=dict(span.resource.attributes) if span.resource else {},
        source="spool",
        limit=limit,
    )


# ---------------------------------------------------------------------------------------
# feedback records
# ---------------------------------------------------------------------------------------


class FeedbackError(BadInputError, ValueError):
    """Feedback that cannot be recorded as given."""


# Its public home is prefect_genopt.feedback (genopt.FeedbackError): tracebacks, log
# filters and pickles keep naming it there (numpy's set_module does the same).
FeedbackError.__module__ = "prefect_genopt.feedback"

MAX_KPI_CHARS = 200
MAX_KEY_CHARS = 500


def validate_kpi(kpi: Any) -> str:
    """A KPI name: a non-empty string of at most 200 characters."""
    if not isinstance(kpi, str) or not kpi.strip():
        raise FeedbackError(f"KPI name must be a non-empty string, got {kpi!r}")
    kpi = kpi.strip()
    if len(kpi) > MAX_KPI_CHARS:
        raise FeedbackError(f"KPI name is {len(kpi)} chars; the limit is {MAX_KPI_CHARS}")
    return kpi


def validate_value(value: Any) -> float | None:
    """A KPI value: None (text-only feedback) or a finite number."""
    if value is None:
        return None
    if isinstance(value, bool | str | bytes) or not hasattr(value, "__float__"):
        raise FeedbackError(f"feedback value must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise FeedbackError(f"feedback value must be a finite number, got {value}")
    return value


#: Fields a feedback record may carry (what :func:`prefect_genopt.feedback.build_record` makes).
FEEDBACK_FIELDS = frozenset(
    {
        "k",
        "feedback_id",
        "run_id",
        "kpi",
        "value",
        "comment",
        "item_key",
        "source",
        "idempotency_key",
        "created_ns",
        "verified",
        "pipeline",
        "param_set_id",
        "arm",
        "expected",
        "step",
    }
)


def feedback_id(run_id: str, idempotency_key: str) -> str:
    """The stored id of a feedback: one per (run, idempotency key).

    Example:
        >>> feedback_id("8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10", "accuracy||code")
        'fde83d5ebfb62c896cb607aef8c01d99'
    """
    return hashlib.sha256(f"{run_id}\0{idempotency_key}".encode()).hexdigest()[:32]


def validate_record(obj: Any, where: str = "record") -> dict[str, Any]:
    """Check a feedback record that arrives from elsewhere (the receiver's endpoint).

    It must look like what :func:`prefect_genopt.feedback.build_record` produces:
    ``k == "feedback"``, non-empty ``feedback_id``, ``run_id`` (a UUID) and ``kpi``, a finite
    ``value`` or null (then a ``comment``), only known fields of the right
    types. The comment is redacted again. Returns the normalised record.

    Raises:
        FeedbackError: What is wrong, prefixed with ``where``.
    """
    if not isinstance(obj, dict):
        raise FeedbackError(f"{where}: a feedback record must be a JSON object")
    if obj.get("k") != "feedback":
        raise FeedbackError(f"{where}: 'k' must be \"feedback\", got {obj.get('k')!r}")
    unknown = sorted(set(obj) - FEEDBACK_FIELDS)
    if unknown:
        raise FeedbackError(f"{where}: unknown feedback field(s) {', '.join(unknown)}")
    for key in ("feedback_id", "run_id", "kpi"):
        if not isinstance(obj.get(key), str) or not obj[key].strip():
            raise FeedbackError(f"{where}: {key!r} is required (a non-empty string)")
    rec = dict(obj)
    why = field_type_error({k: v for k, v in rec.items() if k != "value"})
    if why:
        raise FeedbackError(f"{where}: {why}")
    for key, val in rec.items():
        if isinstance(val, str) and len(val) > MAX_KEY_CHARS and key not in ("comment", "expected"):
            raise FeedbackError(f"{where}: {key!r} is longer than {MAX_KEY_CHARS} chars")
    value = rec.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise FeedbackError(f"{where}: feedback value must be a number or null, got {value!r}")
    try:
        rec["kpi"] = validate_kpi(rec["kpi"])
        rec["value"] = validate_value(value)
    except OverflowError:
        raise FeedbackError(f"{where}: feedback value must be a finite number") from None
    except FeedbackError as exc:
        raise FeedbackError(f"{where}: {exc}") from None
    try:
        rec["run_id"] = str(uuid.UUID(rec["run_id"]))
    except ValueError:
        raise FeedbackError(
            f"{where}: run_id {rec['run_id']!r} is not a Prefect flow-run id (a UUID)"
        ) from None
    if rec.get("created_ns") is None:
        rec["created_ns"] = time.time_ns()
    elif not 0 < rec["created_ns"] < 2**63:
        raise FeedbackError(f"{where}: 'created_ns' is out of range")
    comment = rec.get("comment")
    if comment is not None:
        limit = get_settings().max_comment_chars
        if len(comment) > limit:
            raise FeedbackError(f"{where}: comment is {len(comment)} chars; the limit is {limit}")
        rec["comment"] = redact(comment)
    if rec.get("item_key") is not None:  # a secret one: a keyed hash, items stay apart
        rec["item_key"] = redact_item_key(rec["item_key"])
    if rec.get("expected") is not None:
        limit = get_settings().max_comment_chars
        if len(rec["expected"]) > limit:
            raise FeedbackError(
                f"{where}: expected is {len(rec['expected'])} chars; the limit is {limit}"
            )
        rec["expected"] = redact(rec["expected"])
    if rec["value"] is None and not rec.get("comment"):
        raise FeedbackError(f"{where}: feedback needs a value, a comment, or both")
    rec["source"] = (rec.get("source") or "").strip() or "receiver"
    if rec.get("verified") is None:
        rec["verified"] = False
    try:
        orjson.dumps(rec)
    except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate that stdlib json let through
        raise FeedbackError(f"{where}: cannot be stored as JSON: {exc}") from None
    return rec

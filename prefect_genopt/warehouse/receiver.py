"""``genopt serve``: the OTLP/HTTP receiver in front of the spool.

Workers on other machines (``GENOPT_OTLP_ENDPOINT``), or an OpenTelemetry
Collector in between, send spans here over OTLP/HTTP; ``genopt.feedback()`` in
OTLP mode posts feedback records here too. The receiver never opens the DuckDB
file itself (docs/architecture.md, decision 2: one writer): it decodes each request whole
(:mod:`prefect_genopt.warehouse.otlp`), appends the records to its own spool
file with one write, and a background loop runs the
:class:`~prefect_genopt.warehouse.ingest.Ingester` every ``ingest_interval``
seconds, which is the only code that writes the warehouse. Readers
(``genopt sql``, ``Warehouse(...)``) keep working meanwhile: the ingester holds
the file only briefly per batch.

Endpoints:

* ``POST /v1/traces``: OTLP/HTTP traces (protobuf or JSON, optionally gzip);
  200 with an empty ``ExportTraceServiceResponse`` in the request's encoding.
* ``POST /v1/genopt/feedback``: one feedback record (as built by
  :func:`prefect_genopt.feedback.build_record`) or a JSON list of them;
  200 ``{"accepted": n}``.
* ``GET /healthz``: 200 with the spool directory, the warehouse path and counters
  (without a valid token, when one is required: ``{"status": "ok"}`` only).

**Authentication and TLS.** With a token (``token=``, ``token_file=``,
``GENOPT_SERVE_TOKEN`` or ``GENOPT_SERVE_TOKEN_FILE``) every request must carry
``Authorization: Bearer <token>`` (compared in constant time) or gets 401. With a
certificate and key (``tls_cert=``/``tls_key=``, ``GENOPT_SERVE_TLS_CERT``/``_KEY``)
the socket speaks HTTPS only. Without a token the receiver binds loopback only,
unless ``insecure_no_auth=True`` says that is meant (:class:`ReceiverConfigError`).

**What a feedback body is not believed on.** A record's ``arm``, ``param_set_id``,
``pipeline`` and ``verified`` are dropped here and derived at ingest from the stored
run and its item spans (a received record waits in ``pending_feedback`` until its run
has ended or its item's spans are in); its ``feedback_id`` is derived from the run id
and the idempotency key (:func:`prefect_genopt.records.feedback_id`). Values a
body sent for those fields are counted (the ``ignored_fields`` counter, and one
``receiver_ignored_fields`` row per request, shown by ``genopt status``).

Errors are JSON ``{"error": "..."}``: 400 malformed body (including JSON nested
deeper than 1024 levels), 401 no or a wrong token, 404 unknown path,
405 wrong method, 411 no length, 413 body over ``GENOPT_MAX_BODY_BYTES``
(checked before the body is read, and again after decompression) or more records
than ``GENOPT_MAX_RECORDS_PER_REQUEST``, 415 unsupported Content-Type or
Content-Encoding, 503 when the spool cannot be written or the receiver is stopping
(OTLP clients retry 503).

Example:
    >>> import tempfile, pathlib, urllib.request
    >>> wh = pathlib.Path(tempfile.mkdtemp()) / "w.duckdb"
    >>> with Receiver(port=0, warehouse=wh) as rx:
    ...     urllib.request.urlopen(rx.url + "/healthz").status
    200
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import signal
import socket
import socketserver
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from prefect_genopt import spool
from prefect_genopt.errors import BadInputError
from prefect_genopt.records import FeedbackError, feedback_id, row_record, validate_record
from prefect_genopt.settings import GenoptSettings, get_settings
from prefect_genopt.warehouse.access import WarehouseBusyError
from prefect_genopt.warehouse.ingest import Ingester, IngestResult
from prefect_genopt.warehouse.otlp import (
    JSON,
    TRACE_MEDIA_TYPES,
    OTLPDecodeError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    decode_traces,
    decompress,
    media_type,
    response_body,
)
from prefect_genopt.warehouse.schema import utcnow

__all__ = [
    "Receiver",
    "serve",
    "feedback_records",
    "ReceiverConfigError",
    "resolve_token",
    "is_loopback",
    "DERIVED_FIELDS",
    "TRACES_PATH",
    "FEEDBACK_PATH",
    "HEALTH_PATH",
]

logger = logging.getLogger("prefect_genopt.receiver")

TRACES_PATH = "/v1/traces"
FEEDBACK_PATH = "/v1/genopt/feedback"
HEALTH_PATH = "/healthz"

#: Feedback fields the receiver does not take from a body: the first four are derived at
#: ingest from the stored run and its item spans, the id from the run and idempotency key.
DERIVED_FIELDS = ("arm", "param_set_id", "pipeline", "verified", "feedback_id")
#: orjson's nesting limit: a deeper JSON body is refused with 400
MAX_JSON_DEPTH = 1024


class ReceiverConfigError(BadInputError, ValueError):
    """The receiver cannot start as configured: an open address without a token, a
    certificate without its key, an unreadable or empty token file."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): reachable from this
    machine only.

    Example:
        >>> [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "", "10.0.0.5")]
        [True, True, True, False, False, False]
    """
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(
    token: str | None = None,
    token_file: Path | None = None,
    settings: GenoptSettings | None = None,
) -> str | None:
    """The bearer token the receiver requires, or None (no authentication).

    The first given of: ``token``, the first line of ``token_file``,
    ``GENOPT_SERVE_TOKEN``, the first line of ``GENOPT_SERVE_TOKEN_FILE``.

    Raises:
        ReceiverConfigError: The token file cannot be read, or a token is empty or
            holds whitespace.

    Example:
        >>> resolve_token("s3cret-token-0123456789")
        's3cret-token-0123456789'
        >>> resolve_token(settings=GenoptSettings()) is None
        True
    """
    settings = settings or get_settings()
    where = "the token"
    if token is None and token_file is None:
        if settings.serve_token is not None:
            token, where = settings.serve_token.get_secret_value(), "GENOPT_SERVE_TOKEN"
        elif settings.serve_token_file is not None:
            token_file = settings.serve_token_file
    if token is None and token_file is not None:
        path = Path(token_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ReceiverConfigError(f"cannot read the token file {path}: {exc}") from None
        token, where = (lines[0].strip() if lines else ""), f"the token file {path}"
    if token is None:
        return None
    if not token or any(c.isspace() for c in token):
        raise ReceiverConfigError(f"{where} is empty or holds whitespace")
    return token


class _HTTPError(Exception):
    """An error reply: status code and message (sent as JSON)."""

    def __init__(
        self,
        status: int,
        message: str,
        close: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.headers = headers or {}


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):
            raise FeedbackError(
                f"body is not valid JSON: nested deeper than {MAX_JSON_DEPTH} levels"
            ) from None
        try:  # Python's json writes NaN/Infinity: parse them to refuse them by name below
            return json.loads(body)
        except (ValueError, RecursionError):
            raise FeedbackError(f"body is not valid JSON: {exc}") from None


def _untrusted(raw: dict[str, Any], rec: dict[str, Any], ignored: Counter[str]) -> dict[str, Any]:
    """``rec`` without the fields a body is not believed on (counting those it sent)."""
    for key in DERIVED_FIELDS[:4]:
        if raw.get(key) is not None:
            ignored[key] += 1
        rec[key] = None  # verified None: ingest derives the others before attaching it
    key = rec.get("idempotency_key") or rec["feedback_id"]
    derived = feedback_id(rec["run_id"], key)
    if rec.get("idempotency_key") and raw.get("feedback_id") != derived:
        ignored["feedback_id"] += 1
    rec["feedback_id"], rec["idempotency_key"] = derived, key
    return rec


def feedback_records(
    body: bytes, *, max_records: int | None = None, ignored: Counter[str] | None = None
) -> list[dict[str, Any]]:
    """Validate a feedback request body: one record or a JSON list of them.

    Each record is what :func:`prefect_genopt.feedback.build_record` returns:
    ``k == "feedback"``, non-empty ``feedback_id``, ``run_id`` (a UUID) and
    ``kpi``, a finite ``value`` or null (then a ``comment``), and only known
    fields of the right types. Comments are redacted again here. The fields of
    :data:`DERIVED_FIELDS` are not taken from the body: ``arm``, ``param_set_id``,
    ``pipeline`` and ``verified`` come back None (derived at ingest), ``feedback_id``
    is derived from ``run_id`` and ``idempotency_key`` (the body's ``feedback_id`` when
    it has no key, which then becomes the key).

    Args:
        body: The (decompressed) request body.
        max_records: Most records accepted (default ``GENOPT_MAX_RECORDS_PER_REQUEST``).
        ignored: Counts, per field, the records whose body sent a value that was ignored.

    Raises:
        FeedbackError: The body or one record is invalid (then none is accepted).
        PayloadTooLargeError: More records than ``max_records``.

    Example:
        >>> recs = feedback_records(b'{"k": "feedback", "feedback_id": "f1", "arm": "canary", '
        ...     b'"run_id": "8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10", "kpi": "accuracy", "value": 1}')
        >>> recs[0]["kpi"], recs[0]["value"], recs[0]["arm"], recs[0]["idempotency_key"]
        ('accuracy', 1.0, None, 'f1')
    """
    limit = get_settings().max_records_per_request if max_records is None else max_records
    ignored = Counter() if ignored is None else ignored
    doc = _parse_json(body)
    docs, where = (doc, "record [{}]") if isinstance(doc, list) else ([doc], "record")
    if len(docs) > limit:
        raise PayloadTooLargeError(
            f"request holds {len(docs)} feedback records; the limit is {limit} "
            "(GENOPT_MAX_RECORDS_PER_REQUEST): send smaller batches"
        )
    return [
        _untrusted(obj, validate_record(obj, where.format(i)), ignored)
        for i, obj in enumerate(docs)
    ]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: Receiver

    def __init__(self, address: tuple[str, int], receiver: Receiver) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.receiver = receiver
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind also resolves the host's FQDN, which can stall offline.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        # TLS: the handshake runs here, on the connection's own thread (with its timeout),
        # not in the accepting thread, so a slow or silent client stalls no one else.
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(_Handler.timeout)
                request.do_handshake()
            except (OSError, ValueError) as exc:
                logger.info("TLS handshake with %s failed: %s", client_address, exc)
                self.receiver._count("rejected_requests")
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """One connection; requests are dispatched to the :class:`Receiver`."""

    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "genopt-receiver"
    timeout = 60  # an idle or stalled client gives up its thread after this

    def setup(self) -> None:
        super().setup()
        self.server.receiver._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.receiver._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s %s", self.address_string(), format % args)

    def handle_expect_100(self) -> bool:
        # Refuse an unauthenticated or oversized body before the client sends it.
        if not self._authorized():
            self.server.receiver._count("rejected_requests")
            self.server.receiver._count("unauthorized_requests")
            self._reply_error(self._unauthorized(close=True))
            return False
        length = self.headers.get("Content-Length")
        limit = self.server.receiver.max_body_bytes
        if length is not None and length.strip().isdigit() and int(length) > limit:
            self.server.receiver._count("rejected_requests")
            self._reply_error(
                _HTTPError(
                    413,
                    f"body of {int(length)} bytes exceeds the limit of {limit} "
                    "(GENOPT_MAX_BODY_BYTES)",
                    close=True,
                )
            )
            return False
        return super().handle_expect_100()

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("POST")

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("GET")

    def do_PUT(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        rx = self.server.receiver
        if not rx._begin_request():
            self._reply_error(_HTTPError(503, "the receiver is shutting down", close=True))
            return
        try:
            path = self.path.split("?", 1)[0]
            routes = {
                TRACES_PATH: ("POST", self._traces),
                FEEDBACK_PATH: ("POST", self._feedback),
                HEALTH_PATH: ("GET", self._health),
            }
            route = routes.get(path.rstrip("/") or "/")
            self._auth_ok = self._authorized()
            if not self._auth_ok and (path.rstrip("/") or "/") != HEALTH_PATH:
                rx._count("unauthorized_requests")
                raise self._unauthorized(close=method != "GET")
            if route is None:
                raise _HTTPError(404, f"no such path {path!r}", close=method != "GET")
            if route[0] != method:
                raise _HTTPError(
                    405, f"{path} accepts {route[0]} only, not {method}", close=method != "GET"
                )
            route[1]()
        except _HTTPError as exc:
            rx._count("rejected_requests")
            self._reply_error(exc)
        except RecursionError:  # a body nested past a parser's limit is the client's fault
            rx._count("rejected_requests")
            self._reply_error(_HTTPError(400, "body is nested too deeply", close=True))
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the server thread
            logger.exception("receiver error on %s %s", method, self.path)
            rx._count("rejected_requests")
            self._reply_error(_HTTPError(500, f"internal error: {exc}", close=True))
        finally:
            rx._end_request()

    # -- authentication -------------------------------------------------------------------

    _auth_ok = False

    def _authorized(self) -> bool:
        """Whether the request carries the token (always, when none is required)."""
        token = self.server.receiver._token
        if token is None:
            return True
        scheme, _, given = (self.headers.get("Authorization") or "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), token.encode())

    def _unauthorized(self, close: bool) -> _HTTPError:
        sent = "Authorization" in self.headers
        why = "the bearer token is wrong" if sent else "no bearer token"
        return _HTTPError(
            401,
            f"{why}: send 'Authorization: Bearer <token>' (GENOPT_OTLP_TOKEN on workers)",
            close=close,
            headers={"WWW-Authenticate": 'Bearer realm="genopt"'},
        )

    # -- bodies ---------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        limit = self.server.receiver.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        length = self.headers.get("Content-Length")
        if length is None:
            raise _HTTPError(411, "Content-Length is required", close=True)
        try:
            n = int(length)
        except ValueError:
            raise _HTTPError(400, f"bad Content-Length {length!r}", close=True) from None
        if n < 0:
            raise _HTTPError(400, f"bad Content-Length {length!r}", close=True)
        if n > limit:
            raise _HTTPError(
                413,
                f"body of {n} bytes exceeds the limit of {limit} (GENOPT_MAX_BODY_BYTES)",
                close=True,
            )
        data = self.rfile.read(n)
        if len(data) < n:
            raise _HTTPError(400, f"body ended after {len(data)} of {n} bytes", close=True)
        return data

    def _read_chunked(self, limit: int) -> bytes:
        out = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HTTPError(400, "malformed chunked body", close=True) from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(out)
            if len(out) + size > limit:
                raise _HTTPError(
                    413, f"body exceeds the limit of {limit} (GENOPT_MAX_BODY_BYTES)", close=True
                )
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise _HTTPError(400, "chunked body ended early", close=True)
            out += chunk
            self.rfile.readline(1024)

    def _decoded(self, fn: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        try:
            return fn()
        except UnsupportedMediaTypeError as exc:
            raise _HTTPError(415, str(exc)) from None
        except PayloadTooLargeError as exc:
            raise _HTTPError(413, str(exc)) from None
        except (OTLPDecodeError, FeedbackError) as exc:
            raise _HTTPError(400, str(exc)) from None

    def _append(self, records: list[dict[str, Any]]) -> None:
        rx = self.server.receiver
        try:  # below the disk reserve: 503 (the warehouse keeps room to load the backlog)
            spool.check_reserve(rx.spool_dir, int(get_settings().spool_reserve_mb * 2**20))
            spool.append(records, rx.spool_dir)
        except (spool.SpoolError, OSError) as exc:
            logger.error("cannot write the spool %s: %s", rx.spool_dir, exc)
            raise _HTTPError(503, f"cannot write the spool: {exc}") from None

    # -- endpoints ------------------------------------------------------------------------

    def _traces(self) -> None:
        rx = self.server.receiver
        content_type = self.headers.get("Content-Type")
        encoding = self.headers.get("Content-Encoding")
        if media_type(content_type) not in TRACE_MEDIA_TYPES:
            raise _HTTPError(
                415,
                f"Content-Type {content_type!r} is not supported on {TRACES_PATH}: "
                "send application/x-protobuf or application/json",
                close=True,
            )
        body = self._read_body()
        records = self._decoded(
            lambda: decode_traces(
                body,
                content_type,
                encoding,
                limit=get_settings().max_value_chars,
                max_bytes=rx.max_body_bytes,
            )
        )
        if len(records) > rx.max_records:
            raise _HTTPError(
                413,
                f"request holds {len(records)} spans; the limit is {rx.max_records} "
                "(GENOPT_MAX_RECORDS_PER_REQUEST): send smaller batches",
            )
        self._append(records)
        rx._count("spans", len(records))
        payload, ctype = response_body(content_type)
        self._reply(200, payload, ctype)

    def _feedback(self) -> None:
        rx = self.server.receiver
        content_type = self.headers.get("Content-Type")
        if media_type(content_type) != JSON:
            raise _HTTPError(
                415,
                f"Content-Type {content_type!r} is not supported on {FEEDBACK_PATH}: "
                "send application/json",
                close=True,
            )
        body = self._read_body()
        encoding = self.headers.get("Content-Encoding")
        ignored: Counter[str] = Counter()
        records = self._decoded(
            lambda: feedback_records(
                decompress(body, encoding, rx.max_body_bytes),
                max_records=rx.max_records,
                ignored=ignored,
            )
        )
        rows = []
        if ignored:
            rows.append(
                row_record(
                    "receiver_ignored_fields",
                    {
                        "request_id": uuid.uuid4().hex,
                        "created_at": utcnow().isoformat(),
                        "client": self.client_address[0],
                        "records": len(records),
                        "ignored": sum(ignored.values()),
                        "fields": dict(ignored),
                    },
                )
            )
            logger.info(
                "feedback from %s: ignored body values %s (derived at ingest instead)",
                self.client_address[0],
                dict(ignored),
            )
        self._append(records + rows)  # one write: the records and their report together
        rx._count("feedback", len(records))
        rx._count("ignored_fields", sum(ignored.values()))
        self._reply(200, orjson.dumps({"accepted": len(records)}), JSON)

    def _health(self) -> None:
        rx = self.server.receiver
        self._reply(200, orjson.dumps(rx.health() if self._auth_ok else {"status": "ok"}), JSON)

    # -- replies --------------------------------------------------------------------------

    def _reply(
        self,
        status: int,
        payload: bytes,
        content_type: str,
        close: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def _reply_error(self, exc: _HTTPError) -> None:
        if exc.status >= 500:
            logger.warning("%s %s -> %d: %s", self.command, self.path, exc.status, exc.message)
        else:
            logger.info("%s %s -> %d: %s", self.command, self.path, exc.status, exc.message)
        try:
            self._reply(
                exc.status,
                orjson.dumps({"error": exc.message}),
                JSON,
                close=exc.close,
                headers=exc.headers,
            )
        except OSError:
            self.close_connection = True


class Receiver:
    """The OTLP/HTTP receiver with its background ingest loop.

    Args:
        host: Address to bind (default ``GENOPT_SERVE_HOST``, 127.0.0.1).
        port: Port to bind (default ``GENOPT_SERVE_PORT``); 0 picks a free port.
        warehouse: The DuckDB file fed (default ``GENOPT_WAREHOUSE``).
        spool_dir: The spool it appends to and ingests (default
            ``get_settings().spool_dir_for(warehouse)``).
        ingest_interval: Seconds between ingests (default ``GENOPT_INGEST_INTERVAL``).
        on_ingest: Called with each :class:`IngestResult` of the background loop
            (``serve`` prints them).
        token: The bearer token every request must carry (default: ``token_file``,
            else ``GENOPT_SERVE_TOKEN``, else ``GENOPT_SERVE_TOKEN_FILE``; see
            :func:`resolve_token`). None of them: no authentication.
        token_file: A file whose first line is the token.
        tls_cert: PEM certificate chain: serve HTTPS (default ``GENOPT_SERVE_TLS_CERT``).
        tls_key: Its PEM private key (default ``GENOPT_SERVE_TLS_KEY``).
        insecure_no_auth: Allow binding a non-loopback address without a token.

    Raises:
        ReceiverConfigError: A non-loopback ``host`` without a token (and without
            ``insecure_no_auth``), a certificate without a key or the reverse, or a
            token that cannot be read.

    Example:
        >>> import tempfile, pathlib
        >>> rx = Receiver(port=0, warehouse=pathlib.Path(tempfile.mkdtemp()) / "w.duckdb")
        >>> rx.start().port > 0
        True
        >>> rx.stop().records
        0
    """

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        warehouse: Path | None = None,
        ingest_interval: float | None = None,
        *,
        on_ingest: Callable[[IngestResult], None] | None = None,
        spool_dir: Path | None = None,
        token: str | None = None,
        token_file: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        insecure_no_auth: bool = False,
    ) -> None:
        settings = get_settings()
        self.host = settings.serve_host if host is None else host
        self._token = resolve_token(token, token_file, settings)
        if self._token is None and not is_loopback(self.host) and not insecure_no_auth:
            shown = self.host or "all interfaces"
            raise ReceiverConfigError(
                f"refusing to bind {shown} without a token: anyone who can reach it could "
                "write spans and feedback, and so decide a canary. Give --token-file PATH "
                "(or GENOPT_SERVE_TOKEN), bind 127.0.0.1, or pass --insecure-no-auth if "
                "the network in front of it authenticates"
            )
        tls_cert = tls_cert if tls_cert is not None else settings.serve_tls_cert
        tls_key = tls_key if tls_key is not None else settings.serve_tls_key
        if (tls_cert is None) != (tls_key is None):
            raise ReceiverConfigError(
                "TLS needs both a certificate and its key (--tls-cert and --tls-key, or "
                "GENOPT_SERVE_TLS_CERT and GENOPT_SERVE_TLS_KEY)"
            )
        self._tls: ssl.SSLContext | None = None
        if tls_cert is not None and tls_key is not None:
            self._tls = _tls_context(Path(tls_cert), Path(tls_key))
        self._port = settings.serve_port if port is None else int(port)
        self.warehouse = (
            Path(warehouse).expanduser().resolve() if warehouse else settings.warehouse_path
        )
        self.spool_dir = (
            Path(spool_dir).expanduser().resolve()
            if spool_dir
            else settings.spool_dir_for(self.warehouse)
        )
        self.ingest_interval = (
            settings.ingest_interval if ingest_interval is None else float(ingest_interval)
        )
        if self.ingest_interval <= 0:
            raise ValueError(f"ingest_interval must be > 0, got {self.ingest_interval}")
        self.max_body_bytes = settings.max_body_bytes
        self.max_records = settings.max_records_per_request
        self.on_ingest = on_ingest
        self.last_ingest: IngestResult | None = None
        self.last_ingest_error: str | None = None
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._lock = threading.Condition()
        self._inflight = 0
        self._closing = False
        self._stopped = False
        self._conns: set[socket.socket] = set()
        self._counts = {
            "spans": 0,
            "feedback": 0,
            "rejected_requests": 0,
            "unauthorized_requests": 0,
            "ignored_fields": 0,
        }

    # -- properties -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the configured one before :meth:`start`)."""
        return self._server.server_address[1] if self._server else self._port

    @property
    def authenticated(self) -> bool:
        """Whether requests must carry the bearer token."""
        return self._token is not None

    @property
    def tls(self) -> bool:
        """Whether the receiver speaks HTTPS."""
        return self._tls is not None

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. ``http://127.0.0.1:4318`` (``https`` with TLS)."""
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def stats(self) -> dict[str, int]:
        """Counters: spans and feedback accepted, requests rejected (of them, those without
        a valid token), and feedback field values a body sent that were ignored."""
        with self._lock:
            return dict(self._counts)

    def health(self) -> dict[str, Any]:
        """What ``GET /healthz`` answers."""
        last = self.last_ingest
        return {
            "status": "ok",
            "warehouse": str(self.warehouse),
            "spool": str(self.spool_dir),
            "auth": self.authenticated,
            "tls": self.tls,
            **self.stats,
            "last_ingest": None if last is None else str(last),
            "last_ingest_error": self.last_ingest_error,
        }

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Receiver:
        """Bind, serve in a background thread and start the ingest loop.

        Returns:
            self, so ``rx = Receiver(port=0).start()`` works.

        Raises:
            OSError: The address cannot be bound (e.g. the port is in use).
        """
        if self._server is not None:
            raise RuntimeError("receiver already started")
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._server = _Server((self.host, self._port), self)
        if self._tls is not None:  # the handshake runs on each connection's thread
            self._server.socket = self._tls.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="genopt-receiver",
            daemon=True,
        )
        ingest_thread = threading.Thread(
            target=self._ingest_loop, name="genopt-receiver-ingest", daemon=True
        )
        self._threads = [serve_thread, ingest_thread]
        for t in self._threads:
            t.start()
        logger.info("receiver listening on %s, spool %s", self.url, self.spool_dir)
        return self

    def stop(self, timeout: float = 30.0) -> IngestResult | None:
        """Stop serving, seal the spool and run one final ingest.

        Requests in progress finish first (up to ``timeout`` seconds); requests
        arriving meanwhile get 503, which OTLP exporters retry.

        Returns:
            The final ingest's result, or None if the warehouse stayed busy (the
            sealed spool is then loaded by the next ``genopt ingest``).
        """
        if self._server is None or self._stopped:
            return None
        self._stopped = True
        with self._lock:
            self._closing = True
        self._server.shutdown()  # no new connections
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._inflight and time.monotonic() < deadline:
                self._lock.wait(0.1)
            idle = list(self._conns)
        for conn in idle:  # idle keep-alive connections: wake their threads up
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._stop.set()
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        spool.close_all()
        result = self._ingest_safely()
        logger.info("receiver stopped: %s", self.stats)
        return result

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- ingest ---------------------------------------------------------------------------

    def ingest_now(self) -> IngestResult:
        """Load the spool into the warehouse now (what the background loop does).

        Raises:
            WarehouseBusyError: The warehouse stayed locked past ``GENOPT_LOCK_TIMEOUT``.
        """
        result = Ingester(self.warehouse, self.spool_dir).ingest()
        self.last_ingest = result
        self.last_ingest_error = None
        return result

    def _ingest_safely(self) -> IngestResult | None:
        try:
            return self.ingest_now()
        except WarehouseBusyError as exc:
            self.last_ingest_error = str(exc)
            logger.warning("ingest skipped, warehouse busy (the spool keeps the data): %s", exc)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad ingest
            self.last_ingest_error = f"{type(exc).__name__}: {exc}"
            logger.exception("ingest failed (the spool keeps the data)")
        return None

    def _ingest_loop(self) -> None:
        while True:
            result = self._ingest_safely()
            if result is not None and self.on_ingest is not None:
                try:
                    self.on_ingest(result)
                except Exception:  # noqa: BLE001 - a reporting callback must not stop ingest
                    logger.exception("on_ingest callback failed")
            if self._stop.wait(self.ingest_interval):
                return

    # -- bookkeeping used by the handler ----------------------------------------------------

    def _begin_request(self) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._inflight += 1
            return True

    def _end_request(self) -> None:
        with self._lock:
            self._inflight = max(0, self._inflight - 1)
            self._lock.notify_all()

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)


def _tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later) with this certificate and key."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(Path(cert).expanduser()), str(Path(key).expanduser()))
    except (OSError, ssl.SSLError) as exc:
        raise ReceiverConfigError(
            f"cannot load the TLS certificate {cert} with key {key}: {exc}"
        ) from None
    return ctx


def serve(
    host: str | None = None,
    port: int | None = None,
    warehouse: Path | None = None,
    ingest_interval: float | None = None,
    *,
    spool_dir: Path | None = None,
    token: str | None = None,
    token_file: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    insecure_no_auth: bool = False,
) -> IngestResult | None:
    """Run the receiver in the foreground until SIGINT or SIGTERM.

    Prints one ``listening on ...`` line, then one line per ingest that loaded
    something, then the final ingest. Must be called from the main thread
    (it installs signal handlers, and restores the previous ones on return).

    Args:
        host: Address to bind (default ``GENOPT_SERVE_HOST``).
        port: Port (default ``GENOPT_SERVE_PORT``; 0 picks a free one).
        warehouse: The DuckDB file (default ``GENOPT_WAREHOUSE``).
        ingest_interval: Seconds between ingests (default ``GENOPT_INGEST_INTERVAL``).
        spool_dir: The spool (default: the warehouse's, as in :class:`Receiver`).
        token, token_file, tls_cert, tls_key, insecure_no_auth: As in :class:`Receiver`.

    Returns:
        The final ingest's result (None if the warehouse stayed busy).

    Raises:
        OSError: The address cannot be bound.
        ReceiverConfigError: See :class:`Receiver`.
    """

    def report(result: IngestResult) -> None:
        if result.records or result.rejected:
            print(f"{time.strftime('%H:%M:%S')} {result}", flush=True)

    rx = Receiver(
        host,
        port,
        warehouse,
        ingest_interval,
        on_ingest=report,
        spool_dir=spool_dir,
        token=token,
        token_file=token_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
        insecure_no_auth=insecure_no_auth,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rx.start()
        bound = rx.url
        if rx.host in ("", "0.0.0.0", "::"):  # say what was bound, not the loopback alias
            scheme = "https" if rx.tls else "http"
            bound = f"{scheme}://{'[::]' if rx.host == '::' else '0.0.0.0'}:{rx.port}"
        auth = (
            "bearer token required"
            if rx.authenticated
            else "no token: this machine only"
            if is_loopback(rx.host)
            else "NO authentication (--insecure-no-auth)"
        )
        print(
            f"genopt receiver listening on {bound} (OTLP/HTTP {TRACES_PATH}, feedback "
            f"{FEEDBACK_PATH}, {HEALTH_PATH}; {auth}); spool {rx.spool_dir} -> warehouse "
            f"{rx.warehouse}, ingest every {rx.ingest_interval:g}s; Ctrl-C to stop",
            flush=True,
        )
        if not rx.authenticated and not is_loopback(rx.host):
            logger.warning(
                "the receiver on %s takes requests without a token (--insecure-no-auth)", bound
            )
        while not stop.wait(0.5):
            pass
        print("stopping: sealing the spool and running a final ingest ...", flush=True)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        result = rx.stop()
    stats = rx.stats
    print(
        f"stopped after {stats['spans']} spans, {stats['feedback']} feedback, "
        f"{stats['rejected_requests']} rejected requests ({stats['unauthorized_requests']} "
        f"without a valid token), {stats['ignored_fields']} ignored feedback field values; final "
        f"{result if result is not None else 'ingest skipped: warehouse busy'}",
        flush=True,
    )
    return result

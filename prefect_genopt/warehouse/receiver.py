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
* ``GET /healthz``: 200 with the spool directory, the warehouse path and counters.

Errors are JSON ``{"error": "..."}``: 400 malformed body, 404 unknown path,
405 wrong method, 411 no length, 413 body over ``GENOPT_MAX_BODY_BYTES``
(checked before the body is read, and again after decompression), 415
unsupported Content-Type or Content-Encoding, 503 when the spool cannot be
written or the receiver is stopping (OTLP clients retry 503).

Example:
    >>> import tempfile, pathlib, urllib.request
    >>> wh = pathlib.Path(tempfile.mkdtemp()) / "w.duckdb"
    >>> with Receiver(port=0, warehouse=wh) as rx:
    ...     urllib.request.urlopen(rx.url + "/healthz").status
    200
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from prefect_genopt import spool
from prefect_genopt.records import FeedbackError, validate_record
from prefect_genopt.settings import get_settings
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

__all__ = ["Receiver", "serve", "feedback_records", "TRACES_PATH", "FEEDBACK_PATH", "HEALTH_PATH"]

logger = logging.getLogger("prefect_genopt.receiver")

TRACES_PATH = "/v1/traces"
FEEDBACK_PATH = "/v1/genopt/feedback"
HEALTH_PATH = "/healthz"


class _HTTPError(Exception):
    """An error reply: status code and message (sent as JSON)."""

    def __init__(self, status: int, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


def feedback_records(body: bytes) -> list[dict[str, Any]]:
    """Validate a feedback request body: one record or a JSON list of them.

    Each record is what :func:`prefect_genopt.feedback.build_record` returns:
    ``k == "feedback"``, non-empty ``feedback_id``, ``run_id`` (a UUID) and
    ``kpi``, a finite ``value`` or null (then a ``comment``), and only known
    fields of the right types. Comments are redacted again here.

    Raises:
        FeedbackError: The body or one record is invalid (then none is accepted).

    Example:
        >>> recs = feedback_records(b'{"k": "feedback", "feedback_id": "f1", '
        ...     b'"run_id": "8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10", "kpi": "accuracy", "value": 1}')
        >>> recs[0]["kpi"], recs[0]["value"]
        ('accuracy', 1.0)
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # Python's json writes NaN/Infinity: parse them to refuse them by name below
            doc = json.loads(body)
        except ValueError:
            raise FeedbackError(f"body is not valid JSON: {exc}") from None
    if isinstance(doc, list):
        return [validate_record(obj, f"record [{i}]") for i, obj in enumerate(doc)]
    return [validate_record(doc, "record")]


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
        # Refuse an oversized body before the client sends it.
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
        except Exception as exc:  # noqa: BLE001 - a bug must not kill the server thread
            logger.exception("receiver error on %s %s", method, self.path)
            rx._count("rejected_requests")
            self._reply_error(_HTTPError(500, f"internal error: {exc}", close=True))
        finally:
            rx._end_request()

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
        records = self._decoded(
            lambda: feedback_records(decompress(body, encoding, rx.max_body_bytes))
        )
        self._append(records)
        rx._count("feedback", len(records))
        self._reply(200, orjson.dumps({"accepted": len(records)}), JSON)

    def _health(self) -> None:
        self._reply(200, orjson.dumps(self.server.receiver.health()), JSON)

    # -- replies --------------------------------------------------------------------------

    def _reply(self, status: int, payload: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
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
            self._reply(exc.status, orjson.dumps({"error": exc.message}), JSON, close=exc.close)
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
    ) -> None:
        settings = get_settings()
        self.host = settings.serve_host if host is None else host
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
        self._counts = {"spans": 0, "feedback": 0, "rejected_requests": 0}

    # -- properties -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound port (the configured one before :meth:`start`)."""
        return self._server.server_address[1] if self._server else self._port

    @property
    def url(self) -> str:
        """The base URL clients use, e.g. ``http://127.0.0.1:4318``."""
        host = self.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def stats(self) -> dict[str, int]:
        """Counters: spans and feedback accepted, requests rejected."""
        with self._lock:
            return dict(self._counts)

    def health(self) -> dict[str, Any]:
        """What ``GET /healthz`` answers."""
        last = self.last_ingest
        return {
            "status": "ok",
            "warehouse": str(self.warehouse),
            "spool": str(self.spool_dir),
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


def serve(
    host: str | None = None,
    port: int | None = None,
    warehouse: Path | None = None,
    ingest_interval: float | None = None,
    *,
    spool_dir: Path | None = None,
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

    Returns:
        The final ingest's result (None if the warehouse stayed busy).

    Raises:
        OSError: The address cannot be bound.
    """

    def report(result: IngestResult) -> None:
        if result.records or result.rejected:
            print(f"{time.strftime('%H:%M:%S')} {result}", flush=True)

    rx = Receiver(host, port, warehouse, ingest_interval, on_ingest=report, spool_dir=spool_dir)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        rx.start()
        bound = rx.url
        if rx.host in ("", "0.0.0.0", "::"):  # say what was bound, not the loopback alias
            bound = f"http://{'[::]' if rx.host == '::' else '0.0.0.0'}:{rx.port}"
        print(
            f"genopt receiver listening on {bound} (OTLP/HTTP {TRACES_PATH}, feedback "
            f"{FEEDBACK_PATH}, {HEALTH_PATH}); spool {rx.spool_dir} -> warehouse "
            f"{rx.warehouse}, ingest every {rx.ingest_interval:g}s; Ctrl-C to stop",
            flush=True,
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
        f"{stats['rejected_requests']} rejected requests; final "
        f"{result if result is not None else 'ingest skipped: warehouse busy'}",
        flush=True,
    )
    return result

"""The OTLP/HTTP receiver: the standard OTLP exporter in another process, feedback,
malformed and oversized requests, readers while it runs, ``serve`` under SIGTERM,
and the Collector config that points at it.
"""

from __future__ import annotations

import gzip
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import prefect_genopt as genopt
from prefect_genopt import spool
from prefect_genopt.feedback import build_record, deliver
from prefect_genopt.warehouse.receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

EXPORTER_CHILD = r"""
import sys
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

url, run_id, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Half the spans through an uncompressed exporter, half through a gzip one.
for compression in (Compression.NoCompression, Compression.Gzip):
    provider = TracerProvider(resource=Resource.create({"service.name": "remote-worker"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=url + "/v1/traces", compression=compression),
            max_queue_size=4096,
            max_export_batch_size=64,
        )
    )
    tracer = provider.get_tracer("child")
    with tracer.start_as_current_span("flow", attributes={"genopt.run_id": run_id}):
        for i in range(n // 2 - 1):
            attrs = {"genopt.run_id": run_id, "i": i, "compression": compression.value}
            if i == 7:
                attrs["auth"] = "Authorization: Bearer abcdef123456"
            with tracer.start_as_current_span(f"step-{i}", attributes=attrs):
                pass
    assert provider.force_flush(10_000), "force_flush timed out"
    provider.shutdown()
print("sent")
"""


def wait_until(check: Callable[[], bool], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request with exactly these headers; returns (status, headers, body)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def sdk_spans(n: int, run_id: str) -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    for i in range(n):
        with tracer.start_as_current_span(f"s{i}", attributes={"genopt.run_id": run_id}):
            pass
    return list(exporter.get_finished_spans())


def spans_body(n: int, run_id: str) -> bytes:
    return encode_spans(sdk_spans(n, run_id)).SerializeToString()


def spool_lines(spool_dir: Path) -> int:
    return sum(f.path.read_bytes().count(b"\n") for f in spool.list_files(spool_dir))


@pytest.fixture
def warehouse(warehouse_path: Path) -> Path:
    """The shared per-test warehouse (tests/conftest.py)."""
    return warehouse_path


@pytest.fixture
def receiver(warehouse: Path) -> Iterator[Receiver]:
    rx = Receiver(port=0, warehouse=warehouse, ingest_interval=0.2).start()
    try:
        yield rx
    finally:
        rx.stop()


def test_standard_exporter_in_another_process(receiver: Receiver, warehouse: Path) -> None:
    run_id = str(uuid.uuid4())
    child = subprocess.run(
        [sys.executable, "-c", EXPORTER_CHILD, receiver.url, run_id, "200"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0 and "sent" in child.stdout, child.stderr[-3000:]
    assert "Failed to export" not in child.stderr, child.stderr[-3000:]
    final = receiver.stop()
    assert final is not None

    wh = genopt.Warehouse(warehouse, ingest=False)
    [row] = wh.sql(
        "SELECT count(*) AS n, count(DISTINCT span_id) AS ids, count(DISTINCT trace_id) AS traces"
        " FROM spans WHERE source = 'otlp' AND run_id = ?",
        [run_id],
    )
    assert row == {"n": 200, "ids": 200, "traces": 2}
    assert wh.sql("SELECT count(*) AS n FROM spans")[0]["n"] == 200
    [step7] = wh.sql(
        """SELECT attributes->>'$.auth' AS auth, span_kind, status, resource->>'$."service.name"'
                  AS service, parent_span_id IS NOT NULL AS has_parent, host
           FROM spans WHERE name = 'step-7' AND attributes->>'$.compression' = 'gzip'"""
    )
    assert "[REDACTED]" in step7.pop("auth")
    assert step7 == {
        "span_kind": "INTERNAL",
        "status": "UNSET",
        "service": "remote-worker",
        "has_parent": True,
        "host": None,
    }
    assert not wh.sql("SELECT span_id FROM spans WHERE attributes::VARCHAR LIKE '%abcdef123456%'")
    orphans = wh.sql(
        """SELECT count(*) AS n FROM spans s WHERE parent_span_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM spans p WHERE p.span_id = s.parent_span_id)"""
    )
    assert orphans == [{"n": 0}]
    assert spool.list_files(receiver.spool_dir) == []  # sealed, loaded, removed
    assert receiver.stats["spans"] == 200


def test_reads_keep_working_while_the_receiver_ingests(receiver: Receiver, warehouse: Path) -> None:
    run_id = str(uuid.uuid4())
    wait_until(warehouse.exists)  # the ingest loop's first pass creates it
    wh = genopt.Warehouse(warehouse, ingest=False)
    seen: list[int] = []
    for i in range(15):
        status, _, _ = request(
            receiver.url, "POST", "/v1/traces", spans_body(20, run_id), {"Content-Type": PROTOBUF}
        )
        assert status == 200
        [row] = wh.sql("SELECT count(*) AS n FROM spans WHERE run_id = ?", [run_id])
        seen.append(row["n"])
        time.sleep(0.05 * (i % 3))
    assert seen == sorted(seen)  # each read saw a consistent, growing table

    def all_loaded() -> bool:
        return wh.sql("SELECT count(*) AS n FROM spans WHERE run_id = ?", [run_id])[0]["n"] == 300

    wait_until(all_loaded)  # loaded by the background loop, while still running
    assert receiver.last_ingest is not None and receiver.last_ingest_error is None


def test_feedback_is_spooled_and_waits_for_its_run(
    receiver: Receiver, warehouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = str(uuid.uuid4())
    one = build_record("accuracy", 0.75, run_id=run_id, source="judge", verify=False)
    two = [
        build_record("csat", 4, run_id=run_id, source="human", verify=False),
        build_record("review", comment="slow; token: abcdef123456", run_id=run_id, verify=False),
    ]
    for payload, accepted in ((one, 1), (two, 2)):
        status, headers, body = request(
            receiver.url,
            "POST",
            "/v1/genopt/feedback",
            orjson.dumps(payload),
            {"Content-Type": JSON},
        )
        assert (status, orjson.loads(body)) == (200, {"accepted": accepted})
        assert headers["content-type"] == JSON
    # gzip works here too
    status, _, body = request(
        receiver.url,
        "POST",
        "/v1/genopt/feedback",
        gzip.compress(orjson.dumps(one)),  # same feedback id: stored once
        {"Content-Type": JSON, "Content-Encoding": "gzip"},
    )
    assert (status, orjson.loads(body)) == (200, {"accepted": 1})

    # The library's own client path: feedback.deliver() in OTLP mode posts here.
    monkeypatch.setenv("GENOPT_OTLP_ENDPOINT", receiver.url)
    deliver(build_record("latency", 1.5, run_id=run_id, source="sdk", verify=False))
    assert receiver.stats["feedback"] == 5

    final = receiver.stop()
    assert final is not None and final.pending == 4
    wh = genopt.Warehouse(warehouse, ingest=False)
    rows = wh.sql(
        "SELECT kpi, value, comment, source FROM pending_feedback WHERE run_id = ? ORDER BY kpi",
        [run_id],
    )
    assert rows == [
        {"kpi": "accuracy", "value": 0.75, "comment": None, "source": "judge"},
        {"kpi": "csat", "value": 4.0, "comment": None, "source": "human"},
        {"kpi": "latency", "value": 1.5, "comment": None, "source": "sdk"},
        {"kpi": "review", "value": None, "comment": "slow; token: [REDACTED]", "source": "code"},
    ]
    assert wh.sql("SELECT count(*) AS n FROM feedback") == [{"n": 0}]


GOOD_FEEDBACK = {
    "k": "feedback",
    "feedback_id": "f" * 32,
    "run_id": "8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10",
    "kpi": "accuracy",
    "value": 1.0,
}
BAD_SPAN_ID = orjson.dumps(
    {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5b8efff798038103d269b633813fc60c",
                                "spanId": "eee19b7ec3c1",
                                "startTimeUnixNano": "1",
                            }
                        ]
                    }
                ]
            }
        ]
    }
)


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "message"),
    [
        ("POST", "/v1/traces", {"Content-Type": PROTOBUF}, b"\xff\xfegarbage", 400, "protobuf"),
        ("POST", "/v1/traces", {"Content-Type": JSON}, b'{"resourceSpans": [', 400, "JSON"),
        ("POST", "/v1/traces", {"Content-Type": JSON}, BAD_SPAN_ID, 400, "spanId 'eee19b7ec3c1'"),
        (
            "POST",
            "/v1/traces",
            {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"},
            b"plain bytes",
            400,
            "not valid gzip",
        ),
        ("POST", "/v1/traces", {"Content-Type": "text/plain"}, b"hi", 415, "text/plain"),
        ("POST", "/v1/traces", {}, b"hi", 415, "not supported"),
        (
            "POST",
            "/v1/traces",
            {"Content-Type": PROTOBUF, "Content-Encoding": "br"},
            b"x",
            415,
            "Content-Encoding 'br'",
        ),
        ("POST", "/v1/logs", {"Content-Type": PROTOBUF}, b"", 404, "no such path"),
        ("GET", "/v1/traces", {}, None, 405, "accepts POST only"),
        (
            "POST",
            "/v1/genopt/feedback",
            {"Content-Type": JSON},
            orjson.dumps({**GOOD_FEEDBACK, "k": "span"}),
            400,
            "'k' must be \"feedback\"",
        ),
        (
            "POST",
            "/v1/genopt/feedback",
            {"Content-Type": JSON},
            orjson.dumps([GOOD_FEEDBACK, {**GOOD_FEEDBACK, "kpi": ""}]),
            400,
            "record [1]: 'kpi' is required",
        ),
        (
            "POST",
            "/v1/genopt/feedback",
            {"Content-Type": JSON},
            json.dumps({**GOOD_FEEDBACK, "value": math.nan}).encode(),  # as Python writes NaN
            400,
            "feedback value must be a finite number, got nan",
        ),
        (
            "POST",
            "/v1/genopt/feedback",
            {"Content-Type": JSON},
            orjson.dumps({**GOOD_FEEDBACK, "value": "high"}),
            400,
            "must be a number or null",
        ),
        (
            "POST",
            "/v1/genopt/feedback",
            {"Content-Type": JSON},
            orjson.dumps({**GOOD_FEEDBACK, "run_id": "run-42"}),
            400,
            "not a Prefect flow-run id",
        ),
        (
            "POST",
            "/v1/genopt/feedback",
            {"Content-Type": JSON},
            orjson.dumps({**GOOD_FEEDBACK, "trace_id": "x"}),
            400,
            "unknown feedback field(s) trace_id",
        ),
        (
            "POST",
            "/v1/genopt/feedback",
            {"Content-Type": "application/x-www-form-urlencoded"},
            b"kpi=accuracy",
            415,
            "send application/json",
        ),
    ],
)
def test_malformed_requests_get_a_clear_error_and_spool_nothing(
    receiver: Receiver,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
    message: str,
) -> None:
    got, reply_headers, reply = request(receiver.url, method, path, body, headers)
    assert got == status
    assert reply_headers["content-type"] == JSON
    assert message in orjson.loads(reply)["error"]
    assert spool_lines(receiver.spool_dir) == 0
    assert receiver.stats == {
        "spans": 0,
        "feedback": 0,
        "rejected_requests": 1,
        "unauthorized_requests": 0,
        "ignored_fields": 0,
    }


def test_oversized_bodies_get_413_before_they_are_read(
    warehouse: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_MAX_BODY_BYTES", "2048")
    with Receiver(port=0, warehouse=warehouse, ingest_interval=5) as rx:
        host, port = rx.url.removeprefix("http://").rsplit(":", 1)
        # Announce 1 GB and send nothing: the reply must not wait for the body.
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.putrequest("POST", "/v1/traces")
        conn.putheader("Content-Type", PROTOBUF)
        conn.putheader("Content-Length", str(10**9))
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == 413
        assert "exceeds the limit of 2048" in orjson.loads(resp.read())["error"]
        conn.close()

        # The same with Expect: 100-continue (curl sends it for large bodies).
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.putrequest("POST", "/v1/genopt/feedback")
        conn.putheader("Content-Type", JSON)
        conn.putheader("Content-Length", "4096")
        conn.putheader("Expect", "100-continue")
        conn.endheaders()
        assert conn.getresponse().status == 413
        conn.close()

        # A small gzip body that expands past the limit.
        bomb = gzip.compress(b"\0" * 100_000)
        assert len(bomb) < 2048
        status, _, reply = request(
            rx.url,
            "POST",
            "/v1/traces",
            bomb,
            {"Content-Type": PROTOBUF, "Content-Encoding": "gzip"},
        )
        assert status == 413 and "decompresses" in orjson.loads(reply)["error"]

        # A chunked body past the limit.
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request(
            "POST",
            "/v1/traces",
            body=iter([b"x" * 1500, b"x" * 1500]),
            headers={"Content-Type": PROTOBUF, "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        assert conn.getresponse().status == 413
        conn.close()

        # Under the limit, chunked, is fine.
        small = spans_body(2, str(uuid.uuid4()))
        assert len(small) < 2048
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request(
            "POST",
            "/v1/traces",
            body=iter([small[:100], small[100:]]),
            headers={"Content-Type": PROTOBUF, "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        assert conn.getresponse().status == 200
        conn.close()
        assert spool_lines(rx.spool_dir) == 2
        assert rx.stats == {
            "spans": 2,
            "feedback": 0,
            "rejected_requests": 4,
            "unauthorized_requests": 0,
            "ignored_fields": 0,
        }


def test_replies_healthz_and_keep_alive(receiver: Receiver, warehouse: Path) -> None:
    host, port = receiver.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    # protobuf in, protobuf out; JSON in, JSON out; all on one keep-alive connection,
    # including after a 400 whose body was read.
    conn.request("POST", "/v1/traces", spans_body(3, "r"), {"Content-Type": PROTOBUF})
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Content-Type")) == (200, PROTOBUF)
    assert ExportTraceServiceResponse.FromString(resp.read()) == ExportTraceServiceResponse()
    conn.request("POST", "/v1/traces", b"{}", {"Content-Type": JSON})
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Content-Type"), resp.read()) == (200, JSON, b"{}")
    conn.request("POST", "/v1/traces", b"{", {"Content-Type": JSON})
    resp = conn.getresponse()
    assert resp.status == 400 and resp.read()
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    health = orjson.loads(resp.read())
    conn.close()
    assert resp.status == 200
    assert health["warehouse"] == str(warehouse.resolve())
    assert health["spool"] == str(receiver.spool_dir)
    assert receiver.spool_dir == warehouse.resolve().with_name(warehouse.name + ".spool")
    assert (health["spans"], health["rejected_requests"]) == (3, 1)


SERVE_CHILD = """
import sys
from pathlib import Path
from prefect_genopt.warehouse.receiver import serve
serve(host="127.0.0.1", port=0, warehouse=Path(sys.argv[1]), ingest_interval=0.2)
"""


def test_serve_runs_until_sigterm(warehouse: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_CHILD, str(warehouse)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in first, first + proc.stderr.read()
        url = first.split("listening on ", 1)[1].split()[0]
        run_id = str(uuid.uuid4())
        status, _, _ = request(
            url, "POST", "/v1/traces", spans_body(5, run_id), {"Content-Type": PROTOBUF}
        )
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "stopped after 5 spans, 0 feedback, 0 rejected requests" in out, out + err
    wh = genopt.Warehouse(warehouse, ingest=False)
    assert wh.sql("SELECT count(*) AS n FROM spans WHERE run_id = ?", [run_id]) == [{"n": 5}]


#: Keys the Collector documents for the components collector.yaml uses, copied from the
#: components' config.schema.yaml in open-telemetry/opentelemetry-collector (otlpreceiver with
#: confighttp/configgrpc/confignet server configs, internal/memorylimiter, batchprocessor,
#: otlphttpexporter with confighttp client config, configretry and exporterhelper queuebatch).
#: No collector binary can run here; this catches misspelt or invented keys.
_SERVER = {
    "endpoint",
    "transport",
    "dialer",
    "tls",
    "auth",
    "include_metadata",
    "keepalive",
    "middlewares",
    "read_buffer_size",
    "write_buffer_size",
}
DOCUMENTED: dict[str, set[str]] = {
    "receivers.otlp": {"protocols"},
    "receivers.otlp.protocols": {"grpc", "http"},
    "receivers.otlp.protocols.grpc": _SERVER | {"max_concurrent_streams", "max_recv_msg_size_mib"},
    "receivers.otlp.protocols.http": _SERVER
    | {
        "compression_algorithms",
        "cors",
        "max_request_body_size",
        "read_header_timeout",
        "read_timeout",
        "response_headers",
        "write_timeout",
        "traces_url_path",
        "metrics_url_path",
        "logs_url_path",
    },
    "processors.memory_limiter": {
        "check_interval",
        "limit_mib",
        "limit_percentage",
        "spike_limit_mib",
        "spike_limit_percentage",
        "min_gc_interval_when_soft_limited",
        "min_gc_interval_when_hard_limited",
        "max_gc_interval_when_soft_limited",
        "max_gc_interval_when_hard_limited",
    },
    "processors.batch": {
        "send_batch_size",
        "send_batch_max_size",
        "timeout",
        "metadata_keys",
        "metadata_cardinality_limit",
    },
    "exporters.otlphttp/genopt": {
        "encoding",
        "traces_endpoint",
        "metrics_endpoint",
        "logs_endpoint",
        "profiles_endpoint",
        "retry_on_failure",
        "sending_queue",
        "auth",
        "compression",
        "compression_params",
        "cookies",
        "endpoint",
        "force_attempt_http2",
        "headers",
        "http2_ping_timeout",
        "http2_read_idle_timeout",
        "keepalive",
        "max_conns_per_host",
        "middlewares",
        "proxy_url",
        "read_buffer_size",
        "timeout",
        "tls",
        "write_buffer_size",
    },
    "exporters.otlphttp/genopt.retry_on_failure": {
        "enabled",
        "initial_interval",
        "max_elapsed_time",
        "max_interval",
        "max_retries",
        "multiplier",
        "randomization_factor",
    },
    "exporters.otlphttp/genopt.sending_queue": {
        "batch",
        "block_on_overflow",
        "enabled",
        "num_consumers",
        "queue_size",
        "sizer",
        "storage",
        "wait_for_result",
    },
    "service": {"pipelines", "extensions", "telemetry"},
    "service.pipelines.traces": {"receivers", "processors", "exporters"},
}


def _collector() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "otel" / "collector.yaml").read_text())


def test_collector_config_is_consistent_and_speaks_what_the_receiver_accepts() -> None:
    cfg = _collector()
    assert set(cfg) <= {
        "receivers",
        "processors",
        "exporters",
        "extensions",
        "connectors",
        "service",
    }
    pipeline = cfg["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        for name in pipeline[kind]:
            assert name in cfg[kind], f"pipeline uses undefined {kind[:-1]} {name}"
    # memory_limiter first, batch after it (the collector's documented order)
    assert pipeline["processors"][0] == "memory_limiter"
    assert "batch" in pipeline["processors"]
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    [exporter] = [cfg["exporters"][n] for n in pipeline["exporters"]]
    assert pipeline["exporters"][0].split("/")[0] == "otlphttp"
    assert exporter["endpoint"].startswith("http://") and exporter["endpoint"].endswith(":4319")
    assert exporter.get("encoding", "proto") in ("proto", "json")
    assert exporter.get("compression", "gzip") in ("none", "gzip", "deflate", "zlib")


def test_collector_config_uses_only_documented_keys() -> None:
    cfg = _collector()
    for where, allowed in DOCUMENTED.items():
        node: Any = cfg
        for part in where.split("."):
            node = node[part]
        assert isinstance(node, dict), where
        assert set(node) <= allowed, f"{where}: undocumented keys {set(node) - allowed}"

"""The receiver in production: bearer tokens, TLS, the loopback rule, record caps and deeply
nested bodies (issue 15, items 1 and 9). Clients are real: the OTLP exporter genopt sets up,
in a child process, and the feedback client."""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import prefect_genopt as genopt
from prefect_genopt import spool
from prefect_genopt.cli import main
from prefect_genopt.feedback import build_record, deliver
from prefect_genopt.warehouse.receiver import (
    Receiver,
    ReceiverConfigError,
    feedback_records,
    resolve_token,
)
from tests.warehouse.test_receiver import JSON, PROTOBUF, request, spans_body, spool_lines

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "tok-" + "3f9a" * 8
GOOD_FEEDBACK = {
    "k": "feedback",
    "feedback_id": "f" * 32,
    "run_id": "8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10",
    "kpi": "accuracy",
    "value": 1.0,
}


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def secured(warehouse_path: Path) -> Iterator[Receiver]:
    rx = Receiver(port=0, warehouse=warehouse_path, ingest_interval=0.2, token=TOKEN).start()
    try:
        yield rx
    finally:
        rx.stop()


# -- tokens ---------------------------------------------------------------------------------


def test_requests_without_a_valid_token_get_401_and_spool_nothing(secured: Receiver) -> None:
    body = spans_body(3, str(uuid.uuid4()))
    for headers in (
        {},
        bearer("wrong-token"),
        bearer(TOKEN + "x"),
        {"Authorization": TOKEN},  # no scheme
        {"Authorization": f"Basic {TOKEN}"},
    ):
        status, reply_headers, reply = request(
            secured.url, "POST", "/v1/traces", body, {"Content-Type": PROTOBUF, **headers}
        )
        assert status == 401, headers
        assert reply_headers["www-authenticate"] == 'Bearer realm="genopt"'
        assert "Authorization: Bearer" in orjson.loads(reply)["error"]
        status, _, _ = request(
            secured.url,
            "POST",
            "/v1/genopt/feedback",
            orjson.dumps(GOOD_FEEDBACK),
            {"Content-Type": JSON, **headers},
        )
        assert status == 401
    assert spool_lines(secured.spool_dir) == 0
    assert secured.stats["unauthorized_requests"] == 10

    # with the token: accepted (the scheme's case does not matter)
    status, _, _ = request(
        secured.url, "POST", "/v1/traces", body, {"Content-Type": PROTOBUF, **bearer()}
    )
    assert status == 200
    status, _, reply = request(
        secured.url,
        "POST",
        "/v1/genopt/feedback",
        orjson.dumps(GOOD_FEEDBACK),
        {"Content-Type": JSON, "Authorization": f"bearer {TOKEN}"},
    )
    assert (status, orjson.loads(reply)) == (200, {"accepted": 1})
    assert spool_lines(secured.spool_dir) == 4

    # /healthz answers a probe without the token, but says nothing more
    status, _, reply = request(secured.url, "GET", "/healthz")
    assert (status, orjson.loads(reply)) == (200, {"status": "ok"})
    status, _, reply = request(secured.url, "GET", "/healthz", headers=bearer())
    health = orjson.loads(reply)
    assert status == 200 and health["auth"] is True and health["spans"] == 3
    # an unknown path without the token: 401, not a map of what exists
    assert request(secured.url, "GET", "/v1/other")[0] == 401


def test_unauthenticated_expect_100_is_refused_before_the_body(secured: Receiver) -> None:
    host, port = secured.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.putrequest("POST", "/v1/traces")
    conn.putheader("Content-Type", PROTOBUF)
    conn.putheader("Content-Length", "4096")
    conn.putheader("Expect", "100-continue")
    conn.endheaders()
    assert conn.getresponse().status == 401
    conn.close()


def test_where_the_token_comes_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect_genopt.settings import GenoptSettings

    monkeypatch.delenv("GENOPT_SERVE_TOKEN", raising=False)
    assert resolve_token(settings=GenoptSettings()) is None
    monkeypatch.setenv("GENOPT_SERVE_TOKEN", "from-env")
    assert resolve_token(settings=GenoptSettings()) == "from-env"
    assert "from-env" not in repr(GenoptSettings())  # a secret: not in logs or reprs
    file = tmp_path / "token"
    file.write_text("from-file\n")
    assert resolve_token(token_file=file, settings=GenoptSettings()) == "from-file"
    assert resolve_token("given", file) == "given"
    for bad in ("", "\n", "two words\n"):
        file.write_text(bad)
        with pytest.raises(ReceiverConfigError, match="empty or holds whitespace"):
            resolve_token(token_file=file)
    with pytest.raises(ReceiverConfigError, match="cannot read the token file"):
        resolve_token(token_file=tmp_path / "missing")


WORKER = r"""
import sys
from opentelemetry.sdk.trace import TracerProvider
from prefect_genopt import tracing
from prefect_genopt.feedback import build_record, deliver

run_id = sys.argv[1]
provider = TracerProvider()
tracing.setup_tracing(provider)
tracer = provider.get_tracer("worker")
for i in range(5):
    with tracer.start_as_current_span(f"step-{i}", attributes={"genopt.run_id": run_id}):
        pass
tracing.get_processor().force_flush()
deliver(build_record("csat", 4, run_id=run_id, verify=False))
print("sent")
"""


def run_worker(url: str, run_id: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    child = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "GENOPT_OTLP_ENDPOINT": url,
        "GENOPT_WAREHOUSE": str(tmp_path / "worker" / "w.duckdb"),  # the worker's own disk
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", WORKER, run_id],
        env=child,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_exporter_and_the_feedback_client_send_the_token(
    secured: Receiver, tmp_path: Path
) -> None:
    worker_spool = tmp_path / "worker" / "w.duckdb.spool"
    run_id = str(uuid.uuid4())
    proc = run_worker(secured.url, run_id, tmp_path, GENOPT_OTLP_TOKEN=TOKEN)
    assert proc.returncode == 0 and "sent" in proc.stdout, proc.stderr[-3000:]
    assert secured.stats["spans"] == 5 and secured.stats["feedback"] == 1
    assert secured.stats["unauthorized_requests"] == 0
    assert secured.stats["ignored_fields"] == 0  # the client sends no field it would ignore
    assert not worker_spool.exists() or spool_lines(worker_spool) == 0

    # A wrong token: refused; the feedback stays in the worker's spool, never lost.
    other = str(uuid.uuid4())
    proc = run_worker(secured.url, other, tmp_path, GENOPT_OTLP_TOKEN="wrong")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "401" in proc.stderr  # the exporter's and the feedback client's warnings
    assert secured.stats["spans"] == 5 and secured.stats["unauthorized_requests"] >= 2
    kept = [
        orjson.loads(line)
        for f in spool.list_files(worker_spool)
        for line in f.path.read_bytes().splitlines()
    ]
    assert [(r["k"], r["run_id"]) for r in kept] == [("feedback", other)]


# -- TLS ------------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "genopt-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_round_trip(
    warehouse_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    with Receiver(
        port=0,
        warehouse=warehouse_path,
        ingest_interval=0.2,
        token=TOKEN,
        tls_cert=cert,
        tls_key=key,
    ) as rx:
        assert rx.url.startswith("https://127.0.0.1:")
        port = int(rx.url.rsplit(":", 1)[1])
        trusted = ssl.create_default_context(cafile=str(cert))

        def post(context: ssl.SSLContext) -> int:
            conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
            try:
                body = spans_body(2, str(uuid.uuid4()))
                conn.request("POST", "/v1/traces", body, {"Content-Type": PROTOBUF, **bearer()})
                return conn.getresponse().status
            finally:
                conn.close()

        assert post(trusted) == 200
        with pytest.raises(ssl.SSLCertVerificationError):  # a client that does not trust it
            post(ssl.create_default_context())
        # plain HTTP to the TLS port gets no answer, and the receiver carries on
        with pytest.raises((http.client.HTTPException, OSError)):
            request(f"http://127.0.0.1:{port}", "GET", "/healthz")
        assert post(trusted) == 200

        # the library's feedback client, trusting the certificate through its setting
        monkeypatch.setenv("GENOPT_OTLP_ENDPOINT", rx.url)
        monkeypatch.setenv("GENOPT_OTLP_TOKEN", TOKEN)
        monkeypatch.setenv("GENOPT_OTLP_CERTIFICATE", str(cert))
        run_id = str(uuid.uuid4())
        deliver(build_record("csat", 5, run_id=run_id, verify=False))
        assert rx.stats["feedback"] == 1
        # and genopt's OTLP exporter in another process
        proc = run_worker(
            rx.url, run_id, tmp_path, GENOPT_OTLP_TOKEN=TOKEN, GENOPT_OTLP_CERTIFICATE=str(cert)
        )
        assert proc.returncode == 0 and "sent" in proc.stdout, proc.stderr[-3000:]
        assert rx.stats["spans"] == 4 + 5 and rx.stats["feedback"] == 2
    wh = genopt.Warehouse(warehouse_path, ingest=False)
    assert wh.sql("SELECT count(*) AS n FROM spans WHERE run_id = ?", [run_id]) == [{"n": 5}]
    assert wh.sql("SELECT count(*) AS n FROM pending_feedback") == [{"n": 2}]


def test_tls_needs_both_files(warehouse_path: Path, tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    with pytest.raises(ReceiverConfigError, match="both a certificate and its key"):
        Receiver(port=0, warehouse=warehouse_path, tls_cert=cert)
    with pytest.raises(ReceiverConfigError, match="cannot load the TLS certificate"):
        Receiver(port=0, warehouse=warehouse_path, tls_cert=cert, tls_key=cert)


# -- the loopback rule ------------------------------------------------------------------------


def test_an_open_address_needs_a_token(
    warehouse_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ReceiverConfigError, match="refusing to bind 0.0.0.0 without a token"):
        Receiver(host="0.0.0.0", port=0, warehouse=warehouse_path)
    for host in ("0.0.0.0", "::", "", "10.1.2.3"):
        assert main(["serve", "--host", host, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert "refusing to bind" in err and "--insecure-no-auth" in err, err
        assert "Traceback" not in err
    Receiver(host="0.0.0.0", port=0, warehouse=warehouse_path, token=TOKEN)  # fine
    Receiver(host="0.0.0.0", port=0, warehouse=warehouse_path, insecure_no_auth=True)
    Receiver(host="localhost", port=0, warehouse=warehouse_path)


def serve_child(warehouse: Path, *args: str) -> tuple[str, str, int]:
    """``genopt serve ARGS`` in a child: its first line, then SIGTERM; (line, rest, status)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect_genopt.cli",
            "--warehouse",
            str(warehouse),
            "serve",
            "--port",
            "0",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if first:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return first, out + err, proc.returncode


def test_serve_on_an_open_address(warehouse_path: Path, tmp_path: Path) -> None:
    first, rest, code = serve_child(warehouse_path, "--host", "0.0.0.0")
    assert code == 2 and not first and "refusing to bind 0.0.0.0" in rest, rest
    first, rest, code = serve_child(warehouse_path, "--host", "0.0.0.0", "--insecure-no-auth")
    assert code == 0, rest
    assert "listening on http://0.0.0.0:" in first and "NO authentication" in first, first
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    first, rest, code = serve_child(warehouse_path, "--host", "0.0.0.0", "--token-file", str(token))
    assert code == 0, rest
    assert "bearer token required" in first, first


# -- caps and nesting -------------------------------------------------------------------------


def test_records_per_request_are_capped(
    warehouse_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENOPT_MAX_RECORDS_PER_REQUEST", "5")
    with Receiver(port=0, warehouse=warehouse_path, ingest_interval=5) as rx:
        six = [{**GOOD_FEEDBACK, "feedback_id": f"f{i}"} for i in range(6)]
        status, _, reply = request(
            rx.url, "POST", "/v1/genopt/feedback", orjson.dumps(six), {"Content-Type": JSON}
        )
        assert status == 413
        assert "6 feedback records; the limit is 5" in orjson.loads(reply)["error"]
        status, _, reply = request(
            rx.url, "POST", "/v1/traces", spans_body(6, "r"), {"Content-Type": PROTOBUF}
        )
        assert status == 413
        assert (
            "6 spans; the limit is 5 (GENOPT_MAX_RECORDS_PER_REQUEST)"
            in orjson.loads(reply)["error"]
        )
        assert spool_lines(rx.spool_dir) == 0
        assert (
            request(
                rx.url, "POST", "/v1/genopt/feedback", orjson.dumps(six[:5]), {"Content-Type": JSON}
            )[0]
            == 200
        )
        assert (
            request(rx.url, "POST", "/v1/traces", spans_body(5, "r"), {"Content-Type": PROTOBUF})[0]
            == 200
        )


def nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/genopt/feedback", nested(100_000), "nested deeper than 1024 levels"),
        ("/v1/genopt/feedback", nested(1_500), "nested deeper than 1024 levels"),
        ("/v1/genopt/feedback", nested(100_000, b'{"a":', b"}"), "nested deeper"),
        ("/v1/genopt/feedback", nested(1_000), "must be a JSON object"),
        (
            "/v1/genopt/feedback",
            orjson.dumps(GOOD_FEEDBACK)[:-1] + b', "expected": ' + nested(1_000) + b"}",
            "should be VARCHAR",
        ),
        ("/v1/traces", nested(100_000), "not valid JSON"),
        ("/v1/traces", b'{"resourceSpans": ' + nested(100_000) + b"}", "not valid JSON"),
    ],
)
def test_deeply_nested_json_is_a_400(
    warehouse_path: Path, path: str, body: bytes, message: str
) -> None:
    with Receiver(port=0, warehouse=warehouse_path, ingest_interval=5) as rx:
        status, _, reply = request(rx.url, "POST", path, body, {"Content-Type": JSON})
        assert status == 400, reply[:300]
        assert message in orjson.loads(reply)["error"]
        assert rx.stats["rejected_requests"] == 1 and spool_lines(rx.spool_dir) == 0
        assert request(rx.url, "GET", "/healthz")[0] == 200  # still serving


def test_deeply_nested_protobuf_values_are_a_400(warehouse_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    req = ExportTraceServiceRequest.FromString(spans_body(1, "r"))
    span = req.resource_spans[0].scope_spans[0].spans[0]
    attr = span.attributes.add()
    attr.key = "deep"
    value: AnyValue = attr.value
    for _ in range(5_000):
        value = value.array_value.values.add()
    value.string_value = "bottom"
    with Receiver(port=0, warehouse=warehouse_path, ingest_interval=5) as rx:
        status, _, reply = request(
            rx.url, "POST", "/v1/traces", req.SerializeToString(), {"Content-Type": PROTOBUF}
        )
        assert status == 400 and "protobuf" in orjson.loads(reply)["error"]
        assert request(rx.url, "GET", "/healthz")[0] == 200


def test_feedback_records_doctest_fields() -> None:
    """The body's derived fields come back None; its id is derived from run and key."""
    from collections import Counter

    from prefect_genopt.feedback import feedback_id

    ignored: Counter[str] = Counter()
    body = {
        **GOOD_FEEDBACK,
        "idempotency_key": "k1",
        "arm": "canary",
        "param_set_id": "ps_forged",
        "pipeline": "other",
        "verified": True,
    }
    [rec] = feedback_records(orjson.dumps(body), ignored=ignored)
    assert (rec["arm"], rec["param_set_id"], rec["pipeline"], rec["verified"]) == (None,) * 4
    assert rec["feedback_id"] == feedback_id(GOOD_FEEDBACK["run_id"], "k1")
    assert ignored == Counter(
        {"arm": 1, "param_set_id": 1, "pipeline": 1, "verified": 1, "feedback_id": 1}
    )

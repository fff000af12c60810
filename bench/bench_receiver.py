"""The receiver under load, with readers: N senders x spans/s over OTLP to `genopt serve`.

    python -m bench.bench_receiver [--senders 20] [--rate 750] [--seconds 60]
                                   [--readers 4] [--cli-readers 1] [--quick]

A real `genopt serve` (a child process, on loopback, with a bearer token when the
command supports one) receives spans from ``--senders`` child processes, each sending
``--rate`` spans per second through OpenTelemetry's own OTLP/HTTP span exporter (protobuf,
in batches of a tenth of a second's spans, timed per export call). Meanwhile
``--readers`` child processes query the warehouse through the library
(``Warehouse(path).sql(...)``, a new reader per query, as a script or notebook would)
and ``--cli-readers`` loops run ``genopt sql`` (a whole command: process start included),
each timed per query. Readers load other processes' spool backlog only once the last
ingest is older than ``GENOPT_INGEST_BACKLOG_AGE`` and the lock is free; the receiver
ingests every ``GENOPT_INGEST_INTERVAL`` (docs/architecture.md: issue 15, item 8).

When the senders are done the receiver is stopped (SIGTERM: it seals its spool and
ingests), ``genopt ingest`` loads anything left, and every span a sender had
acknowledged is looked up by its id: **lost** = acknowledged and not stored (must be 0).

Reported: p50/p99 of send latency (one export call), of library reads and of CLI reads;
spans sent, acknowledged, refused and lost; the receiver's achieved spans/s. Results go to
``bench/results/bench_receiver.json`` (``--quick``: 3 senders x 200 spans/s for 5 s, one
reader of each kind, into the work directory). Every role runs as
``python -m bench.bench_receiver --role ...`` in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import common

#: the query every reader runs (an aggregate over the table the senders fill)
READ_QUERY = "SELECT count(*) AS n, max(end_time) AS last FROM spans"


def _pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of ``values``, or None for none.

    Example:
        >>> _pct([1.0, 2.0, 3.0, 4.0], 50), _pct([], 99) is None
        (2.0, True)
    """
    if not values:
        return None
    vals = sorted(values)
    k = max(0, min(len(vals) - 1, int(round(q / 100 * len(vals) + 0.5)) - 1))
    return vals[k]


def _shown(value: float | None) -> float | str:
    return "-" if value is None else value


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_s": _pct(values, 50),
        "p99_s": _pct(values, 99),
        "max_s": max(values) if values else None,
        "mean_s": statistics.fmean(values) if values else None,
    }


# -- roles (child processes) -------------------------------------------------------------------


def role_sender(args: argparse.Namespace) -> None:
    """Send ``rate`` spans/s for ``seconds`` through the real OTLP exporter; write what
    was acknowledged (span ids) and each export call's latency to ``--out``."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    exporter = OTLPSpanExporter(endpoint=f"{args.url}/v1/traces", headers=headers, timeout=60)
    provider = TracerProvider(resource=Resource.create({"service.name": "bench-receiver"}))
    tracer = provider.get_tracer("bench.receiver")
    batch = max(1, args.rate // 10)
    interval = batch / args.rate
    text = "ticket about an invoice that was charged twice; " * 4
    acked: list[str] = []
    refused = 0
    latencies: list[float] = []
    seq = 0
    start = time.monotonic()
    due = start
    while time.monotonic() - start < args.seconds:
        spans = []
        for _ in range(batch):
            span = tracer.start_span(
                "bench.step",
                attributes={
                    "bench.sender": args.index,
                    "bench.seq": seq,
                    "genopt.pipeline": "bench",
                    "genopt.inputs": text,
                },
            )
            span.end()
            spans.append(span)
            seq += 1
        t0 = time.perf_counter()
        result = exporter.export(spans)
        latencies.append(time.perf_counter() - t0)
        if result == SpanExportResult.SUCCESS:
            acked.extend(format(s.context.span_id, "016x") for s in spans)
        else:
            refused += len(spans)
        due += interval
        time.sleep(max(0.0, due - time.monotonic()))
    exporter.shutdown()
    Path(args.out).write_text(
        json.dumps({"sent": seq, "acked": acked, "refused": refused, "latencies": latencies})
    )


def role_reader(args: argparse.Namespace) -> None:
    """Query through the library until ``--seconds`` pass, alternating a default reader
    with one that never ingests (``ingest=False``, the floor); write the latencies."""
    from prefect_genopt.warehouse import Warehouse

    latencies: dict[str, list[float]] = {"ingest": [], "no-ingest": []}
    errors: list[str] = []
    # what the default reader's ingests cost: its own writes (none here) or others' backlog
    ingests: dict[str, list[float]] = {"own": [], "backlog tried": [], "backlog loaded": []}

    def timing(name: str, fn: Any) -> Any:
        def wrapped(self: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(self)
            if name == "backlog tried" and out is not None:
                ingests["backlog loaded"].append(time.perf_counter() - t0)
            ingests[name].append(time.perf_counter() - t0)
            return out

        return wrapped

    Warehouse.ingest = timing("own", Warehouse.ingest)  # type: ignore[method-assign]
    Warehouse._ingest_now_or_never = timing(  # type: ignore[method-assign]
        "backlog tried", Warehouse._ingest_now_or_never
    )
    start = time.monotonic()
    turn = 0
    while time.monotonic() - start < args.seconds:
        mode = ("ingest", "no-ingest")[turn % 2]
        turn += 1
        t0 = time.perf_counter()
        try:
            Warehouse(args.warehouse, ingest=mode == "ingest").sql(READ_QUERY)
            latencies[mode].append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - counted, the reader goes on
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
        time.sleep(0.2)
    Path(args.out).write_text(
        json.dumps({"latencies": latencies, "errors": errors, "ingests": ingests})
    )


def role_cli_reader(args: argparse.Namespace) -> None:
    """Run ``genopt sql`` in a loop until ``--seconds`` pass, alternating with
    ``genopt sql --no-ingest`` (the floor: process start and the lock); write the latencies."""
    latencies: dict[str, list[float]] = {"ingest": [], "no-ingest": []}
    errors: list[str] = []
    start = time.monotonic()
    cmd = [sys.executable, "-m", "prefect_genopt.cli", "--warehouse", args.warehouse, "sql"]
    turn = 0
    while time.monotonic() - start < args.seconds:
        mode = ("ingest", "no-ingest")[turn % 2]
        turn += 1
        extra = ["--no-ingest"] if mode == "no-ingest" else []
        t0 = time.perf_counter()
        out = subprocess.run([*cmd, *extra, READ_QUERY], capture_output=True, text=True)
        if out.returncode == 0:
            latencies[mode].append(time.perf_counter() - t0)
        else:
            errors.append(out.stderr.strip()[-300:])
        time.sleep(0.2)
    Path(args.out).write_text(json.dumps({"latencies": latencies, "errors": errors}))


ROLES = {"sender": role_sender, "reader": role_reader, "cli-reader": role_cli_reader}


# -- the run -------------------------------------------------------------------------------------


def _child(role: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bench.bench_receiver", "--role", role, *extra]


def _serve_supports_tokens(env: dict[str, str]) -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "prefect_genopt.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        env=env,
    )
    return "--token-file" in out.stdout


def _start_receiver(
    env: dict[str, str], port: int, token_file: Path | None, interval: float, log: Path
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "prefect_genopt.cli", "serve", "--port", str(port)]
    cmd += ["--ingest-interval", str(interval)]
    if token_file is not None:
        cmd += ["--token-file", str(token_file)]
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "listening on" in log.read_text(errors="replace"):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"genopt serve did not start:\n{log.read_text(errors='replace')}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stored(warehouse: Path, span_ids: list[str]) -> int:
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        con.execute("CREATE TEMP TABLE acked (span_id VARCHAR)")
        con.executemany("INSERT INTO acked VALUES (?)", [(s,) for s in span_ids])
        (n,) = con.execute(
            "SELECT count(DISTINCT a.span_id) FROM acked a JOIN spans s USING (span_id)"
        ).fetchone()
        return int(n)
    finally:
        con.close()


def run(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    tmp = common.scratch_dir("bench-receiver-")
    warehouse = tmp / "warehouse.duckdb"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect"),
        "GENOPT_WAREHOUSE": str(warehouse),
        "PYTHONPATH": os.pathsep.join([str(common.ROOT), os.environ.get("PYTHONPATH", "")]),
        **common.QUIET_ENV,
    }
    token = None
    token_file = None
    if _serve_supports_tokens(env):
        token = secrets.token_urlsafe(24)
        token_file = tmp / "token"
        token_file.write_text(token + "\n")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    common.log(
        f"genopt serve on {url} ({'bearer token' if token else 'no token'}); "
        f"{args.senders} senders x {args.rate} spans/s for {args.seconds:g}s; "
        f"{args.readers} library readers, {args.cli_readers} CLI readers"
    )
    receiver = _start_receiver(env, port, token_file, args.ingest_interval, tmp / "serve.log")
    children: list[tuple[str, Path, subprocess.Popen[bytes]]] = []
    try:
        for i in range(args.senders):
            out = tmp / f"sender-{i}.json"
            cmd = _child("sender", "--url", url, "--index", str(i), "--out", str(out))
            cmd += ["--rate", str(args.rate), "--seconds", str(args.seconds)]
            if token:
                cmd.append(f"--token={token}")  # a token may start with '-'
            children.append(("sender", out, subprocess.Popen(cmd, env=env)))
        time.sleep(min(2.0, args.seconds / 4))  # readers start once the load is on
        read_for = max(1.0, args.seconds - min(2.0, args.seconds / 4))
        for kind, count in (("reader", args.readers), ("cli-reader", args.cli_readers)):
            for i in range(count):
                out = tmp / f"{kind}-{i}.json"
                cmd = _child(kind, "--warehouse", str(warehouse), "--out", str(out))
                cmd += ["--seconds", str(read_for)]
                children.append((kind, out, subprocess.Popen(cmd, env=env)))
        loads = []
        while any(p.poll() is None for k, _, p in children if k == "sender"):
            loads.append(common.loadavg())
            time.sleep(5)
        load_during = max(loads) if loads else common.loadavg()
        for kind, _, proc in children:
            if proc.wait(timeout=args.seconds * 10 + 300) != 0:
                raise RuntimeError(f"a {kind} exited with status {proc.returncode}")
    finally:
        for _, _, proc in children:
            if proc.poll() is None:
                proc.kill()
        receiver.send_signal(signal.SIGTERM)
        try:
            receiver.wait(timeout=600)
        except subprocess.TimeoutExpired:
            receiver.kill()
    ingest = subprocess.run(
        [sys.executable, "-m", "prefect_genopt.cli", "ingest"],
        env=env,
        capture_output=True,
        text=True,
    )
    if ingest.returncode != 0:
        raise RuntimeError(f"genopt ingest failed: {ingest.stderr}")

    sent = refused = 0
    acked: list[str] = []
    send: list[float] = []
    reads: dict[str, list[float]] = {
        f"{kind}/{mode}": []
        for kind in ("reader", "cli-reader")
        for mode in ("ingest", "no-ingest")
    }
    read_errors: dict[str, list[str]] = {"reader": [], "cli-reader": []}
    reader_ingests: dict[str, list[float]] = {}
    for kind, out, _ in children:
        data = json.loads(out.read_text())
        if kind == "sender":
            sent += data["sent"]
            refused += data["refused"]
            acked += data["acked"]
            send += data["latencies"]
        else:
            for mode, values in data["latencies"].items():
                reads[f"{kind}/{mode}"] += values
            read_errors[kind] += data["errors"]
            for name, values in data.get("ingests", {}).items():
                reader_ingests.setdefault(name, []).extend(values)
    stored = _stored(warehouse, acked)
    result = {
        "senders": args.senders,
        "rate_per_sender": args.rate,
        "seconds": args.seconds,
        "token": bool(token),
        "spans_sent": sent,
        "spans_acknowledged": len(acked),
        "spans_refused": refused,
        "spans_lost": len(acked) - stored,
        "achieved_spans_per_s": round(len(acked) / args.seconds, 1),
        "send": _summary(send),
        "library_read": _summary(reads["reader/ingest"]),
        "library_read_no_ingest": _summary(reads["reader/no-ingest"]),
        "cli_read": _summary(reads["cli-reader/ingest"]),
        "cli_read_no_ingest": _summary(reads["cli-reader/no-ingest"]),
        "loadavg_during": load_during,
        "library_reader_ingests": {
            name: {"n": len(v), "seconds": round(sum(v), 3)} for name, v in reader_ingests.items()
        },
        "read_errors": {k: v[:5] for k, v in read_errors.items()},
        "read_error_counts": {k: len(v) for k, v in read_errors.items()},
        "ingest_backlog_age_s": float(env.get("GENOPT_INGEST_BACKLOG_AGE", 5.0)),
        "ingest_interval_s": args.ingest_interval,
    }
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--senders", type=int, default=None, help="sender processes (20; quick 3)")
    ap.add_argument("--rate", type=int, default=None, help="spans/s per sender (750; quick 200)")
    ap.add_argument("--seconds", type=float, default=None, help="send time (60; quick 5)")
    ap.add_argument("--readers", type=int, default=None, help="library readers (4; quick 1)")
    ap.add_argument("--cli-readers", type=int, default=None, help="genopt sql loops (1)")
    ap.add_argument("--ingest-interval", type=float, default=2.0, help="receiver's (2)")
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    # a child's role (internal)
    ap.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    for name in ("--url", "--token", "--out", "--warehouse"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role:
        if args.role != "sender":
            common.prefect_env(level="ERROR")
        ROLES[args.role](args)
        return
    args.senders = args.senders or (3 if args.quick else 20)
    args.rate = args.rate or (200 if args.quick else 750)
    args.seconds = args.seconds or (5.0 if args.quick else 60.0)
    args.readers = args.readers if args.readers is not None else (1 if args.quick else 4)
    args.cli_readers = args.cli_readers if args.cli_readers is not None else 1
    out = run(args, argv)
    labels = (
        ("send", "send (one export call)"),
        ("library_read", "library read (Warehouse(path).sql)"),
        ("library_read_no_ingest", "  the same with ingest=False"),
        ("cli_read", "genopt sql (process start included)"),
        ("cli_read_no_ingest", "  genopt sql --no-ingest"),
    )
    rows = []
    for key, label in labels:
        s = out[key]
        rows.append([label, s["n"], _shown(s["p50_s"]), _shown(s["p99_s"])])
    common.print_table(
        ["what", "n", "p50 s", "p99 s"],
        rows,
        title=f"{out['senders']} senders x {out['rate_per_sender']} spans/s for "
        f"{out['seconds']:g}s: {out['achieved_spans_per_s']:,} spans/s acknowledged",
    )
    print(f"library readers' own ingests: {out['library_reader_ingests']}")
    print(
        f"spans sent {out['spans_sent']:,}, acknowledged {out['spans_acknowledged']:,}, "
        f"refused {out['spans_refused']:,}, LOST {out['spans_lost']:,}; read errors "
        f"{out['read_error_counts']}"
    )
    common.write_results(
        "bench_receiver",
        {
            "command": common.command_line("bench_receiver", argv),
            "machine": common.machine_info(),
            **out,
        },
        quick=args.quick,
    )
    if out["spans_lost"]:
        raise SystemExit(f"{out['spans_lost']} acknowledged spans were not stored")


if __name__ == "__main__":
    main()

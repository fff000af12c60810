"""The ``genopt`` command: thin over the library.

Examples:
    genopt sql "select pipeline, status, count(*) from runs group by all"
    genopt sql "select * from kpi_by_param_set_day" --json
    genopt feedback 8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10 csat 4 --comment "slow"
    genopt ingest
    genopt status
    genopt serve --port 4318
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

__all__ = ["main", "build_parser"]

EPILOG = """\
Everything reads and writes the warehouse named by --warehouse, else GENOPT_WAREHOUSE,
else $PREFECT_HOME/genopt/warehouse.duckdb. Tables: pipelines, runs, spans, feedback,
param_sets, pending_feedback; views: kpi_by_param_set_day, llm_usage, run_summary.
"""


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def _cell(value: Any, width: int) -> str:
    if value is None:
        text = "NULL"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, dt.datetime):
        text = value.isoformat(sep=" ", timespec="seconds")
    else:
        text = str(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(columns: list[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    """Rows as an aligned text table.

    Example:
        >>> print(format_table(["a", "b"], [(1, None)]))
        a | b
        --+-----
        1 | NULL
        (1 row)
    """
    cells = [[_cell(v, max_width) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [
        " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    ]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, dt.date | dt.datetime):
        return obj.isoformat()
    return str(obj)


def cmd_sql(args: argparse.Namespace) -> int:
    from prefect_genopt.warehouse import Warehouse

    query = args.query if args.query != "-" else sys.stdin.read()
    wh = Warehouse(read_only=not args.write, ingest=not args.no_ingest)
    try:
        columns, rows = wh.execute(query)
    finally:
        wh.close()
    if args.json:
        out = [dict(zip(columns, r, strict=True)) for r in rows]
        sys.stdout.write(
            orjson.dumps(out, default=_json_default, option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    elif args.csv:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(columns)
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    elif columns:
        print(format_table(columns, rows, args.max_width))
    else:
        print("OK")
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from prefect_genopt.feedback import build_record, deliver
    from prefect_genopt.warehouse import Warehouse, WarehouseBusyError

    record = build_record(
        args.kpi,
        args.value,
        comment=args.comment,
        run_id=args.run_id,
        item_key=args.item_key,
        source=args.source,
        idempotency_key=args.idempotency_key,
    )
    deliver(record)
    state = "recorded"
    try:
        Warehouse(ingest=False).ingest()
        wh = Warehouse(ingest=False)
        if wh.sql("SELECT 1 FROM pending_feedback WHERE feedback_id = ?", [record["feedback_id"]]):
            state = "pending (the run is not in the warehouse yet; it is attached when it arrives)"
    except WarehouseBusyError:
        state = "spooled (warehouse busy; the next ingest loads it)"
    print(f"feedback {record['feedback_id']} for run {record['run_id']}: {state}")
    if not record["verified"]:
        print("warning: the run could not be checked against the Prefect API", file=sys.stderr)
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from prefect_genopt.warehouse import Ingester

    result = Ingester().ingest()
    print(result)
    return 0


def _spool_backlog(spool_dir: Path, offsets: dict[str, int]) -> tuple[int, int]:
    from prefect_genopt import spool

    files = nbytes = 0
    for f in spool.list_files(spool_dir):
        try:
            left = f.path.stat().st_size - offsets.get(f.stem, 0)
        except FileNotFoundError:
            continue
        if left > 0:
            files += 1
            nbytes += left
    return files, nbytes


def cmd_status(args: argparse.Namespace) -> int:
    from prefect_genopt.settings import get_settings
    from prefect_genopt.warehouse import Warehouse, WarehouseMissingError

    settings = get_settings()
    print(f"warehouse: {settings.warehouse_path}")
    print(f"spool:     {settings.spool_dir}")
    wh = Warehouse(ingest=False)
    try:
        offsets = dict(wh.execute("SELECT stem, byte_offset FROM ingest_files")[1])
    except WarehouseMissingError:
        files, nbytes = _spool_backlog(settings.spool_dir, {})
        print(f"backlog:   {files} spool file(s), {nbytes} bytes not ingested")
        print("warehouse not created yet: run `genopt ingest`")
        return 0
    files, nbytes = _spool_backlog(settings.spool_dir, offsets)
    print(f"backlog:   {files} spool file(s), {nbytes} bytes not ingested")
    last = wh.sql("SELECT * FROM ingest_log ORDER BY finished_at DESC LIMIT 1")
    if last:
        r = last[0]
        print(
            f"last ingest: {r['finished_at']:%Y-%m-%d %H:%M:%S} UTC, {r['records']} records "
            f"in {r['seconds']:.2f}s"
        )
    else:
        print("last ingest: never")
    counts = wh.sql(
        """SELECT (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM spans) AS spans,
                  (SELECT count(*) FROM feedback) AS feedback,
                  (SELECT count(*) FROM pending_feedback) AS pending_feedback,
                  (SELECT coalesce(sum(dropped), 0) FROM span_drops) AS dropped_spans,
                  (SELECT count(*) FROM spool_rejects) AS rejected_lines"""
    )[0]
    print("  ".join(f"{k}: {v}" for k, v in counts.items()))
    by_status = wh.execute("SELECT status, count(*) FROM runs GROUP BY 1 ORDER BY 2 DESC")[1]
    if by_status:
        print("runs by status: " + ", ".join(f"{s} {n}" for s, n in by_status))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from prefect_genopt.warehouse.receiver import serve

    serve(host=args.host, port=args.port, warehouse=None, ingest_interval=args.ingest_interval)
    return 0


def _value(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The ``genopt`` argument parser."""
    from prefect_genopt import __version__

    p = argparse.ArgumentParser(
        prog="genopt",
        description="prefect-genopt: trace warehouse, feedback and optimisation of Prefect "
        "pipelines.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"prefect-genopt {__version__}")
    p.add_argument(
        "--warehouse",
        metavar="PATH",
        help="the DuckDB warehouse file (overrides GENOPT_WAREHOUSE)",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser(
        "sql",
        help="run SQL on the warehouse and print the result",
        description="Run SQL on the warehouse (read-only unless --write). Pending spool data "
        "is ingested first.",
        epilog='example: genopt sql "select * from run_summary order by start_time desc limit 5"',
    )
    s.add_argument("query", help="the SQL to run ('-' reads it from stdin)")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print rows as a JSON list")
    fmt.add_argument("--csv", action="store_true", help="print rows as CSV")
    s.add_argument("--write", action="store_true", help="open read-write (maintenance only)")
    s.add_argument("--no-ingest", action="store_true", help="do not ingest the spool first")
    s.add_argument("--max-width", type=int, default=60, help="widest table cell (default 60)")
    s.set_defaults(func=cmd_sql)

    f = sub.add_parser(
        "feedback",
        help="attach a KPI value and/or a comment to a run",
        description="Attach a KPI value and/or text feedback to a pipeline run. RUN_ID is the "
        "Prefect flow-run id (as in runs.run_id). A run not yet in the warehouse is checked "
        "against the Prefect API and the feedback waits until the run arrives.",
        epilog="example: genopt feedback 8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10 csat 4 "
        '--comment "slow"',
    )
    f.add_argument("run_id", metavar="RUN_ID")
    f.add_argument("kpi", metavar="KPI")
    f.add_argument("value", metavar="VALUE", nargs="?", type=_value, help="a finite number")
    f.add_argument("--comment", help="text feedback")
    f.add_argument("--item-key", help="the work item the feedback is about")
    f.add_argument("--source", default="cli", help="who gives it (default: cli)")
    f.add_argument("--idempotency-key", help="the same key for the same run is stored once")
    f.set_defaults(func=cmd_feedback)

    i = sub.add_parser(
        "ingest",
        help="load the spool into the warehouse now",
        description="Load everything waiting in the spool into the warehouse (atomic, "
        "idempotent; safe to run any time, from any process).",
    )
    i.set_defaults(func=cmd_ingest)

    st = sub.add_parser(
        "status",
        help="spool backlog, last ingest, dropped spans",
        description="Show the spool backlog, the last ingest, row counts, pending feedback, "
        "dropped spans and rejected spool lines.",
    )
    st.set_defaults(func=cmd_status)

    sv = sub.add_parser(
        "serve",
        help="run the OTLP/HTTP receiver",
        description="Receive OTLP/HTTP traces (POST /v1/traces, protobuf or JSON) and feedback "
        "(POST /v1/genopt/feedback) from workers on other machines, and ingest them "
        "periodically. Loopback only unless --host says otherwise.",
    )
    sv.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=None, help="port (default 4318)")
    sv.add_argument("--ingest-interval", type=float, default=None, help="seconds between ingests")
    sv.set_defaults(func=cmd_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``genopt`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.warehouse:
        os.environ["GENOPT_WAREHOUSE"] = str(Path(args.warehouse).expanduser().resolve())
    from prefect_genopt.feedback import FeedbackError
    from prefect_genopt.warehouse import WarehouseBusyError, WarehouseMissingError

    try:
        return int(args.func(args))
    except (FeedbackError, WarehouseBusyError, WarehouseMissingError, CLIError) as exc:
        print(f"genopt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        import duckdb

        if isinstance(exc, duckdb.Error):
            print(f"genopt {args.command}: SQL error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())

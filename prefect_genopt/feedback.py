"""``genopt.feedback()``: KPI values and text critique for a run or an item.

Feedback is validated here (a clear error for NaN/inf, empty KPI names, empty
feedback, oversized comments, unknown runs) and then appended to the spool (or
sent to the OTLP receiver), never written to the warehouse directly. Each
feedback has an idempotency key: the same key for the same run is stored once.
Inside a flow the default key is ``kpi|item_key|source``, stable across Prefect
retries of the run; elsewhere a fresh key is drawn unless you pass one.

Inside a pipeline run, feedback that cannot be recorded (a NaN value, an empty KPI
name, a spool whose disk is full or read-only) never fails the flow: it logs one
warning per cause per run and is counted in ``runs.genopt_errors``
(:mod:`prefect_genopt.incidents`; ``GENOPT_STRICT=1`` raises instead). Outside a
pipeline run it raises.

The checks of a single field, and of a whole record arriving from elsewhere
(:func:`validate_record`), live with the record format in :mod:`prefect_genopt.records`
(the receiver uses them without importing this module); they are re-exported here.

Example:
    >>> validate_kpi(" accuracy ")
    'accuracy'
    >>> validate_value(float("nan"))
    Traceback (most recent call last):
    ...
    prefect_genopt.feedback.FeedbackError: feedback value must be a finite number, got nan
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson

from prefect_genopt import incidents, spool
from prefect_genopt.context import run_var
from prefect_genopt.errors import NotFoundError
from prefect_genopt.records import (
    FEEDBACK_FIELDS,
    MAX_KEY_CHARS,
    FeedbackError,
    feedback_id,
    validate_kpi,
    validate_record,
    validate_value,
)
from prefect_genopt.redaction import redact, redact_item_key
from prefect_genopt.settings import GenoptSettings, get_settings

__all__ = [
    "feedback",
    "FeedbackError",
    "UnknownRunError",
    "build_record",
    "validate_kpi",
    "validate_value",
    "feedback_id",
    "deliver",
    "validate_record",
    "FEEDBACK_FIELDS",
]

logger = logging.getLogger("prefect_genopt.feedback")

#: record fields the receiver derives at ingest (``warehouse.receiver.DERIVED_FIELDS``
#: but the id, which it checks against the run and idempotency key)
_DERIVED_AT_INGEST = frozenset({"arm", "param_set_id", "pipeline", "verified"})


class UnknownRunError(FeedbackError, NotFoundError):
    """Feedback for a run that neither the warehouse nor the Prefect API knows."""


def _validate_run_id(run_id: Any) -> str:
    try:
        return str(uuid.UUID(str(run_id)))
    except ValueError:
        raise FeedbackError(
            f"run id {run_id!r} is not a Prefect flow-run id (a UUID, as in `runs.run_id`)"
        ) from None


def _prefect_knows(run_id: str) -> bool | None:
    """True/False if the Prefect API answers, None if it cannot be reached."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_flow_run(uuid.UUID(run_id))
        return True
    except ObjectNotFound:
        return False
    except Exception as exc:  # noqa: BLE001 - any transport failure means "cannot tell"
        logger.warning("cannot reach the Prefect API to check run %s: %s", run_id, exc)
        return None


def verify_run(run_id: str, settings: GenoptSettings | None = None) -> bool:
    """Check that a run exists: in the warehouse, else through the Prefect API.

    Args:
        run_id: The Prefect flow-run id.
        settings: Which warehouse, and whether to ask Prefect (default: the current settings).

    Returns:
        True when confirmed; False when it could not be checked (kept pending, unverified).

    Raises:
        UnknownRunError: The Prefect API says there is no such flow run.
    """
    from prefect_genopt.warehouse.access import run_exists

    settings = settings or get_settings()
    if run_exists(run_id, settings.warehouse_path):
        return True
    if not settings.check_runs_with_prefect:
        return False
    known = _prefect_knows(run_id)
    if known is False:
        raise UnknownRunError(
            f"no flow run {run_id} in the warehouse or the Prefect API; feedback not recorded"
        )
    return bool(known)


def build_record(
    kpi: str,
    value: float | None = None,
    *,
    comment: str | None = None,
    run_id: str | None = None,
    item_key: str | None = None,
    source: str = "code",
    idempotency_key: str | None = None,
    expected: Any = None,
    step: str | None = None,
    verify: bool = True,
    settings: GenoptSettings | None = None,
) -> dict[str, Any]:
    """Validate feedback and build its spool record (see :func:`feedback`).

    ``settings`` (default: the current ones) give the limits and the warehouse the run
    is looked up in."""
    kpi = validate_kpi(kpi)
    value = validate_value(value)
    settings = settings or get_settings()
    if comment is not None:
        if not isinstance(comment, str):
            raise FeedbackError(f"comment must be a string, got {type(comment).__name__}")
        if len(comment) > settings.max_comment_chars:
            raise FeedbackError(
                f"comment is {len(comment)} chars; the limit is {settings.max_comment_chars} "
                "(GENOPT_MAX_COMMENT_CHARS)"
            )
        comment = redact(comment)
    if value is None and not comment:
        raise FeedbackError("feedback needs a value, a comment, or both")
    expected_json = _expected_json(expected, settings.max_comment_chars)
    if step is not None and (not isinstance(step, str) or not 0 < len(step) <= MAX_KEY_CHARS):
        raise FeedbackError(f"step must be a task name of 1..{MAX_KEY_CHARS} chars")
    if not isinstance(source, str) or not source.strip():
        raise FeedbackError("source must be a non-empty string")
    stored_item_key = None
    if item_key is not None:
        item_key = str(item_key)
        if len(item_key) > MAX_KEY_CHARS:
            raise FeedbackError(f"item_key is longer than {MAX_KEY_CHARS} chars")
        # a secret in an item key is stored as a keyed hash (routing uses the key itself)
        stored_item_key = redact_item_key(item_key)
    if idempotency_key is not None:
        idempotency_key = str(idempotency_key)
        if not idempotency_key or len(idempotency_key) > MAX_KEY_CHARS:
            raise FeedbackError(f"idempotency_key must be 1..{MAX_KEY_CHARS} chars")

    rc = run_var.get()
    in_current_run = False
    if run_id is None:
        if rc is None:
            raise FeedbackError(
                "feedback() outside a pipeline run needs run_id= (the Prefect flow-run id)"
            )
        run_id = rc.run_id
        in_current_run = True
    else:
        run_id = _validate_run_id(run_id)
        in_current_run = rc is not None and rc.run_id == run_id

    if idempotency_key is None:
        idempotency_key = (
            f"{kpi}|{stored_item_key or ''}|{source}" if in_current_run else uuid.uuid4().hex
        )
    verified = True if in_current_run else (verify_run(run_id, settings) if verify else False)
    pipeline = ps_id = arm = None
    if in_current_run and rc is not None:
        pipeline = rc.pipeline
        if item_key is not None:
            _, ps_id, arm = rc.for_item(item_key)
        elif rc.route is not None and rc.route.split_items:
            # a run-level KPI of a run whose items were routed: the arm all of them went
            # to, or "mixed" when they went to both
            ps_id, arm = rc.route.run_level()
        else:
            ps_id, arm = rc.param_set_id, rc.arm
    return {
        "k": "feedback",
        "feedback_id": feedback_id(run_id, idempotency_key),
        "run_id": run_id,
        "kpi": kpi,
        "value": value,
        "comment": comment,
        "item_key": stored_item_key,
        "source": source.strip(),
        "idempotency_key": redact(idempotency_key),
        "created_ns": time.time_ns(),
        "verified": verified,
        "pipeline": pipeline,
        "param_set_id": ps_id,
        "arm": arm,
        "expected": expected_json,
        "step": step,
    }


def _expected_json(expected: Any, limit: int) -> str | None:
    """The expected answer as redacted JSON text, or a clear error."""
    if expected is None:
        return None
    try:
        text = orjson.dumps(expected, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError as exc:
        raise FeedbackError(f"expected must be JSON-serialisable: {exc}") from None
    if len(text) > limit:
        raise FeedbackError(
            f"expected is {len(text)} chars as JSON; the limit is {limit} "
            "(GENOPT_MAX_COMMENT_CHARS)"
        )
    return redact(text)


def deliver(record: dict[str, Any], settings: GenoptSettings | None = None) -> None:
    """Send a record to the warehouse's spool, or to the receiver in OTLP mode.

    In OTLP mode feedback is POSTed to ``GENOPT_FEEDBACK_ENDPOINT`` (default: the
    OTLP endpoint), which must be a ``genopt serve`` receiver (an OpenTelemetry
    Collector has no feedback route). If it cannot be delivered there, it is kept
    in the local spool with a warning: never lost, never an error in the flow.
    ``settings`` (default: the current ones) say which spool and which receiver.
    """
    settings = settings or get_settings()
    url = settings.feedback_url
    if url:
        import httpx

        token = settings.otlp_token.get_secret_value() if settings.otlp_token else None
        verify: Any = True
        if settings.otlp_certificate:  # a private CA (a self-signed receiver)
            import ssl

            verify = ssl.create_default_context(cafile=str(settings.otlp_certificate))
        # the receiver derives these at ingest from the stored run (and counts a body that
        # sends them), so they are not sent
        body = {k: v for k, v in record.items() if k not in _DERIVED_AT_INGEST}
        try:
            resp = httpx.post(
                url,
                json=body,
                headers={"Authorization": f"Bearer {token}"} if token else None,
                timeout=10,
                verify=verify,
            )
            if resp.status_code < 300:
                return
            why = f"HTTP {resp.status_code}: {resp.text[:200]}"
        except httpx.HTTPError as exc:
            why = str(exc) or type(exc).__name__
        logger.warning(
            "feedback not accepted by %s (%s); kept in the local spool %s",
            url,
            why,
            settings.spool_dir,
        )
    spool.append([record], settings.spool_dir)


def feedback(
    kpi: str,
    value: float | None = None,
    *,
    comment: str | None = None,
    run_id: str | None = None,
    item_key: str | None = None,
    source: str = "code",
    idempotency_key: str | None = None,
    expected: Any = None,
    step: str | None = None,
) -> str:
    """Attach a KPI value and/or text feedback to a run (or one item of it).

    Args:
        kpi: The KPI's name, e.g. ``"accuracy"`` or ``"csat"``.
        value: A finite number, or None for text-only feedback.
        comment: Natural-language critique (secrets are redacted).
        run_id: The Prefect flow-run id; default: the pipeline run in progress.
            A run the warehouse does not hold yet is checked against the Prefect
            API (an unknown run raises :class:`UnknownRunError`) and the feedback
            waits, pending, until the run arrives.
        item_key: The work item the feedback is about.
        source: Who gives it: ``"code"``, ``"human"``, ``"judge"``...
        idempotency_key: The same key for the same run is stored once.
        expected: The right answer, when known (a label, a number, any JSON value). The
            optimizer shows it, and step credit uses it to find the first step whose
            output lost it.
        step: The task (step) the feedback is about, for a per-step score; step credit
            blames the first step with bad per-step feedback.

    Returns:
        The feedback id; inside a pipeline run, an empty string when the feedback was
        refused (logged once per cause and counted, never raised: see the module).

    Raises:
        FeedbackError: Outside a pipeline run (or with ``GENOPT_STRICT=1``): the
            feedback cannot be recorded as given.
        SpoolError: Outside a pipeline run (or strict): the spool cannot be written.

    Example:
        >>> feedback("accuracy", float("inf"), run_id="8d6e5f2a-1b7c-4c1e-9a55-0c8f4f2b9e10")
        Traceback (most recent call last):
        ...
        prefect_genopt.feedback.FeedbackError: feedback value must be a finite number, got inf
    """
    try:
        record = build_record(
            kpi,
            value,
            comment=comment,
            run_id=run_id,
            item_key=item_key,
            source=source,
            idempotency_key=idempotency_key,
            expected=expected,
            step=step,
        )
    except FeedbackError as exc:
        _raise_outside_a_run(exc, f"feedback for KPI {kpi!r} not recorded: {exc}")
        return ""
    try:
        deliver(record)
    except spool.SpoolError as exc:
        _raise_outside_a_run(exc, f"feedback for KPI {record['kpi']!r} not recorded: {exc}")
    return str(record["feedback_id"])


def _raise_outside_a_run(exc: Exception, detail: str) -> None:
    """Re-raise ``exc`` outside a pipeline run or in strict mode; inside a run, count it
    (one warning per cause per run) and let the flow go on."""
    rc = run_var.get()
    if rc is None or incidents.strict():
        raise exc
    incidents.note(incidents.cause_of(exc), run_id=rc.run_id, detail=detail)

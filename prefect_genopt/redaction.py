"""Redaction of secrets and truncation of long values, applied before storage.

Every value that leaves a pipeline process (span attributes, task inputs and
outputs, LLM messages, feedback comments) goes through :func:`clean` at the
storage boundary, so the warehouse (and any optimizer prompt built from it)
never holds an API key or bearer token.

Example:
    >>> redact("Authorization: Bearer abc.def.ghi and key sk-proj-1234567890abcdefXYZ")
    'Authorization: Bearer [REDACTED] and key [REDACTED]'
    >>> to_text({"api_key": "hunter2", "q": "hi"})
    '{"api_key":"[REDACTED]","q":"hi"}'
    >>> truncate("x" * 100, 70)[-28:]
    '…[truncated 59 of 100 chars]'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

__all__ = [
    "redact",
    "patterns",
    "truncate",
    "clean",
    "to_text",
    "REDACTED",
    "BUILTIN_SECRET_PATTERNS",
    "Patterns",
    "is_secret_key",
]

REDACTED = "[REDACTED]"

#: Patterns whose match (or group 1, when the pattern has one) is replaced.
BUILTIN_SECRET_PATTERNS: tuple[str, ...] = (
    r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{6,}=*)",
    r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}",
    r"\b(?:ghp|gho|ghs|ghu|github_pat|glpat|xox[abposr])[-_][A-Za-z0-9_\-]{10,}",
    r"\bAKIA[0-9A-Z]{16}\b",
    r"\bAIza[0-9A-Za-z_\-]{35}\b",
    r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    r"(?i)\b(?:api[_-]?key|secret|password|passwd|(?:access|auth|refresh|api)?[_-]?token)"
    r"[\"']?\s*[:=]\s*[\"']?([^\s\"',;&]{4,})",
)

#: Mapping keys whose values are always redacted, whatever they look like.
SECRET_KEY_RE = re.compile(
    r"(?i)(api[_-]?key|secret|password|passwd|authorization|access[_-]?token|auth[_-]?token"
    r"|private[_-]?key|client[_-]?secret|^token$)"
)


#: Every built-in pattern needs one of these in the lower-cased text: text without
#: any of them is left alone after one scan instead of one scan per pattern.
_TRIGGER = re.compile(
    r"bearer|sk-|gh[opsu]_|github_pat|glpat|xox[abposr]|akia|aiza|eyj|key|secret|passw|token"
)


@dataclass(frozen=True)
class Patterns:
    """Compiled redaction rules: the built-in ones, behind a trigger scan, and extras."""

    builtin: tuple[re.Pattern[str], ...]
    extra: tuple[re.Pattern[str], ...]


@lru_cache(maxsize=16)
def _compiled(extra: tuple[str, ...]) -> Patterns:
    return Patterns(
        tuple(re.compile(p) for p in BUILTIN_SECRET_PATTERNS),
        tuple(re.compile(p) for p in extra),
    )


def patterns() -> Patterns:
    """The compiled secret patterns in force (built-in plus ``GENOPT_REDACT_PATTERNS``).

    Look them up once per batch of values and pass them to :func:`redact`.
    """
    from prefect_genopt.settings import get_settings

    return _compiled(tuple(get_settings().redact_patterns))


def _keep_label(m: re.Match[str]) -> str:
    """Replace group 1 of a match, keep the rest (``password=`` stays readable)."""
    base = m.start(0)
    s, e = m.span(1)
    whole = m.group(0)
    return whole[: s - base] + REDACTED + whole[e - base :]


def _apply(pats: tuple[re.Pattern[str], ...], text: str) -> str:
    for pat in pats:
        text = pat.sub(_keep_label if pat.groups else REDACTED, text)
    return text


def redact(text: str, pats: Patterns | None = None) -> str:
    """Replace secrets in ``text`` with ``[REDACTED]``.

    Args:
        text: Any text.
        pats: Compiled patterns (default: :func:`patterns`).
    """
    if not text:
        return text
    if pats is None:
        pats = patterns()
    if _TRIGGER.search(text.lower()):
        text = _apply(pats.builtin, text)
    if pats.extra:
        text = _apply(pats.extra, text)
    return text


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether values stored under this mapping key are always redacted."""
    return bool(SECRET_KEY_RE.search(key))


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, marking what was cut."""
    if len(text) <= limit:
        return text
    total = len(text)
    keep = max(0, limit - len(f"…[truncated {total} of {total} chars]"))
    return text[:keep] + f"…[truncated {total - keep} of {total} chars]"


def _scrub(value: Any, depth: int = 0) -> Any:
    """Redact values stored under secret-looking keys, recursively."""
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_key(k) else _scrub(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub(v, depth + 1) for v in value]
    return value


def _default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        try:
            return obj.model_dump(mode="json")
        except Exception:  # noqa: BLE001 - fall back to repr for odd models
            pass
    if isinstance(obj, set | frozenset):
        return sorted(map(repr, obj))
    return repr(obj)


def to_text(value: Any, pats: Patterns | None = None) -> str:
    """Serialize any Python value to compact JSON text (repr for the unknown), redacted."""
    if isinstance(value, str):
        return redact(value, pats)
    try:
        raw = orjson.dumps(
            _scrub(value),
            default=_default,
            option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY,
        ).decode()
    except (TypeError, orjson.JSONEncodeError):
        raw = repr(value)
    return redact(raw, pats)


def clean(value: Any, limit: int | None = None) -> str:
    """:func:`to_text`, then :func:`truncate` to ``limit`` (default: the setting)."""
    from prefect_genopt.settings import get_settings

    settings = get_settings()
    pats = _compiled(tuple(settings.redact_patterns))
    return truncate(to_text(value, pats), settings.max_value_chars if limit is None else limit)

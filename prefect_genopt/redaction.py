"""Redaction of secrets and truncation of long values, applied before storage.

Every value that leaves a pipeline process (span attributes, task inputs and
outputs, run inputs, LLM messages, feedback comments and expected answers, step
records) goes through this module at the storage boundary, so the warehouse (and any
optimizer prompt built from it) never holds an API key, a password or a token:

* **in text** (:func:`redact`): provider key shapes (``sk-...``, ``ghp_...``,
  ``AKIA...``, JWTs, PEM private keys...), ``Authorization: Bearer/Basic ...``,
  credentials in URLs (``postgresql://app:PASSWORD@host``), ``key=value`` and
  environment forms whose name ends in a secret word (``aws_secret_access_key=...``,
  ``AWS_SECRET_ACCESS_KEY=...``, ``"client_secret": "..."``, ``DB_PASS=...``) and
  English phrasing ("the password is X", "the token was X");
* **in structures** (:func:`scrub`): any value under a secret-named key
  (:func:`is_secret_key`), at any depth. The walker is iterative (no recursion
  limit) and marks cycles;
* **item keys** (:func:`redact_item_key`): an ``item_key`` holding a secret becomes
  a keyed hash (HMAC-SHA-256 with a per-warehouse key, :func:`hash_key`), so items
  stay apart without the secret being stored.

Example:
    >>> redact("Authorization: Bearer abc.def.ghi and key sk-proj-1234567890abcdefXYZ")
    'Authorization: Bearer [REDACTED] and key [REDACTED]'
    >>> redact("export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    'export AWS_SECRET_ACCESS_KEY=[REDACTED]'
    >>> redact("postgresql://app:s3cr3t-pw@db.internal:5432/prod")
    'postgresql://app:[REDACTED]@db.internal:5432/prod'
    >>> redact("the password is Tr0ub4dor&3, but the password is incorrect")
    'the password is [REDACTED], but the password is incorrect'
    >>> to_text({"api_key": "hunter2", "q": "hi", "max_tokens": 512})
    '{"api_key":"[REDACTED]","q":"hi","max_tokens":512}'
    >>> truncate("x" * 100, 70)[-28:]
    '…[truncated 59 of 100 chars]'
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

__all__ = [
    "redact",
    "patterns",
    "truncate",
    "clean",
    "to_text",
    "scrub",
    "redact_item_key",
    "hash_key",
    "REDACTED",
    "CYCLE",
    "BUILTIN_SECRET_PATTERNS",
    "Patterns",
    "is_secret_key",
]

logger = logging.getLogger("prefect_genopt.redaction")

REDACTED = "[REDACTED]"
#: What a value that contains itself is stored as, where it refers back.
CYCLE = "[cycle]"

#: Name endings of a secret in ``name=value`` text (``aws_secret_access_key``, ``DB_PASS``).
_SECRET_NAME_END = (
    r"(?:secrets?|passwords?|passwd|passphrase|passcode|token|api[_-]?key|apikey"
    r"|access[_-]?key|private[_-]?key|credentials?|[_.-]pwd|[_.-]pass)"
)
#: Words after "the password is" that describe it rather than give it.
_NOT_A_SECRET = (
    r"(?:incorrect|correct|wrong|invalid|valid|required|missing|expired|expiring|changed|reset"
    r"|rotated|revoked|updated|empty|blank|null|none|too|not|never|always|only|also|the|a|an"
    r"|being|set|weak|strong|stored|saved|hidden|masked|redacted|encrypted|hashed|shown"
    r"|visible|optional|needed|necessary|mandatory|case|ok|okay|fine|long|short|different"
    r"|same|unknown|known|secure|insecure|safe|unsafe|sent|used|protected|displayed|leaked"
    r"|compromised|generated|accepted|rejected|locked|unlocked|disabled|enabled|available"
    r"|unavailable|good|bad|here|there|what|which|that|this|your|my|our|their|his|her|its"
    r"|in|on|at|for|from|of|to|with|by|about|still|now|then|probably|definitely|please)\b"
)

#: A quote, also as JSON escapes it inside a string (``\"``): secrets in JSON text.
_Q = r"(?:\\?[\"'])"
#: Characters a secret value ends at (quotes, backslashes of JSON escapes, separators).
_END = r"\s\"'\\,;"

#: Patterns whose match (or group 1, when the pattern has one) is replaced.
BUILTIN_SECRET_PATTERNS: tuple[str, ...] = (
    # Authorization headers: Bearer or Basic, in header, JSON or curl form
    rf"(?i)\b(?:proxy-)?authorization\b{_Q}?\s*[:=]\s*{_Q}?(?:bearer|basic|token|digest)"
    rf"\s+([^{_END}]+)",
    # a bearer token elsewhere: long enough, with a digit or punctuation (not "the bearer of")
    r"(?i)\bbearer\s+((?=[A-Za-z0-9\-._~+/]*[0-9._~+/\-])[A-Za-z0-9\-._~+/]{8,}=*)",
    # Basic credentials elsewhere: base64 with a digit, + / or = ("Basic plan" is not)
    r"\bBasic\s+((?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]{8,}={0,2})",
    # provider key shapes
    r"\bsk-(?:ant-|proj-|svcacct-)?[A-Za-z0-9_\-]{16,}",
    r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
    r"\b(?:ghp|gho|ghs|ghu|ghr|github_pat|glpat|xox[abposr])[-_][A-Za-z0-9_\-]{10,}",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    r"\bAIza[0-9A-Za-z_\-]{35}\b",
    r"\bhf_[A-Za-z0-9]{30,}\b",
    r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z]+ )*PRIVATE KEY-----|\Z)",
    # credentials in a URL: scheme://user:PASSWORD@host
    rf"(?i)\b[a-z][a-z0-9+.\-]*://[^{_END}/:@<>]*:([^{_END}/@<>]+)@",
    # name=value, name: value, "name": "value", NAME=value, whose name ends in a secret word
    # (the name before the secret word does not matter: the separator must follow it)
    rf"(?i){_SECRET_NAME_END}{_Q}?\s*(?:[:=]|=>)\s*{_Q}?"
    rf"(?!(?:none|null|nil|true|false|undefined|required|optional|\*+)(?:[{_END}&<>]|$)|\$\{{)"
    rf"([^{_END}&<>]{{4,}})",
    # English: "the password is X", "my API key was: X", "the token is now X"
    r"(?i)\b(?:password|passphrase|passcode|secret(?: key)?|api[ _-]?key|access key|token)"
    rf"\s+(?:is|was)\s*:?\s+(?:now\s+|still\s+|set\s+to\s+|changed\s+to\s+)?(?:{_Q}|[“‘])?"
    rf"(?!{_NOT_A_SECRET})([^{_END}”’]{{3,}}[^{_END}”’.!?:)])",
)

#: Mapping keys whose values are always redacted, whatever they look like: keys that end
#: in a secret word (``client_secret``, ``AWS_SECRET_ACCESS_KEY``, ``x-api-key``,
#: ``Authorization``), ``secret_key`` anywhere, and ``auth``. Not ``max_tokens``,
#: ``token_count``, ``password_policy``, ``sort_key``.
SECRET_KEY_RE = re.compile(
    r"(?i)(?:secret[_.\-]?key|(?:secrets?|passwords?|passwd|passphrase|passcode|token"
    r"|api[_.\-]?key|apikey|access[_.\-]?key|private[_.\-]?key|credentials?|authorization"
    r"|cookie|[_.\-]pwd|[_.\-]pass)$|^auth$)"
)


#: For each built-in pattern (same order), words one of which its match always holds, in
#: lower case: a pattern runs only on text that holds one, so ordinary text costs a few
#: substring checks, and text that says "key" runs the two patterns about names.
BUILTIN_GATES: tuple[tuple[str, ...], ...] = (
    ("authoriz",),
    ("bearer",),
    ("basic",),
    ("sk-",),
    ("k_live", "k_test"),
    ("ghp", "gho", "ghs", "ghu", "ghr", "github_pat", "glpat", "xox"),
    ("akia", "asia"),
    ("aiza",),
    ("hf_",),
    ("eyj",),
    ("private key",),
    ("://",),
    ("secret", "pass", "token", "key", "credential", "pwd"),
    ("pass", "secret", "key", "token"),
)
_TRIGGER_WORDS: tuple[str, ...] = tuple(sorted({w for gate in BUILTIN_GATES for w in gate}))


@dataclass(frozen=True)
class Patterns:
    """Compiled redaction rules: the built-in ones, each behind its gate words, and extras."""

    builtin: tuple[re.Pattern[str], ...]
    extra: tuple[re.Pattern[str], ...]
    gates: tuple[frozenset[str], ...] = ()


@lru_cache(maxsize=16)
def _compiled(extra: tuple[str, ...]) -> Patterns:
    return Patterns(
        tuple(re.compile(p) for p in BUILTIN_SECRET_PATTERNS),
        tuple(re.compile(p) for p in extra),
        tuple(frozenset(g) for g in BUILTIN_GATES),
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


def _redact_builtin(text: str, pats: Patterns) -> str:
    """Apply each built-in pattern whose gate words the text holds."""
    low = text.lower()
    hits = {w for w in _TRIGGER_WORDS if w in low}
    if hits:
        for pat, gate in zip(pats.builtin, pats.gates, strict=True):
            if not hits.isdisjoint(gate):
                text = pat.sub(_keep_label if pat.groups else REDACTED, text)
    return text


#: Short values repeat from span to span (names, ids, arms, states): their redaction is
#: remembered (only the built-in patterns, which never change).
_SHORT = 256


@lru_cache(maxsize=8192)
def _redact_short(text: str) -> str:
    return _redact_builtin(text, _compiled(()))


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
    if len(text) <= _SHORT and pats.gates:
        text = _redact_short(text)
    else:
        text = _redact_builtin(text, pats if pats.gates else _compiled(()))
    if pats.extra:
        text = _apply(pats.extra, text)
    return text


@lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether values stored under this mapping key are always redacted.

    Example:
        >>> [is_secret_key(k) for k in ("client_secret", "AWS_SECRET_ACCESS_KEY", "max_tokens")]
        [True, True, False]
    """
    return bool(SECRET_KEY_RE.search(key))


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, marking what was cut."""
    if len(text) <= limit:
        return text
    total = len(text)
    keep = max(0, limit - len(f"…[truncated {total} of {total} chars]"))
    return text[:keep] + f"…[truncated {total - keep} of {total} chars]"


# -- structures -----------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """A pydantic model or a dataclass instance as a dict (so its keys are checked too)."""
    if hasattr(value, "model_dump") and not isinstance(value, type):
        try:
            return value.model_dump(mode="json")
        except Exception:  # noqa: BLE001 - fall back to the object (repr at serialisation)
            return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
    return value


def scrub(value: Any, text: Callable[[str], Any] | None = None) -> Any:
    """A copy of ``value`` with every value under a secret-named key redacted.

    Dicts, lists and tuples (tuples become lists), pydantic models and dataclasses are
    walked at any depth, iteratively (no recursion limit); a container met again inside
    itself becomes :data:`CYCLE`. Other values are kept as they are.

    Args:
        value: Any Python value.
        text: Applied to every string found (not to keys), e.g. :func:`redact`.

    Example:
        >>> deep = {"client_secret": "s3cr3t"}
        >>> for _ in range(20):
        ...     deep = {"next": deep}
        >>> "s3cr3t" in str(scrub(deep))
        False
        >>> loop = {"name": "a"}
        >>> loop["self"] = loop
        >>> scrub(loop)
        {'name': 'a', 'self': '[cycle]'}
    """
    value = _plain(value)
    if not isinstance(value, dict | list | tuple):
        return text(value) if text is not None and isinstance(value, str) else value
    root: Any = {} if isinstance(value, dict) else []
    ancestors = {id(value)}
    # each frame: (iterator over (key, value), the copy being filled, id of the original)
    stack: list[tuple[Any, Any, int]] = [(_entries(value), root, id(value))]
    while stack:
        entries, out, oid = stack[-1]
        for key, item in entries:
            if isinstance(key, str) and is_secret_key(key):
                _put(out, key, REDACTED)
                continue
            item = _plain(item)
            if isinstance(item, dict | list | tuple):
                if id(item) in ancestors:
                    _put(out, key, CYCLE)
                    continue
                child: Any = {} if isinstance(item, dict) else []
                _put(out, key, child)
                ancestors.add(id(item))
                stack.append((_entries(item), child, id(item)))
                break
            if text is not None and isinstance(item, str):
                item = text(item)
            _put(out, key, item)
        else:
            stack.pop()
            ancestors.discard(oid)
    return root


_NO_KEY = object()


def _entries(container: Any) -> Any:
    if isinstance(container, dict):
        return iter(container.items())
    return ((_NO_KEY, v) for v in container)


def _put(out: Any, key: Any, value: Any) -> None:
    if key is _NO_KEY:
        out.append(value)
    else:
        out[key] = value


#: kept for code that imported the old name
_scrub = scrub


def _default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        try:
            return obj.model_dump(mode="json")
        except Exception:  # noqa: BLE001 - fall back to repr for odd models
            pass
    if isinstance(obj, set | frozenset):
        return sorted(map(repr, obj))
    return repr(obj)


_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _leaf_json(value: Any) -> str:
    try:
        return orjson.dumps(value, default=_default, option=_JSON_OPTIONS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return orjson.dumps(repr(value)).decode()


def _dumps_deep(value: Any) -> str:
    """JSON text of a scrubbed (cycle-free) value of any depth, without recursion (orjson
    stops at 254 levels)."""
    parts: list[str] = []
    stack: list[tuple[bool, Any]] = [(False, value)]  # (is literal text, value)
    while stack:
        literal, item = stack.pop()
        if literal:
            parts.append(item)
        elif isinstance(item, dict) and item:
            stack.append((True, "}"))
            pairs = list(item.items())
            for i in range(len(pairs) - 1, -1, -1):
                k, v = pairs[i]
                stack.append((False, v))
                key = orjson.dumps(k if isinstance(k, str) else str(k)).decode()
                stack.append((True, ("," if i else "") + key + ":"))
            stack.append((True, "{"))
        elif isinstance(item, list | tuple) and item:
            stack.append((True, "]"))
            for i in range(len(item) - 1, -1, -1):
                stack.append((False, item[i]))
                if i:
                    stack.append((True, ","))
            stack.append((True, "["))
        else:
            parts.append(_leaf_json(item))
    return "".join(parts)


def to_text(value: Any, pats: Patterns | None = None) -> str:
    """Serialize any Python value to compact JSON text (repr for the unknown), redacted.

    Example:
        >>> to_text({"headers": {"Authorization": "Basic Zm9vOmJhcg=="}, "n": 1})
        '{"headers":{"Authorization":"[REDACTED]"},"n":1}'
    """
    if isinstance(value, str):
        return redact(value, pats)
    scrubbed = scrub(value)
    try:
        raw = orjson.dumps(scrubbed, default=_default, option=_JSON_OPTIONS).decode()
    except orjson.JSONEncodeError:  # deeper than orjson goes
        raw = _dumps_deep(scrubbed)
    except TypeError:
        raw = repr(scrubbed)
    return redact(raw, pats)


def clean(value: Any, limit: int | None = None) -> str:
    """:func:`to_text`, then :func:`truncate` to ``limit`` (default: the setting)."""
    from prefect_genopt.settings import get_settings

    settings = get_settings()
    pats = _compiled(tuple(settings.redact_patterns))
    return truncate(to_text(value, pats), settings.max_value_chars if limit is None else limit)


# -- item keys ------------------------------------------------------------------------

_key_lock = threading.Lock()
_keys: dict[tuple[str | None, Path], bytes] = {}
_ITEM_KEY_PREFIX = "[REDACTED:"
_HASHED_ITEM_KEY = re.compile(r"\[REDACTED:[0-9a-f]{16}\]")


def hash_key() -> bytes:
    """The key of the keyed hash that replaces secret item keys.

    ``GENOPT_REDACT_KEY`` when set (the same on every machine that sends to one
    warehouse); else a random key kept in ``<warehouse>.redact-key`` beside the
    warehouse file (created once, readable by its owner only). When that file cannot be
    written, a key for this process only (items still stay apart within it).
    """
    from prefect_genopt.settings import get_settings

    settings = get_settings()
    cache_key = (settings.redact_key, settings.warehouse_path)
    key = _keys.get(cache_key)
    if key is not None:
        return key
    with _key_lock:
        key = _keys.get(cache_key)
        if key is None:
            if settings.redact_key:
                key = settings.redact_key.encode()
            else:
                key = _key_file(settings.warehouse_path)
            _keys[cache_key] = key
    return key


def _key_file(warehouse: Path) -> bytes:
    """The key kept beside ``warehouse``, made on first use (written whole under a private
    name, then linked in, so no process ever reads half a key)."""
    path = warehouse.with_name(warehouse.name + ".redact-key")
    try:
        for _ in range(3):
            try:
                data = path.read_bytes().strip()
            except FileNotFoundError:
                data = b""
            if data:
                return data
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, secrets.token_hex(32).encode())
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process made it first: read theirs
            finally:
                tmp.unlink(missing_ok=True)
        why = "it stays empty"
    except OSError as exc:
        why = str(exc)
    logger.warning(
        "cannot keep the item-key hash key in %s (%s): using a key for this process only; "
        "set GENOPT_REDACT_KEY",
        path,
        why,
    )
    return secrets.token_bytes(32)


def redact_item_key(item_key: str | None, pats: Patterns | None = None) -> str | None:
    """An item key as stored: unchanged, unless it holds a secret; then a keyed hash of
    it (``[REDACTED:<16 hex>]``), so two secret keys stay two items and the same one
    stays one, without the secret being stored.

    Example:
        >>> redact_item_key("ticket-42")
        'ticket-42'
        >>> a = redact_item_key("sk-proj-abcdefghijklmnopqrstuvwx")
        >>> b = redact_item_key("sk-proj-zyxwvutsrqponmlkjihgfedc")
        >>> a.startswith("[REDACTED:") and a != b
        True
        >>> redact_item_key(a) == a
        True
    """
    if not item_key or _HASHED_ITEM_KEY.fullmatch(item_key):
        return item_key
    if redact(item_key, pats) == item_key:
        return item_key
    digest = hmac.new(hash_key(), item_key.encode(), hashlib.sha256).hexdigest()[:16]
    return f"{_ITEM_KEY_PREFIX}{digest}]"

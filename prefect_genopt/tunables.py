"""Tunables: what a pipeline lets the optimizer change.

A :class:`Tunables` subclass is an immutable pydantic model whose fields are
declared with :func:`prompt`, :func:`numeric`, :func:`choice` or :func:`demos`.
Each field carries its *kind*, its bounds and a description; the description
becomes a constraint the optimizer must respect. An instance is a *param set*:
immutable and content-addressed (the same values always have the same id).

Example:
    >>> class TriageParams(Tunables):
    ...     prompt: str = prompt_field("Classify the ticket.", description="system prompt")
    ...     threshold: float = numeric(0.5, ge=0.0, le=1.0, description="min confidence")
    ...     model: str = choice("small", options=["small", "large"], description="model size")
    >>> a, b = TriageParams(), TriageParams()
    >>> a.param_set_id == b.param_set_id
    True
    >>> TriageParams(threshold=0.7).param_set_id == a.param_set_id
    False
    >>> TriageParams.field_kinds()
    {'prompt': 'prompt', 'threshold': 'numeric', 'model': 'choice'}

A default the field itself refuses (outside its bounds, not one of its options, too long)
fails when the class is defined, naming the field, rather than in every run:

    >>> class Bad(Tunables):  # doctest: +ELLIPSIS
    ...     threshold: float = numeric(1.5, ge=0, le=1, description="min confidence")
    Traceback (most recent call last):
    ...
    prefect_genopt.tunables.TunablesDefinitionError: Bad.threshold: default 1.5 is refused ... 1
"""

from __future__ import annotations

import contextvars
import hashlib
import math
from functools import cache
from typing import Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prefect_genopt.errors import BadInputError

__all__ = [
    "TunablesDefinitionError",
    "Tunables",
    "prompt",
    "prompt_field",
    "numeric",
    "choice",
    "demos",
    "param_set_id",
    "canonical_json",
    "KIND_KEY",
]

KIND_KEY = "genopt_kind"
Kind = Literal["prompt", "numeric", "choice", "demos"]

# Records which params the current task read: set by the task wrapper, filled
# by Tunables.__getattribute__ (a dict name -> value, or None when not tracking).
_reads: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "genopt_param_reads", default=None
)


def canonical_json(values: dict[str, Any]) -> bytes:
    """Deterministic JSON (sorted keys) used to content-address param sets."""
    return orjson.dumps(values, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def param_set_id(values: dict[str, Any]) -> str:
    """The content address of a param set: ``ps_`` + 16 hex chars of SHA-256.

    Example:
        >>> param_set_id({"b": 1, "a": 2}) == param_set_id({"a": 2, "b": 1})
        True
    """
    return "ps_" + hashlib.sha256(canonical_json(values)).hexdigest()[:16]


@cache
def _field_names(cls: type) -> frozenset[str]:
    return frozenset(cls.model_fields)


class TunablesDefinitionError(BadInputError, ValueError):
    """A Tunables class declares a field its own default does not satisfy (outside its
    bounds, not one of its options...); raised when the class is defined, naming the field."""


def _check_defaults(cls: type[Tunables]) -> None:
    """Raise :class:`TunablesDefinitionError` for the first field of ``cls`` whose default
    the field refuses (fields without a default are left to the caller)."""
    for name, info in cls.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if "enum" in extra and not info.is_required():
            default = info.get_default(call_default_factory=True)
            if default not in extra["enum"]:
                raise TunablesDefinitionError(
                    f"{cls.__name__}.{name}: default {default!r} is not one of its options "
                    f"{extra['enum']!r}"
                )
    try:
        cls()
    except ValidationError as exc:
        for err in exc.errors():
            if err["type"] == "missing" or not err["loc"]:
                continue
            name = str(err["loc"][0])
            info = cls.model_fields.get(name)
            default = info.get_default(call_default_factory=True) if info else err["input"]
            raise TunablesDefinitionError(
                f"{cls.__name__}.{name}: default {default!r} is refused by the field: {err['msg']}"
            ) from None


class Tunables(BaseModel):
    """Base class of a pipeline's tunable parameters (an immutable param set).

    Subclass it and declare fields with :func:`prompt`, :func:`numeric`,
    :func:`choice` or :func:`demos`. Unknown fields are refused; instances are
    frozen, so a param set is never edited in place: ``p.model_copy(update=...)``
    makes a new one with a new id.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    _genopt_kinds: ClassVar[dict[str, str]]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        """Check each field's default against the field, once the class is built."""
        super().__pydantic_init_subclass__(**kwargs)
        _check_defaults(cls)

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if name[0] != "_":
            reads = _reads.get()
            if reads is not None and name in _field_names(type(self)):
                reads[name] = value
        return value

    @model_validator(mode="after")
    def _check_choices(self) -> Tunables:
        for name, info in type(self).model_fields.items():
            extra = info.json_schema_extra
            if isinstance(extra, dict) and "enum" in extra:
                value = self.__dict__[name]
                if value not in extra["enum"]:
                    raise ValueError(f"{name}: {value!r} is not one of {extra['enum']!r}")
        return self

    @property
    def param_set_id(self) -> str:
        """Content-addressed id of these values (same values, same id)."""
        return param_set_id(self.values())

    def values(self) -> dict[str, Any]:
        """The parameter values as a JSON-compatible dict."""
        return self.model_dump(mode="json")

    @classmethod
    def field_kinds(cls) -> dict[str, str]:
        """Map of field name to its kind (``prompt``, ``numeric``, ``choice``, ``demos``)."""
        out = {}
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            out[name] = str(extra.get(KIND_KEY, "other"))
        return out

    @classmethod
    def schema_json(cls) -> dict[str, Any]:
        """The JSON schema of the Tunables (kinds, bounds, descriptions, defaults)."""
        return cls.model_json_schema()

    @classmethod
    def schema_hash(cls) -> str:
        """A hash of the JSON schema; a changed schema gets a new pipeline schema version."""
        return hashlib.sha256(canonical_json(cls.schema_json())).hexdigest()[:16]


def _extra(kind: Kind, **more: Any) -> dict[str, Any]:
    return {KIND_KEY: kind, **{k: v for k, v in more.items() if v is not None}}


def prompt(
    default: str,
    *,
    description: str,
    max_length: int = 8000,
    min_length: int = 1,
) -> Any:
    """A prompt (free text) parameter.

    Args:
        default: The starting text.
        description: What the prompt is for; shown to the optimizer as a constraint.
        max_length: Longest text accepted (the optimizer's answers are held to it).
        min_length: Shortest text accepted.
    """
    return Field(
        default,
        description=description,
        max_length=max_length,
        min_length=min_length,
        json_schema_extra=_extra("prompt"),
    )


prompt_field = prompt  # an alias usable inside class bodies that also have a `prompt` field


def numeric(
    default: float | int,
    *,
    description: str,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
) -> Any:
    """A numeric parameter with optional bounds.

    Args:
        default: The starting value (its type, int or float, is the field's type).
        description: What the number controls; shown to the optimizer.
        ge, le, gt, lt: Bounds, as in pydantic.
    """
    if isinstance(default, float) and not math.isfinite(default):
        raise ValueError("numeric default must be finite")
    return Field(
        default,
        description=description,
        ge=ge,
        le=le,
        gt=gt,
        lt=lt,
        allow_inf_nan=False,
        json_schema_extra=_extra("numeric"),
    )


def choice(
    default: Any,
    *,
    options: list[Any] | None = None,
    description: str,
    choices: list[Any] | None = None,
) -> Any:
    """A parameter that takes one of a fixed list of values.

    A default that is not one of the options fails when the Tunables class is defined
    (:class:`TunablesDefinitionError`, naming the field).

    Args:
        default: The starting value; must be one of ``options``.
        options: The allowed values.
        description: What the choice controls; shown to the optimizer.
        choices: Another name for ``options`` (give one of the two).

    Example:
        >>> class P(Tunables):
        ...     size: str = choice("s", choices=["s", "l"], description="model size")
        >>> P.model_json_schema()["properties"]["size"]["enum"]
        ['s', 'l']
    """
    if options is not None and choices is not None and list(options) != list(choices):
        raise TunablesDefinitionError("give options= or choices= (the same thing), not both")
    allowed = options if options is not None else choices
    if allowed is None:
        raise TunablesDefinitionError("choice() needs its options: choice(default, options=[...])")
    options = list(allowed)
    return Field(
        default,
        description=description,
        json_schema_extra=_extra("choice", enum=list(options)),
    )


def demos(
    default: list[dict[str, Any]] | None = None,
    *,
    description: str,
    max_items: int = 16,
    step: str | None = None,
) -> Any:
    """A list of few-shot demonstrations (dicts such as ``{"input": ..., "output": ...}``).

    Args:
        default: The starting demos (default: none).
        description: What the demos illustrate; shown to the optimizer.
        max_items: Most demos allowed.
        step: The task whose verified experiences the optimizer picks the demos from
            (``@genopt.task(record=True)``, then ``genopt.harvest``). The optimizer
            answers with experience ids; each becomes ``{"input", "output",
            "experience_id"}``. Without it, the optimizer writes demos itself.
    """
    # a plain default (pydantic copies it for each instance), not a factory: the JSON
    # schema then carries it, and a hand-written param set merged over the schema's
    # defaults (a rollout's --params) is the param set the pipeline runs
    return Field(
        list(default or []),
        description=description,
        max_length=max_items,
        json_schema_extra=_extra("demos", genopt_step=step),
    )

"""Checking an LLM's suggestion against the pipeline's Tunables schema.

A suggestion is ``{name: value}``. Each value is cast where the intent is plain
(``"0.3"`` for a number, ``2.0`` for an integer) and the whole resulting param
set is checked against the pipeline's JSON schema (types, bounds, choices,
lengths). Names that are not editable are *ignored* and counted; values equal to
the current ones are *unchanged* and counted. A suggestion with any invalid
value, or with nothing left to change, is refused with a reason: it never
becomes a candidate.

Example:
    >>> schema = {"type": "object", "properties": {
    ...     "t": {"type": "number", "minimum": 0, "maximum": 1},
    ...     "p": {"type": "string", "maxLength": 10}}}
    >>> r = check_suggestion({"t": "0.3", "x": 1}, schema, {"t": 0.5, "p": "hi"}, ["t", "p"])
    >>> r.values, r.diff, r.ignored
    ({'t': 0.3, 'p': 'hi'}, {'t': {'from': 0.5, 'to': 0.3}}, ['x'])
    >>> try:
    ...     check_suggestion({"t": 7}, schema, {"t": 0.5, "p": "hi"}, ["t", "p"])
    ... except SuggestionError as exc:
    ...     print(exc)
    t: 7.0 is greater than the maximum of 1
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from prefect_genopt.errors import BadInputError

__all__ = ["SuggestionError", "Checked", "check_suggestion", "editable_fields"]


class SuggestionError(BadInputError, ValueError):
    """A suggestion that cannot become a candidate; the message says why."""

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # 'invalid', 'no_change' or 'not_editable'


@dataclass
class Checked:
    """A suggestion that passed: the full candidate values and what changed."""

    values: dict[str, Any]
    diff: dict[str, dict[str, Any]]
    ignored: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def editable_fields(schema: dict[str, Any], editable: list[str] | None) -> list[str]:
    """The editable field names (all schema properties when ``editable`` is None).

    Raises:
        ValueError: ``editable`` names a field the schema does not have.
    """
    props = list((schema.get("properties") or {}).keys())
    if editable is None:
        return props
    unknown = [n for n in editable if n not in props]
    if unknown:
        raise ValueError(
            f"starting_artifact.editable names unknown fields {unknown}; fields: {props}"
        )
    return list(editable)


def _cast(value: Any, spec: dict[str, Any]) -> Any:
    typ = spec.get("type")
    if typ in ("number", "integer") and isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return value
    if typ == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (
        typ == "integer"
        and isinstance(value, float)
        and math.isfinite(value)
        and value.is_integer()
    ):
        return int(value)
    if typ == "boolean" and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _describe(error: jsonschema.ValidationError, values: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "<param set>"
    message = error.message
    if len(message) > 300:
        message = message[:300] + "..."
    return f"{where}: {message}"


def check_suggestion(
    suggestion: Any,
    schema: dict[str, Any],
    current: dict[str, Any],
    editable: list[str],
) -> Checked:
    """Cast and check ``suggestion``; return the candidate or raise :class:`SuggestionError`.

    Args:
        suggestion: The LLM's ``{name: value}``.
        schema: The pipeline's Tunables JSON schema (from the warehouse).
        current: The parent param set's values.
        editable: The names the optimizer may change.
    """
    if not isinstance(suggestion, dict):
        raise SuggestionError(
            f"'suggestion' must be an object of parameter values, got {type(suggestion).__name__}"
        )
    if not suggestion:
        raise SuggestionError("the suggestion is empty (no change asked)", kind="no_change")
    props = schema.get("properties") or {}
    ignored = [k for k in suggestion if k not in editable]
    values = dict(current)
    diff: dict[str, dict[str, Any]] = {}
    unchanged: list[str] = []
    for name, raw in suggestion.items():
        if name in ignored:
            continue
        value = _cast(raw, props.get(name, {}))
        if isinstance(value, float) and not math.isfinite(value):
            raise SuggestionError(f"{name}: {value} is not a finite number")
        if value == current.get(name) and type(value) is type(current.get(name)):
            unchanged.append(name)
            continue
        values[name] = value
        diff[name] = {"from": current.get(name), "to": value}
    errors = sorted(
        jsonschema.Draft202012Validator(schema).iter_errors(values),
        key=lambda e: [str(p) for p in e.absolute_path],
    )
    changed_errors = [e for e in errors if not e.absolute_path or e.absolute_path[0] in diff]
    if changed_errors:
        raise SuggestionError("; ".join(_describe(e, values) for e in changed_errors))
    if not diff:
        if ignored and not unchanged:
            raise SuggestionError(
                f"no editable parameter in the suggestion: {', '.join(map(repr, ignored))} "
                f"cannot be changed (editable: {', '.join(editable)})",
                kind="not_editable",
            )
        raise SuggestionError(
            "every suggested value equals the current one "
            f"({', '.join(unchanged)}): nothing would change",
            kind="no_change",
        )
    return Checked(values=values, diff=diff, ignored=ignored, unchanged=unchanged)

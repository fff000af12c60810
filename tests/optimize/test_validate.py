"""Suggestions are cast and checked against the Tunables schema; invalid ones never pass."""

from __future__ import annotations

import pytest

import prefect_genopt as genopt
from prefect_genopt.optimize.validate import SuggestionError, check_suggestion, editable_fields
from prefect_genopt.tunables import param_set_id


class P(genopt.Tunables):
    prompt: str = genopt.prompt("Classify.", description="system prompt", max_length=40)
    temperature: float = genopt.numeric(0.0, ge=0.0, le=1.0, description="temperature")
    retries: int = genopt.numeric(1, ge=0, le=5, description="retries")
    size: str = genopt.choice("small", options=["small", "large"], description="model size")


SCHEMA = P.schema_json()
CURRENT = P().values()
ALL = editable_fields(SCHEMA, None)


def check(suggestion: object, editable: list[str] | None = None):
    return check_suggestion(suggestion, SCHEMA, CURRENT, editable or ALL)


def test_valid_suggestion_gives_full_values_diff_and_the_pipelines_param_set_id() -> None:
    r = check({"prompt": "Label: billing, bug or other.", "temperature": "0.2", "retries": 3.0})
    assert r.values["temperature"] == 0.2 and isinstance(r.values["retries"], int)
    assert r.diff == {
        "prompt": {"from": "Classify.", "to": "Label: billing, bug or other."},
        "temperature": {"from": 0.0, "to": 0.2},
        "retries": {"from": 1, "to": 3},
    }
    # the candidate id is the id a run with these values records
    assert param_set_id(r.values) == P(**r.values).param_set_id


@pytest.mark.parametrize(
    ("suggestion", "message"),
    [
        ({"temperature": 1.5}, "temperature: 1.5 is greater than the maximum of 1"),
        ({"temperature": -1}, "temperature: -1.0 is less than the minimum of 0"),
        ({"temperature": "warm"}, "temperature: 'warm' is not of type 'number'"),
        ({"temperature": float("nan")}, "temperature: nan is not a finite number"),
        ({"retries": 2.5}, "retries: 2.5 is not of type 'integer'"),
        ({"size": "huge"}, "size: 'huge' is not one of ['small', 'large']"),
        ({"prompt": "x" * 41}, "prompt: "),
        ({"prompt": ""}, "prompt: '' should be non-empty"),
        ({"prompt": ["a", "b"]}, "prompt: ['a', 'b'] is not of type 'string'"),
    ],
)
def test_invalid_values_are_refused_with_the_reason(suggestion: dict, message: str) -> None:
    with pytest.raises(SuggestionError) as err:
        check(suggestion)
    assert err.value.kind == "invalid"
    assert message in str(err.value)


def test_one_bad_value_refuses_the_whole_suggestion() -> None:
    with pytest.raises(SuggestionError, match="temperature"):
        check({"prompt": "Better prompt.", "temperature": 9})


def test_unknown_and_non_editable_names_are_ignored_and_counted() -> None:
    r = check({"prompt": "New.", "inputs": "x", "temperature": 0.5}, editable=["prompt"])
    assert set(r.diff) == {"prompt"}
    assert sorted(r.ignored) == ["inputs", "temperature"]


def test_only_unknown_names_is_refused() -> None:
    with pytest.raises(SuggestionError, match="no editable parameter") as err:
        check({"model_name": "gpt-5"})
    assert err.value.kind == "not_editable"


def test_empty_and_unchanged_suggestions_are_no_change() -> None:
    with pytest.raises(SuggestionError) as err:
        check({})
    assert err.value.kind == "no_change"
    with pytest.raises(SuggestionError, match="equals the current one") as err:
        check({"prompt": "Classify.", "temperature": 0.0})
    assert err.value.kind == "no_change"
    r = check({"prompt": "Classify.", "temperature": 0.3})
    assert r.unchanged == ["prompt"] and set(r.diff) == {"temperature"}


def test_not_an_object_is_refused() -> None:
    with pytest.raises(SuggestionError, match="must be an object"):
        check(["prompt", "x"])


def test_editable_names_must_exist() -> None:
    with pytest.raises(ValueError, match="unknown fields"):
        editable_fields(SCHEMA, ["prompt", "nope"])

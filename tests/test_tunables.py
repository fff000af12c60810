"""Tunables: kinds, bounds, immutability, content addressing."""

from __future__ import annotations

import pydantic
import pytest

import prefect_genopt as genopt
from prefect_genopt.tunables import param_set_id


class P(genopt.Tunables):
    prompt: str = genopt.prompt("Classify.", description="system prompt", max_length=50)
    threshold: float = genopt.numeric(0.5, ge=0.0, le=1.0, description="cut-off")
    k: int = genopt.numeric(3, ge=1, le=10, description="retrieved docs")
    model: str = genopt.choice("small", options=["small", "large"], description="size")
    shots: list[dict] = genopt.demos(description="examples", max_items=2)


def test_same_values_same_id_and_order_does_not_matter() -> None:
    assert P().param_set_id == P().param_set_id
    assert P(threshold=0.7).param_set_id != P().param_set_id
    assert param_set_id({"a": 1, "b": 2}) == param_set_id({"b": 2, "a": 1})
    assert P().param_set_id.startswith("ps_") and len(P().param_set_id) == 19


def test_kinds_and_schema() -> None:
    assert P.field_kinds() == {
        "prompt": "prompt",
        "threshold": "numeric",
        "k": "numeric",
        "model": "choice",
        "shots": "demos",
    }
    props = P.schema_json()["properties"]
    assert props["threshold"]["minimum"] == 0.0 and props["threshold"]["maximum"] == 1.0
    assert props["model"]["enum"] == ["small", "large"]
    assert props["prompt"]["description"] == "system prompt"
    assert props["prompt"]["maxLength"] == 50


@pytest.mark.parametrize(
    "bad",
    [
        {"threshold": 1.5},
        {"threshold": float("nan")},
        {"k": 0},
        {"model": "huge"},
        {"prompt": "x" * 51},
        {"prompt": ""},
        {"shots": [{}, {}, {}]},
        {"unknown": 1},
    ],
)
def test_bounds_choices_lengths_unknown_names_are_enforced(bad: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        P(**bad)


def test_param_sets_are_immutable() -> None:
    p = P()
    with pytest.raises(pydantic.ValidationError):
        p.threshold = 0.9  # type: ignore[misc]
    q = p.model_copy(update={"threshold": 0.9})
    assert q.param_set_id != p.param_set_id


def test_bad_declarations_fail_early() -> None:
    with pytest.raises(ValueError, match=r"Bad\.size: default 'x' is not one of its options"):

        class Bad(genopt.Tunables):
            size: str = genopt.choice("x", options=["a"], description="d")

    with pytest.raises(ValueError, match="finite"):
        genopt.numeric(float("inf"), description="d")
    with pytest.raises(TypeError, match="Tunables subclass"):
        genopt.pipeline(name="x", params=dict)  # type: ignore[arg-type]


def test_a_default_outside_its_own_bounds_fails_at_class_definition_naming_the_field() -> None:
    from prefect_genopt.errors import BadInputError

    with pytest.raises(BadInputError, match=r"Knobs\.level: default 1\.5 is refused") as raised:

        class Knobs(genopt.Tunables):
            ok: float = genopt.numeric(0.5, ge=0, le=1, description="fine")
            level: float = genopt.numeric(1.5, ge=0, le=1, description="min confidence")

    assert "less than or equal to 1" in str(raised.value)
    with pytest.raises(ValueError, match=r"Short\.prompt: default '' is refused"):

        class Short(genopt.Tunables):
            prompt: str = genopt.prompt("", description="empty")

    with pytest.raises(ValueError, match=r"Many\.shots: default .* is refused"):

        class Many(genopt.Tunables):
            shots: list = genopt.demos(
                [{"input": i} for i in range(3)], max_items=2, description="d"
            )

    class Fine(genopt.Tunables):  # defaults on the bounds are fine
        level: float = genopt.numeric(1.0, ge=0, le=1, description="d")
        size: str = genopt.choice("a", options=["a", "b"], description="d")

    assert Fine().values() == {"level": 1.0, "size": "a"}


def test_choice_takes_choices_as_an_alias_of_options() -> None:
    class A(genopt.Tunables):
        size: str = genopt.choice("s", choices=["s", "l"], description="model size")

    class B(genopt.Tunables):
        size: str = genopt.choice("s", options=["s", "l"], description="model size")

    assert A.schema_json()["properties"] == B.schema_json()["properties"]
    assert A(size="l").size == "l"
    with pytest.raises(pydantic.ValidationError, match="not one of"):
        A(size="xl")
    with pytest.raises(ValueError, match="not one of its options"):

        class C(genopt.Tunables):
            size: str = genopt.choice("xl", choices=["s", "l"], description="d")

    with pytest.raises(ValueError, match="options= or choices="):
        genopt.choice("s", options=["s"], choices=["s", "l"], description="d")
    with pytest.raises(ValueError, match="needs its options"):
        genopt.choice("s", description="d")

"""`async_tasks.validation.explain`: msgspec's errors as the field a client sent and a sentence."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from async_tasks.validation import Problem, explain, field_type


class Item(msgspec.Struct, rename="camel"):
    size_kb: Annotated[int, msgspec.Meta(le=10)]
    kind: Literal["a", "b"] = "a"


class Body(msgspec.Struct):
    items: list[Item]


def error_of(value: object, of: type) -> msgspec.ValidationError:
    try:
        msgspec.convert(value, of)
    except msgspec.ValidationError as exc:
        return exc
    raise AssertionError("the value was valid")


def test_a_nested_field_is_named_as_the_client_spells_it_with_its_limit_in_words() -> None:
    """The path msgspec reports becomes the client's field name, under what the client calls the value."""
    error = error_of({"items": [{"sizeKb": 1}, {"sizeKb": 11}]}, Body)
    assert explain(error, Body, within="params") == Problem(
        "params.items[1].sizeKb", "params.items[1].sizeKb must be at most 10."
    )


def test_a_missing_field_is_the_field_and_a_literal_lists_its_values() -> None:
    """A missing field names the field inside the object; a bad literal lists the valid values."""
    assert explain(error_of({}, Body), Body) == Problem("items", "items is required.")
    wrong = error_of({"items": [{"sizeKb": 1, "kind": "c"}]}, Body)
    assert explain(wrong, Body).message == "items[0].kind must be one of a, b (got 'c')."


def test_an_error_already_located_in_a_part_of_the_body_reads_the_same() -> None:
    """An error about a part (Litestar gives the part's path, msgspec the path inside it) names the same field."""
    part = field_type(Body, ".items[0]")
    assert explain("Expected `int` <= 10 - at `$.sizeKb`", part, within="items[0]") == Problem(
        "items[0].sizeKb", "items[0].sizeKb must be at most 10."
    )

"""Validation errors as sentences for a person.

msgspec reports ``Expected `int` <= 120000 - at `$.delayMs```; a client should read
``delayMs must be at most 120000.``. `describe` turns one msgspec message about one
field into such a sentence: it names the field as the client spells it, says limits
in words and, when the type is known, lists the valid values of an enum or literal
and the known fields of an object::

    >>> describe("delayMs", "Expected `int` <= 120000")
    'delayMs must be at most 120000.'
    >>> describe("status", "Invalid enum value 'processing'", TaskStatus)
    "status must be one of pending, running, completed, failed, cancelled (got 'processing')."

`explain` is what callers use: a msgspec error about a value of a known type, as the
field the client sent and that sentence (it finds the field's type with `field_type`
from the root type and msgspec's path, such as ``.items[0]``)::

    >>> explain("Expected `int` <= 120000 - at `$.delayMs`", SampleParams, within="params")
    Problem(field='params.delayMs', message='params.delayMs must be at most 120000.')

The engine uses it for task params, the web layer for request bodies and query and
path parameters; both answer with the ``invalid_params`` error code.
"""

from __future__ import annotations

import enum
import re
from typing import Any, NamedTuple

import msgspec
import msgspec.inspect as mi

#: How msgspec appends the location of an error: `` - at `$.a.b[0]` ``.
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_BOUND = re.compile(r"^Expected `(?P<type>[^`]+)` (?P<op><=|>=|<|>) (?P<bound>\S+)$")
_LENGTH = re.compile(r"^Expected `(?P<type>[^`]+)` of length (?P<op><=|>=) (?P<bound>\d+)$")
_MULTIPLE = re.compile(r"^Expected `(?P<type>[^`]+)` that is a multiple of (?P<bound>\S+)$")
_PATTERN = re.compile(r"^Expected `str` matching regex (?P<pattern>.+)$", re.S)
_GOT = re.compile(r"^Expected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`$")
_ENUM = re.compile(r"^Invalid enum value (?P<value>.+)$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]+)`$")
_TOKEN = re.compile(r"\.(?P<name>[^.\[]+)|\[(?P<index>\d+)\]|\[(?P<key>[^\]]*)\]")

_NOUNS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "an array",
    "object": "an object",
    "null": "null",
    "bytes": "base64 text",
    "datetime": "a date and time (RFC 3339)",
    "date": "a date (YYYY-MM-DD)",
    "time": "a time",
    "uuid": "a UUID",
    "decimal": "a decimal number",
}
_OPS = {"<=": "at most", ">=": "at least", "<": "less than", ">": "greater than"}
#: Characters of a received value quoted back.
_MAX_GOT = 40
#: Fields listed in a sentence before "and N more".
_MAX_LISTED = 30


class Problem(NamedTuple):
    """One invalid value, for a person."""

    #: The field as the client spells it (``params.items[2]``); empty for the whole body.
    field: str
    #: One sentence about it.
    message: str


def explain(
    error: msgspec.ValidationError | str, root: Any = None, *, within: str = "", got: str | None = None
) -> Problem:
    """msgspec's `error` about a value of type `root`, as the field and a sentence.

    Args:
        error: the error, or its message (with or without msgspec's `` - at `$...``).
        root: the value's type (a type or a `field_type` node), for the field's
            limits and valid values; None when unknown.
        within: what the client calls the value (``params`` for a task's params, a
            body field's path when the error is about a part of the body, a query
            parameter's name); empty for the request body itself.
        got: the raw value the client sent, when it is text (query or path values).
    """
    message, path = split_location(str(error))
    field = join_field(within, path)
    node = field_type(root, path) if root is not None else None
    return Problem(field_of(field, message), describe(field, message, node, got=got))


def split_location(message: str) -> tuple[str, str]:
    """(the message without its location, the path after ``$``: ``.a.b[0]`` or ``""``)."""
    match = _AT.match(message)
    if match is None:  # pragma: no cover - the pattern matches any text
        return message, ""
    return match["message"], match["path"] or ""


def join_field(parent: str, child: str) -> str:
    """``params`` + ``.delayMs`` -> ``params.delayMs``; an empty side is dropped."""
    if not child:
        return parent
    if not parent:
        return child.lstrip(".")
    return parent + child if child.startswith("[") else f"{parent}.{child.lstrip('.')}"


def field_type(root: Any, path: str) -> Any:
    """The msgspec inspect node of the value at `path` (``.a.b[0]``) inside `root` (a
    type or a node), or None when the path leaves what the type describes."""
    try:
        node: Any = root if isinstance(root, mi.Type) else mi.type_info(root)
    except (TypeError, ValueError):
        return None
    for token in _TOKEN.finditer(path):
        node = _unwrap(node)
        name, index = token["name"], token["index"]
        if name is not None:
            node = _child(node, name)
        elif index is not None:
            node = _item(node)
        else:
            node = _value(node)
        if node is None:
            return None
    return _unwrap(node)


def describe(field: str, message: str, node: Any = None, *, got: str | None = None) -> str:
    """One sentence about `field` from a msgspec message (location already split off).

    Args:
        field: the field as the client spells it (``delayMs``, ``params.items[2]``);
            empty for the whole request body.
        message: msgspec's message, e.g. ``Expected `int` <= 120000``.
        node: the field's type (a type or a `field_type` node), for valid values.
        got: the raw value the client sent, when it is text (query or path values).
    """
    if node is not None and not isinstance(node, mi.Type):
        try:
            node = mi.type_info(node)
        except (TypeError, ValueError):
            node = None
    node = _unwrap(node) if node is not None else None
    subject = field or "The request body"
    if isinstance(node, mi.DictType) and message.startswith("Expected `str`"):
        # The location ended at the object: the message is about one of its keys or values.
        keys = _unwrap(node.key_type)
        about_keys = isinstance(keys, mi.StrType) and any(
            str(bound) in message for bound in (keys.pattern, keys.max_length, keys.min_length) if bound is not None
        )
        subject = f"Each {'key' if about_keys else 'value'} of {subject}"
        node = keys if about_keys else _unwrap(node.value_type)
    if got is not None and len(got) > _MAX_GOT:
        got = got[: _MAX_GOT - 1] + "…"
    seen = f" (got {got!r})" if got is not None else ""
    if message in ("'data'", "Object missing required field `data`") and not field:
        return "A JSON request body is required."
    if match := _MISSING.match(message):
        return f"{join_field(field, '.' + match['name'])} is required."
    if match := _UNKNOWN.match(message):
        name = match["name"]
        known = _field_names(node)
        where = f"{field} has" if field else "The request body has"
        sentence = f"{where} no field {name!r}"
        if known:
            sentence += f"; the fields are {_listing(known)}"
        return sentence + "."
    if match := _BOUND.match(message):
        return f"{subject} must be {_OPS[match['op']]} {match['bound']}{seen}."
    if match := _LENGTH.match(message):
        return f"{subject} {_length_words(match['type'], match['op'], int(match['bound']))}{seen}."
    if match := _MULTIPLE.match(message):
        return f"{subject} must be a multiple of {match['bound']}{seen}."
    if match := _PATTERN.match(message):
        return f"{subject} must match the pattern {match['pattern']}{seen}."
    if match := _ENUM.match(message):
        values = _choices(node)
        if values:
            return f"{subject} must be one of {', '.join(values)} (got {match['value']})."
        return f"{subject} has an invalid value {match['value']}."
    if match := _GOT.match(message):
        values = _choices(node)
        seen = seen or f" (got {_noun(match['got'])})"
        if values:
            return f"{subject} must be one of {', '.join(values)}{seen}."
        expected = match["expected"]
        if got is not None:  # text from a query or path: it is either there or not, never null
            expected = " | ".join(name for name in expected.split(" | ") if name != "null") or expected
        return f"{subject} must be {_noun(expected)}{seen}."
    text = message.rstrip(".")
    return f"{subject} is not valid: {text[:1].lower()}{text[1:]}{seen}."


def field_of(field: str, message: str) -> str:
    """The field a message is about: `field` itself, or for a missing or unknown field
    the named field inside it (``Object missing required field `items``` -> ``items``)."""
    match = _MISSING.match(message) or _UNKNOWN.match(message)
    return join_field(field, "." + match["name"]) if match else field


def _noun(type_names: str) -> str:
    """``int | null`` -> ``an integer or null``."""
    names = [name.strip() for name in type_names.split("|")]
    words = [_NOUNS.get(name, f"a {name}") for name in names]
    if len(words) > 1:
        return ", ".join(words[:-1]) + " or " + words[-1]
    return words[0]


def _length_words(type_name: str, op: str, bound: int) -> str:
    if type_name == "str":
        if op == ">=" and bound == 1:
            return "must not be empty"
        unit = "character" if bound == 1 else "characters"
        return f"must be {_OPS[op]} {bound} {unit} long"
    unit = "entry" if type_name == "object" else "item"
    if op == ">=" and bound == 1:
        return f"must hold at least one {unit}"
    plural = unit if bound == 1 else ("entries" if unit == "entry" else "items")
    return f"must hold {_OPS[op]} {bound} {plural}"


def _listing(names: list[str]) -> str:
    if len(names) > _MAX_LISTED:
        return ", ".join(names[:_MAX_LISTED]) + f" and {len(names) - _MAX_LISTED} more"
    return ", ".join(names)


def _unwrap(node: Any) -> Any:
    """Metadata and ``X | None`` reduced to the type that carries the detail."""
    while True:
        if isinstance(node, mi.Metadata):
            node = node.type
        elif isinstance(node, mi.UnionType):
            rest = [t for t in node.types if not isinstance(t, mi.NoneType)]
            if len(rest) != 1:
                return node
            node = rest[0]
        else:
            return node


def _child(node: Any, name: str) -> Any:
    if isinstance(node, mi.StructType | mi.TypedDictType | mi.DataclassType):
        for field in node.fields:
            if field.encode_name == name:
                return field.type
        return None
    if isinstance(node, mi.DictType):
        return node.value_type
    return None


def _item(node: Any) -> Any:
    if isinstance(node, mi.ListType | mi.SetType | mi.FrozenSetType | mi.VarTupleType):
        return node.item_type
    if isinstance(node, mi.TupleType):
        return node.item_types[0] if node.item_types else None
    return None


def _value(node: Any) -> Any:
    return node.value_type if isinstance(node, mi.DictType) else None


def _field_names(node: Any) -> list[str]:
    if isinstance(node, mi.StructType | mi.TypedDictType | mi.DataclassType):
        return [field.encode_name for field in node.fields]
    return []


def _choices(node: Any) -> list[str]:
    """The valid values of an enum or literal type (text as is, others as JSON)."""
    if isinstance(node, mi.EnumType):
        members: list[enum.Enum] = list(node.cls)
        values: list[Any] = [member.value for member in members]
    elif isinstance(node, mi.LiteralType):
        values = list(node.values)
    else:
        return []
    return [value if isinstance(value, str) else msgspec.json.encode(value).decode() for value in values]

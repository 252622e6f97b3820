"""Request bodies held to JSON's own types.

Litestar converts a handler's ``data`` in msgspec's lax mode (it must, for query and
path strings), so a body field declared ``int`` also took ``"5"``, ``bool`` took
``"true"`` and ``int | None`` took ``"null"``: neither what the OpenAPI document
says nor what ``params`` inside ``POST /tasks`` accept. Create routes check the
(already read) body again, strictly, except that an integral float such as ``2.0``
stays a valid integer, as in JSON Schema.

A hot route (a demo create) declares its body ``JSONBody[SkipValidation[T]]``: the
OpenAPI document still shows `T`, Litestar skips its lax conversion, and the route
decodes the body itself, strictly and once, straight from the bytes (`decoded_body`).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException

from async_tasks.validation import split_location

T = TypeVar("T")


async def strict_body(request: Request[Any, Any, Any], data: T) -> T:
    """The body converted strictly (what `data`, Litestar's lax conversion of it, holds
    when it is valid); a 400 ``invalid_params`` otherwise."""
    return await decoded_body(request, type(data))


async def decoded_body(request: Request[Any, Any, Any], body_type: type[T]) -> T:
    """The request's JSON body as `body_type`, converted strictly (an integral float such
    as ``2.0`` taken as an integer); Litestar's 400 for a body that does not fit."""
    body = await request.body()
    try:
        return msgspec.json.decode(body, type=body_type)
    except msgspec.ValidationError:
        pass
    try:
        return msgspec.convert(_integral_floats_as_ints(msgspec.json.decode(body)), body_type)
    except msgspec.ValidationError as exc:
        message, path = split_location(str(exc))
        key = path.lstrip(".") or "data"  # "data" is the body itself, as Litestar says
        raise ValidationException(
            detail=f"Validation failed for {request.method} {request.url.path}",
            extra=[{"message": message, "key": key, "source": "body"}],
        ) from None


def _integral_floats_as_ints(value: Any) -> Any:
    """A copy-free rewrite of decoded JSON with ``2.0`` as ``2`` (iterative: bodies nest deep)."""
    root = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, float) and item.is_integer():
            container[key] = int(item)
        elif isinstance(item, dict):
            stack.extend((item, k) for k in item)
        elif isinstance(item, list):
            stack.extend((item, i) for i in range(len(item)))
    return root[0]

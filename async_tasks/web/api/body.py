"""Request bodies held to JSON's own types.

Litestar converts a handler's ``data`` in msgspec's lax mode (it must, for query and
path strings), so a body field declared ``int`` also took ``"5"``, ``bool`` took
``"true"`` and ``int | None`` took ``"null"``: neither what the OpenAPI document
says nor what ``params`` inside ``POST /tasks`` accept. Create routes check the
(already read) body again, strictly, except that an integral float such as ``2.0``
stays a valid integer, as in JSON Schema.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException

from async_tasks.validation import split_location

T = TypeVar("T")


async def strict_body(request: Request[Any, Any, Any], data: T) -> T:
    """`data` (Litestar's lax conversion of the body) if the body also passes a strict
    conversion; a 400 ``invalid_params`` otherwise."""
    body = await request.body()
    try:
        return msgspec.json.decode(body, type=type(data))
    except msgspec.ValidationError:
        pass
    try:
        msgspec.convert(_integral_floats_as_ints(msgspec.json.decode(body)), type(data))
    except msgspec.ValidationError as exc:
        message, path = split_location(str(exc))
        key = path.lstrip(".") or "data"  # "data" is the body itself, as Litestar says
        raise ValidationException(
            detail=f"Validation failed for {request.method} {request.url.path}",
            extra=[{"message": message, "key": key, "source": "body"}],
        ) from None
    return data


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

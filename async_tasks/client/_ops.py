"""The I/O a flow asks its driver for, and the one way a driver steps a flow.

A flow (`Flow`) is a generator: it yields operations (`Send` a request, `Open` the
event stream, `ReadLine`, `Sleep`, `Emit` an update...) and receives each one's
reply; a driver performs them (`TaskClient` with ``httpx.Client``,
`AsyncTaskClient` with ``httpx.AsyncClient``). Inside a flow,
``reply = yield from Send(request)`` yields the operation and gives the reply, typed.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

import httpx

T = TypeVar("T")
R = TypeVar("R")


class Op(Generic[R]):
    """One piece of I/O a flow asks its driver for; the driver replies with an `R`."""

    def __iter__(self) -> Generator[Op[Any], Any, R]:
        reply: R = yield self
        return reply


#: An operation of the API, without I/O: yields `Op`s, receives their replies, returns `T`.
Flow: TypeAlias = Generator[Op[Any], Any, T]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None
    params: dict[str, Any] | None = None
    #: None: the client's timeout.
    timeout: httpx.Timeout | None = None


@dataclass(frozen=True)
class Send(Op[httpx.Response]):
    """Send the request; reply with the response, its body read."""

    request: Request


@dataclass(frozen=True)
class Open(Op[httpx.Response]):
    """Send the request; reply with the response, its body left to `ReadLine` or `ReadBody`."""

    request: Request


@dataclass(frozen=True)
class ReadLine(Op[str | None]):
    """The next line of the opened response; None at its end."""


@dataclass(frozen=True)
class ReadBody(Op[bytes]):
    """The rest of the opened response's body."""


@dataclass(frozen=True)
class Close(Op[None]):
    """Close the opened response (the driver also closes it when the flow ends)."""


@dataclass(frozen=True)
class Sleep(Op[None]):
    seconds: float


@dataclass(frozen=True)
class Emit(Op[None]):
    """Hand an update of `watch` to the caller, then go on."""

    update: dict[str, Any]


@dataclass(frozen=True)
class Done(Generic[T]):
    """The flow ended with `value`."""

    value: T


def resume(flow: Flow[T], reply: Any = None, error: BaseException | None = None) -> Op[Any] | Done[T]:
    """Give `flow` the reply to its last operation (or raise in it the error that
    operation met; the flow may handle it, e.g. a broken stream): its next
    operation, or its end."""
    try:
        return flow.send(reply) if error is None else flow.throw(error)
    except StopIteration as stop:
        return Done(stop.value)


def build(http: httpx.Client | httpx.AsyncClient, request: Request) -> httpx.Request:
    """`request` as httpx builds it with the client's base URL and defaults."""
    return http.build_request(
        request.method,
        request.path,
        json=request.json,
        params=request.params,
        headers=request.headers,
        timeout=httpx.USE_CLIENT_DEFAULT if request.timeout is None else request.timeout,
    )

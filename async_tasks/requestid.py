"""Request ids and the log context.

Every HTTP request gets an id: the client's ``X-Request-ID`` when it is 1-128
characters of ``[A-Za-z0-9._:-]``, else a generated uuid4 hex. It is stored in
scope state under `REQUEST_ID_STATE_KEY` (so a task created by the request
records it), echoed in the ``X-Request-ID`` response header of every response
(404 and 405 included), and bound to a context variable for the request's
duration, so every log line of the request carries it.

The context variables below are what the log filter (`async_tasks.logs`) reads.
A task started from a request inherits the request's context (anyio copies the
context at ``start_soon``); the runner then binds the task's own id, session,
executor and the id of the request that created it (`bind_task`).
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar, Token
from typing import Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from async_tasks.manager import REQUEST_ID_STATE_KEY, SESSION_STATE_KEY

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()
_VALID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_CLEAR_VERSION_VARIANT = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_BITS = (0x4000 << 64) | (0x8000 << 48)

#: The id of the current request (or of the request that created the current task).
request_id_var: ContextVar[str | None] = ContextVar("async_tasks_request_id", default=None)
#: The session key of the current request or task (a keyed hash or random key, never an IP).
session_key_var: ContextVar[str | None] = ContextVar("async_tasks_session_key", default=None)
#: The id of the task whose code is running.
task_id_var: ContextVar[str | None] = ContextVar("async_tasks_task_id", default=None)
#: The executor of the task whose code is running.
executor_var: ContextVar[str | None] = ContextVar("async_tasks_executor", default=None)


def new_request_id() -> str:
    """A uuid4 as 32 hex digits (what ``uuid.uuid4().hex`` gives, at about half the cost)."""
    value = int.from_bytes(os.urandom(16), "big")
    value = (value & _CLEAR_VERSION_VARIANT) | _UUID4_BITS
    return f"{value:032x}"


def request_id_from(scope: Scope) -> str:
    """The client's valid ``X-Request-ID``, or a new id."""
    for name, value in scope.get("headers", ()):
        if name == _HEADER_KEY:
            if _VALID.fullmatch(value):
                return value.decode("ascii")
            break
    return new_request_id()


def request_id_of(scope: Scope) -> str:
    """The request's id, resolved and stored in scope state on first use."""
    state: dict[str, Any] = scope.setdefault("state", {})
    request_id = state.get(REQUEST_ID_STATE_KEY)
    if request_id is None:
        request_id = state[REQUEST_ID_STATE_KEY] = request_id_from(scope)
    return str(request_id)


def bind_task(task_id: str, session_key: str, executor: str, request_id: str | None) -> None:
    """Bind a task's log context in the current (task-local) context."""
    task_id_var.set(task_id)
    session_key_var.set(session_key)
    executor_var.set(executor)
    request_id_var.set(request_id)


class RequestIdMiddleware(ASGIMiddleware):
    """Resolves the request id into scope state and binds the log context.

    It sits inside the session middleware, so the session key is known too. App
    middleware only runs for matched routes: the response header is added by
    `echo_request_id` (a ``before_send`` hook), which sees every response.
    """

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        request_id = request_id_of(scope)
        session_key = scope["state"].get(SESSION_STATE_KEY)
        request_token: Token[str | None] = request_id_var.set(request_id)
        session_token: Token[str | None] = session_key_var.set(session_key)
        try:
            await next_app(scope, receive, send)
        finally:
            session_key_var.reset(session_token)
            request_id_var.reset(request_token)


async def echo_request_id(message: Message, scope: Scope) -> None:
    """``before_send`` hook: put ``X-Request-ID`` on every HTTP response."""
    if message["type"] != "http.response.start":
        return
    request_id = request_id_of(scope)
    headers = message.get("headers")
    if not isinstance(headers, list):
        headers = message["headers"] = list(headers or ())
    if not any(name.lower() == _HEADER_KEY for name, _ in headers):
        headers.append((_HEADER_KEY, request_id.encode("ascii")))

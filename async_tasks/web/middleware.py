"""Middleware that tells who is asking: the session of a request and its request id.

One middleware, `RequestMiddleware`, does both (a middleware layer costs a request
about as much as the work either does). It reads the session token from the
``X-Session-Token`` header or the session cookie and resolves the session key
(`async_tasks.web.sessions`) into scope state; a new session's token goes out in the ``X-Session-Token`` response header
and an HttpOnly, SameSite=Lax cookie, once per response (``POST /session`` hands
out the session the middleware issued rather than a second one). A token that was
sent but not accepted (forged, malformed, signed with another key or expired) is
answered with ``X-Session-Token-Status: invalid``; a bad token from the cookie is
also cleared (unless a new session's cookie replaces it), so a browser stops
sending it.

A request with a stream ticket is in the ticket's session (`async_tasks.web.security`
checked it); one that would be given a new session draws from its client's new-session
budget first (NEW_SESSIONS_PER_CLIENT_PER_MINUTE: 429 ``rate_limited`` beyond). A
request's client (`async_tasks.clients`: its address, as a keyed hash; `client_of`) is
worked out only by the routes whose budgets count it.

Every HTTP request gets an id: the client's ``X-Request-ID`` when it is 1-128
characters of ``[A-Za-z0-9._:-]``, else a generated uuid4 hex. It is stored in scope
state (so a task created by the request records it), echoed in the ``X-Request-ID``
response header of every response (404 and 405 included), and bound to the log
context (`async_tasks.context`) for the request's duration, with the session key.
"""

from __future__ import annotations

import random
import re
from collections.abc import Awaitable, Callable
from contextvars import Token
from typing import Any

from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from async_tasks.clients import LOCAL_PEER
from async_tasks.context import request_id_var, session_key_var
from async_tasks.web.security import TICKET_STATE_KEY
from async_tasks.web.sessions import SessionResolver

#: Scope-state keys this middleware writes.
#: The app's `SessionResolver` (`resolver_of`).
RESOLVER_STATE_KEY = "async_tasks_sessions"
SESSION_STATE_KEY = "async_tasks_session_key"
#: The token of a session issued for this request (no valid token, no IP mapping).
ISSUED_TOKEN_STATE_KEY = "async_tasks_issued_token"
REQUEST_ID_STATE_KEY = "async_tasks_request_id"
#: A route whose ``opt`` has this key resolves no session (its caller needs none: the
#: front-end kit's files, share links).
NO_SESSION_OPT_KEY = "async_tasks_no_session"

TOKEN_HEADER = "X-Session-Token"
#: Response header saying the request's session token was not accepted.
TOKEN_STATUS_HEADER = "X-Session-Token-Status"
COOKIE_NAME = "async_tasks_session"
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_CLEAR_VERSION_VARIANT = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_BITS = (0x4000 << 64) | (0x8000 << 48)
_random_bits = random.getrandbits


def session_cookie(resolver: SessionResolver, token: str) -> Cookie:
    """The cookie that carries a session token."""
    return Cookie(
        key=COOKIE_NAME,
        value=token,
        max_age=resolver.settings.session_max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=resolver.settings.session_cookie_secure,
    )


def session_key_of(scope: Scope) -> str:
    """The session key `RequestMiddleware` resolved for this request."""
    key = scope.get("state", {}).get(SESSION_STATE_KEY)
    if not key:
        raise RuntimeError(
            "No task session on this request: add AsyncTasksPlugin to the app so its session middleware runs."
        )
    return str(key)


def resolver_of(scope: Scope) -> SessionResolver:
    """The session resolver of the app serving this request (`RequestMiddleware` puts it
    in scope state)."""
    resolver = scope.get("state", {}).get(RESOLVER_STATE_KEY)
    if not isinstance(resolver, SessionResolver):
        raise RuntimeError(
            "No task session on this request: add AsyncTasksPlugin to the app so its session middleware runs."
        )
    return resolver


def client_of(scope: Scope) -> str:
    """The client this request counts as (`async_tasks.clients`): a keyed hash of its
    address (the peer's, or the forwarded one behind a trusted proxy). The engine is
    handed this opaque key, never the address."""
    client = scope.get("client")
    return resolver_of(scope).client_key(client[0] if client else None)


class RequestMiddleware(ASGIMiddleware):
    """Resolves the request id, and the session (except on the routes whose ``opt`` has
    `session_exempt_key`, health probes and scrapes, or `NO_SESSION_OPT_KEY`), of every HTTP and WebSocket request
    into scope state, and binds both to the log context while the request runs.

    App middleware only runs for matched routes: the request id response header is
    added by `echo_request_id` (a ``before_send`` hook), which sees every response.
    """

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    def __init__(
        self,
        resolver: SessionResolver,
        session_exempt_key: str | None = None,
        admit_session: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """`admit_session(client)` is awaited before a request is given a new session: it
        raises (`RateLimited`) when the client may not start one now."""
        self.resolver = resolver
        self.session_exempt_key = session_exempt_key
        self.admit_session = admit_session

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        state: dict[str, Any] = scope.setdefault("state", {})
        state[RESOLVER_STATE_KEY] = self.resolver
        request_id = state.get(REQUEST_ID_STATE_KEY)
        if request_id is None:
            request_id = state[REQUEST_ID_STATE_KEY] = request_id_from(scope)
        exempt = self.session_exempt_key
        route_handler = scope.get("route_handler")
        if route_handler is not None and (
            (exempt is not None and route_handler.opt.get(exempt)) or route_handler.opt.get(NO_SESSION_OPT_KEY)
        ):
            session_key = state.get(SESSION_STATE_KEY)
        else:
            session_key, issued, send = self._resolve_session(scope, state, send)
            if issued and self.admit_session is not None:
                await self.admit_session(client_of(scope))
        request_token: Token[str | None] = request_id_var.set(request_id)
        session_token: Token[str | None] = session_key_var.set(session_key)
        try:
            await next_app(scope, receive, send)
        finally:
            session_key_var.reset(session_token)
            request_id_var.reset(request_token)

    def _resolve_session(self, scope: Scope, state: dict[str, Any], send: Send) -> tuple[str, bool, Send]:
        """The session key into scope state; whether it is a new session; `send`, or a
        wrapper that adds the headers and cookie of a new session or a rejected token."""
        ticketed = state.get(TICKET_STATE_KEY)
        if ticketed is not None and self.resolver.settings.enable_session_isolation:
            state[SESSION_STATE_KEY] = ticketed
            return ticketed, False, send
        token = None
        cookie_header = None
        for name, value in scope["headers"]:
            if name == b"x-session-token":
                token = value.decode("latin-1")
            elif name == b"cookie":
                cookie_header = value.decode("latin-1")
        from_cookie = False
        if token is None and cookie_header and COOKIE_NAME in cookie_header:
            token = _cookie_value(cookie_header, COOKIE_NAME)
            from_cookie = True
        client = scope.get("client")
        resolver = self.resolver
        # A token is verified once; without an accepted one, the resolver maps the IP
        # or issues a new session (and with isolation off, everyone shares one).
        accepted = resolver.key_from_token(token) if token and resolver.settings.enable_session_isolation else None
        rejected = accepted is None and bool(token) and resolver.settings.enable_session_isolation
        # A request without an address is the local peer's (a Unix socket): never a fresh
        # session per request.
        key, issued = (
            (accepted, None) if accepted is not None else resolver.resolve(None, client[0] if client else LOCAL_PEER)
        )
        state[SESSION_STATE_KEY] = key
        if (issued is None and not rejected) or scope["type"] != ScopeType.HTTP:
            return key, issued is not None, send
        if issued is not None:
            state[ISSUED_TOKEN_STATE_KEY] = issued
            set_cookie = session_cookie(resolver, issued).to_header(header="").strip()
        elif from_cookie:
            set_cookie = _expired_cookie(resolver)
        else:
            set_cookie = None

        async def send_with_session(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                if rejected:
                    headers.add(TOKEN_STATUS_HEADER, "invalid")
                if issued is not None:
                    headers.add(TOKEN_HEADER, issued)
                if set_cookie is not None and not _sets_session_cookie(headers):
                    headers.add("set-cookie", set_cookie)
            await send(message)

        return key, issued is not None, send_with_session


def _expired_cookie(resolver: SessionResolver) -> str:
    cookie = session_cookie(resolver, "")
    cookie.max_age = 0
    return cookie.to_header(header="").strip()


def _sets_session_cookie(headers: MutableScopeHeaders) -> bool:
    prefix = COOKIE_NAME + "="
    return any(value.startswith(prefix) for value in headers.getall("set-cookie", []))


def issued_token_of(scope: Scope) -> str | None:
    """The token of the session `RequestMiddleware` issued for this request, if any."""
    token = scope.get("state", {}).get(ISSUED_TOKEN_STATE_KEY)
    return str(token) if token else None


def _cookie_value(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value.strip('"')
    return None


def new_request_id() -> str:
    """A uuid4 as 32 hex digits (the form of ``uuid.uuid4().hex``). Its random bits come
    from `random`, not the OS: an id must be unique, not secret (clients choose their
    own), and `random` is reseeded in a forked worker."""
    value = (_random_bits(128) & _CLEAR_VERSION_VARIANT) | _UUID4_BITS
    return f"{value:032x}"


def request_id_from(scope: Scope) -> str:
    """The client's valid ``X-Request-ID``, or a new id."""
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_KEY:
            if _VALID_REQUEST_ID.fullmatch(value):
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


async def echo_request_id(message: Message, scope: Scope) -> None:
    """``before_send`` hook: put ``X-Request-ID`` on every HTTP response."""
    if message["type"] != "http.response.start":
        return
    request_id = request_id_of(scope)
    headers = message.get("headers")
    if not isinstance(headers, list):
        headers = message["headers"] = list(headers or ())
    if not any(name.lower() == _REQUEST_ID_KEY for name, _ in headers):
        headers.append((_REQUEST_ID_KEY, request_id.encode("ascii")))

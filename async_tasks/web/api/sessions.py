"""``/session``: which session the caller is in, and a way to start a new one."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency

from async_tasks.web.api.schemas import SessionInfo
from async_tasks.web.budgets import ClientBudgets
from async_tasks.web.errors import responses
from async_tasks.web.middleware import TOKEN_HEADER, client_of, issued_token_of, resolver_of, session_cookie
from async_tasks.web.sessions import SHARED_SESSION


@get("/session", tags=["sessions"], summary="The caller's session key")
async def current_session(session_key: NamedDependency[str]) -> SessionInfo:
    return SessionInfo(session_key=session_key)


@post(
    "/session",
    tags=["sessions"],
    status_code=201,
    responses=responses(429),
    summary="Start a new session: returns its token and sets the session cookie",
    response_headers=[
        ResponseHeader(
            name=TOKEN_HEADER,
            description="The new session's token (the body's `token`); absent with ENABLE_SESSION_ISOLATION=false.",
            documentation_only=True,
            value="",  # only its type is used: it gives the header a string schema in the document
            required=False,
        )
    ],
    description=(
        "One request, one session: the token in the body is the one in the `X-Session-Token` "
        "response header and in the cookie. Send it back in the `X-Session-Token` header (or let "
        "the browser send the cookie) to stay in this session. One address may start "
        "NEW_SESSIONS_PER_CLIENT_PER_MINUTE sessions a minute (429 `rate_limited` beyond)."
    ),
)
async def new_session(
    request: Request[Any, Any, Any],
    client_budgets: NamedDependency[ClientBudgets],
    session_key: NamedDependency[str],
) -> Response[SessionInfo]:
    resolver = resolver_of(request.scope)
    if not resolver.settings.enable_session_isolation:
        return Response(SessionInfo(session_key=SHARED_SESSION), status_code=201)
    issued = issued_token_of(request.scope)
    if issued is not None:
        # The middleware already started a session for this request (it came without a
        # token): hand out that one; its header and cookie are on the response already.
        return Response(SessionInfo(session_key=session_key, token=issued), status_code=201)
    await client_budgets.admit_new_session(client_of(request.scope))
    key, token = resolver.new_session()
    return Response(
        SessionInfo(session_key=key, token=token),
        status_code=201,
        headers={TOKEN_HEADER: token},
        cookies=[session_cookie(resolver, token)],
    )

"""``/session``: which session the caller is in, and a way to start a new one."""

from __future__ import annotations

from litestar import Response, get, post
from litestar.di import NamedDependency

from async_tasks.sessions import SHARED_SESSION
from async_tasks.system import TaskSystem
from async_tasks.web.api.schemas import SessionInfo
from async_tasks.web.middleware import TOKEN_HEADER, session_cookie


@get("/session", tags=["sessions"], summary="The caller's session key")
async def current_session(session_key: NamedDependency[str]) -> SessionInfo:
    return SessionInfo(session_key=session_key)


@post(
    "/session",
    tags=["sessions"],
    status_code=201,
    summary="Start a new session: returns its token and sets the session cookie",
)
async def new_session(task_system: NamedDependency[TaskSystem]) -> Response[SessionInfo]:
    resolver = task_system.sessions
    if not task_system.settings.enable_session_isolation:
        return Response(SessionInfo(session_key=SHARED_SESSION), status_code=201)
    key, token = resolver.new_session()
    return Response(
        SessionInfo(session_key=key, token=token),
        status_code=201,
        headers={TOKEN_HEADER: token},
        cookies=[session_cookie(resolver, token)],
    )

"""``/session``: which session the caller is in, and a way to start a new one."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.di import NamedDependency

from async_tasks.api.schemas import SessionInfo
from async_tasks.manager import TaskManager
from async_tasks.sessions import SHARED_SESSION, TOKEN_HEADER


@get("/session", tags=["sessions"], summary="The caller's session key")
async def current_session(request: Request[Any, Any, Any], task_manager: NamedDependency[TaskManager]) -> SessionInfo:
    return SessionInfo(session_key=task_manager.session_key_of(request))


@post(
    "/session",
    tags=["sessions"],
    status_code=201,
    summary="Start a new session: returns its token and sets the session cookie",
)
async def new_session(task_manager: NamedDependency[TaskManager]) -> Response[SessionInfo]:
    resolver = task_manager.sessions
    if not task_manager.settings.enable_session_isolation:
        return Response(SessionInfo(session_key=SHARED_SESSION), status_code=201)
    key, token = resolver.new_session()
    return Response(
        SessionInfo(session_key=key, token=token),
        status_code=201,
        headers={TOKEN_HEADER: token},
        cookies=[resolver.cookie(token)],
    )

"""Share links: one task, read-only, for someone outside the session ("watch it on your
phone" in a client meeting).

    POST {api}/tasks/{id}/share       -> {url, expiresAt, token}   (the caller's own task)
    GET  /share/{token}               the page: that task alone, built for a phone, live
    GET  {api}/shared/{token}         the task, read-only
    GET  {api}/shared/{token}/events  its event stream (as /tasks/{id}/events)

The token (`async_tasks.web.sessions.ShareTokens`) names one task of one session and
expires after SHARE_LINK_TTL seconds. It is not a session token or a stream ticket, so
it reads nothing else: no other task, no list, no session stream. A task that is gone
(deleted, cleaned up, expired) answers 404, so the link dies with it. Making a link
draws from a token bucket of its own per session, at the create rate
(TASK_CREATE_RATE, TASK_CREATE_BURST). The read routes need no session and no API key:
the token is the credential (`async_tasks.web.security` lets them through).

A link is handed to others, so what its viewers do never counts against its owner:
their reads draw from a bucket of their own (TASK_READ_RATE, per shared session), and
their streams count against the viewer's address (MAX_STREAMS_PER_CLIENT) and a cap of
their own per shared session (MAX_STREAMS_PER_SESSION again), never the session's own
streams. However many phones open a link, the owner's dashboard still gets its stream
and its reads.
"""

from __future__ import annotations

import html
from typing import Annotated, Any

from litestar import MediaType, Request, Response, Router, get, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter
from litestar.response import Stream
from litestar.types import Scope

from async_tasks import __version__
from async_tasks.errors import RateLimited
from async_tasks.system import TaskSystem
from async_tasks.task import Task
from async_tasks.web.api.kit import KIT_DIR, KIT_PATH
from async_tasks.web.api.openapi import NO_SESSION
from async_tasks.web.api.schemas import SharedTaskResponse, SharedTaskView, ShareLinkResponse
from async_tasks.web.api.streams import LastEventId, task_event_stream
from async_tasks.web.api.tasks import TaskId
from async_tasks.web.errors import ShareLinkRefused, responses
from async_tasks.web.middleware import NO_SESSION_OPT_KEY, client_of
from async_tasks.web.sessions import Share, ShareExpired, ShareInvalid, ShareTokens
from async_tasks.web.streams import StreamBridge

#: The path prefix (under the API) of the routes a share token opens.
SHARED_PATH = "/shared/"
#: The share page's path at the app's root.
PAGE_PATH = "/share"
_BUCKET_PREFIX = "share:"
_NO_STORE = CacheControlHeader(no_store=True)
ShareToken = Annotated[str, PathParameter(max_length=512, description="The token of a share link.")]
_READ: dict[str, Any] = {"tags": ["share links"], "opt": {NO_SESSION_OPT_KEY: True}, "security": NO_SESSION}


@post(
    "/tasks/{task_id:str}/share",
    tags=["share links"],
    status_code=201,
    summary="A link to a read-only page following this task, for someone without the session",
    description=(
        "Answers `url` (a page showing this task alone, live, built for a phone; no session or API key "
        "needed to open it), `expiresAt` (epoch ms: SHARE_LINK_TTL seconds from now) and the `token` in it. "
        "The token reads this task and nothing else (`GET /shared/{token}`, `GET /shared/{token}/events`) "
        "and dies with the task. Rate limited like creates (429 `rate_limited`)."
    ),
    responses=responses(400, 404, 429, 503),
)
async def share_task(
    request: Request[Any, Any, Any],
    task_system: NamedDependency[TaskSystem],
    session_key: NamedDependency[str],
    share_tokens: NamedDependency[ShareTokens],
    task_id: TaskId,
) -> ShareLinkResponse:
    task = await task_system.get_task(session_key, task_id)  # 404 before a rate token is spent
    settings = task_system.settings
    if settings.task_create_rate > 0:
        rate, burst = settings.task_create_rate, settings.task_create_burst
        wait = await task_system.store.take_token(_BUCKET_PREFIX + session_key, rate, burst)
        if wait > 0:
            raise RateLimited(
                f"Too many share links made too quickly (limit {rate:g} per second). Retry in {wait:.2f} s.",
                retry_after=wait,
                details={"ratePerSecond": rate, "burst": burst},
            )
    token, expires_at = share_tokens.issue(task.session_key, task.id)
    return ShareLinkResponse(url=request.url_for("share_page", token=token), expires_at=expires_at, token=token)


async def _shared_task(task_system: TaskSystem, share_tokens: ShareTokens, token: str) -> tuple[Share, Task]:
    try:
        share = share_tokens.read(token)
    except ShareExpired:
        raise ShareLinkRefused(expired=True) from None
    except ShareInvalid:
        raise ShareLinkRefused(expired=False) from None
    # Viewers read from a bucket of their own, never from the owner's (TASK_READ_RATE).
    task = await task_system.get_task(
        share.session_key, share.task_id, decode=False, reads=_BUCKET_PREFIX + share.session_key
    )
    return share, task


@get(
    SHARED_PATH + "{token:str}",
    summary="The task a share link names (read-only)",
    responses=responses(400, 401, 404, 503),
    cache_control=_NO_STORE,
    **_READ,
)
async def shared_task(
    task_system: NamedDependency[TaskSystem], share_tokens: NamedDependency[ShareTokens], token: ShareToken
) -> SharedTaskResponse:
    share, task = await _shared_task(task_system, share_tokens, token)
    outlook = (await task_system.outlook(share.session_key, [task])).get(task.id)
    return SharedTaskResponse(task=SharedTaskView.of(task, outlook), expires_at=share.expires_at)


@get(
    SHARED_PATH + "{token:str}/events",
    media_type="text/event-stream",
    summary="The event stream of the task a share link names",
    description=(
        "The same stream as `GET /tasks/{id}/events` (a `snapshot`, then every change, then `end`), "
        "opened with the share token instead of a session. A stream opened before the link expires "
        "runs to the task's end. Viewers' streams count against the viewer's address and a cap of their "
        "own per shared session (MAX_STREAMS_PER_SESSION), never against the owner's streams."
    ),
    responses={
        **responses(400, 401, 404, 429, 503),
        204: ResponseSpec(data_container=None, description="The task is finished and the client has its final state"),
    },
    **_READ,
)
async def shared_events(
    request: Request[Any, Any, Any],
    task_system: NamedDependency[TaskSystem],
    share_tokens: NamedDependency[ShareTokens],
    task_streams: NamedDependency[StreamBridge],
    token: ShareToken,
    last_event_id: LastEventId = None,
) -> Response[None] | Stream:
    _, task = await _shared_task(task_system, share_tokens, token)
    return await task_event_stream(task_streams, task, last_event_id, client_of(request.scope), shared=True)


def render_share_page(api_base: str, token: str, root: str = "") -> str:
    """The page, its assets under `root` (the mount in a host app, see `async_tasks.web.asgi`)."""
    return (
        (KIT_DIR / "share.html")
        .read_text(encoding="utf-8")
        .replace("{{API_BASE}}", html.escape(api_base, quote=True))
        .replace("{{TOKEN}}", html.escape(token, quote=True))
        .replace("{{ASSETS}}", html.escape(root, quote=True) + KIT_PATH)
        .replace("{{VERSION}}", html.escape(__version__, quote=True))
    )


@get(
    PAGE_PATH + "/{token:str}",
    name="share_page",
    media_type=MediaType.HTML,
    include_in_schema=False,
    cache_control=_NO_STORE,
    opt={NO_SESSION_OPT_KEY: True},
)
async def share_page(scope: Scope, api_path: NamedDependency[str], token: ShareToken) -> Response[str]:
    """The share page: whether the token is good is for the page's first request to say."""
    return Response(render_share_page(api_path, token, str(scope.get("root_path", ""))), media_type=MediaType.HTML)


def share_router(bridge: StreamBridge, tokens: ShareTokens, **api: Any) -> Router:
    """The API's share routes, bound to `bridge` and `tokens`; `api`: the API router's own
    settings (its ``path``, error handlers, body limit), as `AsyncTasksPlugin.routers` mounts it
    beside that router."""
    return Router(
        route_handlers=[share_task, shared_task, shared_events],
        dependencies={
            "task_streams": Provide(lambda: bridge, sync_to_thread=False),
            "share_tokens": Provide(lambda: tokens, sync_to_thread=False),
        },
        **{"path": "/", **api},
    )

"""Push streams: ``GET /tasks/{id}/events`` and ``GET /tasks/events`` (Server-Sent
Events) and ``WS /ws`` (the session stream over a WebSocket).

SSE framing, one message per event::

    id: 7
    event: progress
    data: {"type":"progress","taskId":"…","sessionKey":"…","status":"running","progress":45,…}

``id`` counts the messages of this connection (1, 2, …); ``event`` is the event type
(``snapshot``, ``transition``, ``progress``, ``removed``); ``data`` is the
`TaskEvent` as camelCase JSON (its ``type`` repeats the event type). An idle stream
gets a ``: keep-alive`` comment every 15 seconds. On the WebSocket each event is one
text message holding the same JSON.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import anyio
from litestar import Router, WebSocket, get, websocket
from litestar.di import NamedDependency, Provide
from litestar.exceptions import WebSocketDisconnect
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import WS_1001_GOING_AWAY

from async_tasks.system import TaskSystem
from async_tasks.web.api.tasks import TaskId
from async_tasks.web.errors import responses
from async_tasks.web.streams import KEEPALIVE, OPENED, Frame, StreamBridge

_FORMAT = (
    "Server-Sent Events. Each message has `id` (a per-connection counter), `event` (`snapshot`, "
    "`transition`, `progress` or `removed`) and `data` (the event as camelCase JSON: `type`, `taskId`, "
    "`sessionKey`, `name`, `executor`, `status`, `previous`, `progress`, `currentStep`, "
    "`currentStepDescription`, `error`, `result` (on `completed`), `attempt`, `at` (epoch ms)). "
    "Progress is coalesced to at most about 10 events per second per task (the latest value wins); "
    "transitions are never coalesced."
)


async def _sse(frames: AsyncGenerator[Frame, None]) -> ServerSentEvent:
    """The SSE response of a bridge stream, subscribed before the response starts: a
    client that has the response headers misses nothing that happens afterwards."""
    opened = await anext(frames)
    assert opened is OPENED

    async def messages() -> AsyncGenerator[ServerSentEventMessage, None]:
        count = 0
        async with contextlib.aclosing(frames):
            async for frame in frames:
                if frame is KEEPALIVE:
                    yield ServerSentEventMessage(comment="keep-alive", data=None)
                    continue
                count += 1
                yield ServerSentEventMessage(data=frame.data.decode(), event=frame.type, id=count)

    return ServerSentEvent(messages())


@get(
    "/tasks/{task_id:str}/events",
    tags=["streams"],
    media_type="text/event-stream",
    responses=responses(400, 404),
    summary="Stream one task's events until it finishes",
    description=(
        "Starts with a `snapshot` of the task, then every transition and progress change, and ends "
        "after the task settles in `completed`, `failed` (with no automatic retry left) or "
        "`cancelled`, or is `removed`. " + _FORMAT
    ),
)
async def task_events(
    task_system: NamedDependency[TaskSystem],
    session_key: NamedDependency[str],
    task_streams: NamedDependency[StreamBridge],
    task_id: TaskId,
) -> ServerSentEvent:
    task = await task_system.get_task(session_key, task_id)  # 404 before any streaming
    return await _sse(task_streams.task_stream(task.session_key, task.id))


@get(
    "/tasks/events",
    tags=["streams"],
    media_type="text/event-stream",
    summary="Stream all the session's task events",
    description=(
        "Starts with a `snapshot` of every task of the session, then its events live; stays "
        "open (a `: keep-alive` comment every 15 s when idle) until the client leaves or the "
        "server stops. " + _FORMAT
    ),
)
async def session_events(
    session_key: NamedDependency[str],
    task_streams: NamedDependency[StreamBridge],
) -> ServerSentEvent:
    return await _sse(task_streams.session_stream(session_key))


@websocket("/ws", name="session_socket")
async def session_socket(
    socket: WebSocket[Any, Any, Any],
    session_key: NamedDependency[str],
    task_streams: NamedDependency[StreamBridge],
) -> None:
    """The session stream over a WebSocket: one JSON text message per event (the SSE
    `data`). Messages from the client are ignored. The server closes with 1001 when
    it shuts down."""
    server_ended = False
    frames = task_streams.session_stream(session_key, keepalive=False)
    async with contextlib.aclosing(frames):
        await anext(frames)  # OPENED: subscribed before the client sees the socket open
        await socket.accept()
        async with anyio.create_task_group() as tg:

            async def until_client_leaves() -> None:
                async for _ in socket.iter_data("text"):
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(until_client_leaves)
            try:
                async for frame in frames:
                    await socket.send_text(frame.data.decode())
                server_ended = True
            except (WebSocketDisconnect, OSError):
                pass  # the client went away while we were sending
            tg.cancel_scope.cancel()
    if server_ended:
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await socket.close(code=WS_1001_GOING_AWAY, reason="server shutting down")


def stream_router(bridge: StreamBridge) -> Router:
    """The stream routes, bound to `bridge` (mount it inside the API router)."""
    return Router(
        path="/",
        route_handlers=[session_events, task_events, session_socket],
        dependencies={"task_streams": Provide(lambda: bridge, sync_to_thread=False)},
    )

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
from litestar.response import Stream
from litestar.status_codes import WS_1001_GOING_AWAY

from async_tasks.errors import QuotaExceeded
from async_tasks.system import TaskSystem
from async_tasks.web.api.tasks import TaskId
from async_tasks.web.errors import responses
from async_tasks.web.security import error_body, refuse_websocket
from async_tasks.web.streams import KEEPALIVE, OPENED, Frame, StreamBridge, sse_lines

#: The largest message a WebSocket client may send (the server ignores them anyway);
#: `async-tasks serve` also sets it as uvicorn's ``ws_max_size``.
WS_MAX_MESSAGE_BYTES = 4096
_SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
_KEEPALIVE_LINE = b": keep-alive\r\n\r\n"

_FORMAT = (
    "Server-Sent Events. Each message has `id` (a per-connection counter), `event` (`snapshot`, "
    "`transition`, `progress` or `removed`) and `data` (the event as camelCase JSON: `type`, `taskId`, "
    "`sessionKey`, `name`, `executor`, `status`, `previous`, `progress`, `currentStep`, "
    "`currentStepDescription`, `error`, `result` (on `completed`), `attempt`, `at` (epoch ms)). "
    "Progress is coalesced to at most about 10 events per second per task (the latest value wins); "
    "transitions are never coalesced. Open streams are capped per session and overall (429 beyond: "
    "MAX_STREAMS_PER_SESSION, MAX_STREAMS). A page that cannot send headers (EventSource) opens it "
    "with `?ticket=` from `POST /session/ticket`."
)


async def _sse(frames: AsyncGenerator[Frame, None]) -> Stream:
    """The SSE response of a bridge stream, subscribed before the response starts: a
    client that has the response headers misses nothing that happens afterwards. The
    event and data lines of a forwarded event are encoded once for every stream."""
    opened = await anext(frames)
    assert opened is OPENED

    async def messages() -> AsyncGenerator[bytes, None]:
        count = 0
        async with contextlib.aclosing(frames):
            async for frame in frames:
                if frame is KEEPALIVE:
                    yield _KEEPALIVE_LINE
                    continue
                count += 1
                yield b"id: %d\r\n" % count + sse_lines(frame)

    return Stream(messages(), media_type="text/event-stream", headers=_SSE_HEADERS)


@get(
    "/tasks/{task_id:str}/events",
    tags=["streams"],
    media_type="text/event-stream",
    responses=responses(400, 401, 404, 429),
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
) -> Stream:
    task = await task_system.get_task(session_key, task_id)  # 404 before any streaming
    return await _sse(task_streams.task_stream(task.session_key, task.id))


@get(
    "/tasks/events",
    tags=["streams"],
    media_type="text/event-stream",
    responses=responses(401, 429),
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
) -> Stream:
    return await _sse(task_streams.session_stream(session_key))


@websocket("/ws", name="session_socket")
async def session_socket(
    socket: WebSocket[Any, Any, Any],
    session_key: NamedDependency[str],
    task_streams: NamedDependency[StreamBridge],
) -> None:
    """The session stream over a WebSocket: one JSON text message per event (the SSE
    `data`). Messages from the client are ignored; one larger than
    `WS_MAX_MESSAGE_BYTES` closes the socket (1009). Beyond the stream caps the
    handshake is refused with 429. The server closes with 1001 when it shuts down."""
    server_ended = False
    too_big = False
    frames = task_streams.session_stream(session_key, keepalive=False)
    async with contextlib.aclosing(frames):
        try:
            await anext(frames)  # OPENED: subscribed before the client sees the socket open
        except QuotaExceeded as exc:
            body = error_body(exc.code, exc.message, exc.details)
            headers = [(b"content-type", b"application/json"), (b"retry-after", str(int(exc.retry_after)).encode())]
            await refuse_websocket(socket.scope, socket.receive, socket.send, 429, body, headers)
            return
        await socket.accept()
        async with anyio.create_task_group() as tg:

            async def until_client_leaves() -> None:
                nonlocal too_big
                while True:
                    message = await socket.receive()
                    if message["type"] != "websocket.receive":
                        break
                    size = len(message.get("text") or "") + len(message.get("bytes") or b"")
                    if size > WS_MAX_MESSAGE_BYTES:
                        too_big = True
                        break
                tg.cancel_scope.cancel()

            tg.start_soon(until_client_leaves)
            try:
                async for frame in frames:
                    await socket.send_text(frame.text or frame.data.decode())
                server_ended = True
            except (WebSocketDisconnect, OSError):
                pass  # the client went away while we were sending
            tg.cancel_scope.cancel()
    if server_ended or too_big:
        code, reason = (1009, "message too big") if too_big else (WS_1001_GOING_AWAY, "server shutting down")
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await socket.close(code=code, reason=reason)


def stream_router(bridge: StreamBridge) -> Router:
    """The stream routes, bound to `bridge` (mount it inside the API router)."""
    return Router(
        path="/",
        route_handlers=[session_events, task_events, session_socket],
        dependencies={"task_streams": Provide(lambda: bridge, sync_to_thread=False)},
    )

"""Push streams: ``GET /tasks/{id}/events`` and ``GET /tasks/events`` (Server-Sent
Events) and ``WS /ws`` (the session stream over a WebSocket; also at the app's root
``/ws``, seed 004's path).

SSE framing, one message per event::

    id: 1-1795360622733
    event: progress
    data: {"type":"progress","taskId":"…","sessionKey":"…","status":"running","progress":45,…}

``event`` is the event type (``snapshot``, ``transition``, ``progress``, ``removed``);
``data`` is the `TaskEvent` as camelCase JSON (its ``type`` repeats the event type).
An idle stream gets a ``: keep-alive`` comment every 15 seconds. On the WebSocket each
event is one text message holding the same JSON.

**Ids.** On a task's stream the id names the task state the event carries:
``<attempt>-<at>`` (the attempt number and the state's time, epoch ms), so it means
the same thing across reconnects. On the session stream the id counts the messages
of the connection (1, 2, …); a reconnect starts again with fresh snapshots.

**The end of a task's stream.** Once the task settles (or is removed) the stream sends
``event: end`` (data ``{"type":"end","taskId":…,"reason":<final status or "removed">}``,
id = the final state's id, ``retry: 1000``) and closes. A browser's ``EventSource``
that does not call ``close()`` on it reconnects with ``Last-Event-ID``: for a finished
task whose final state that id already names, the answer is ``204 No Content``, which
tells ``EventSource`` to stop for good. A reconnect that missed the final state gets it
(a snapshot, then ``end``) first.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Annotated, Any

import anyio
import msgspec
from litestar import Response, Router, WebSocket, get, websocket
from litestar.di import NamedDependency, Provide
from litestar.exceptions import WebSocketDisconnect
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import HTTP_204_NO_CONTENT, WS_1001_GOING_AWAY

from async_tasks.events import EventType
from async_tasks.system import TaskSystem
from async_tasks.web.api.tasks import TaskId
from async_tasks.web.errors import responses
from async_tasks.web.streams import KEEPALIVE, OPENED, Frame, StreamBridge

_FORMAT = (
    "Server-Sent Events. Each message has `event` (`snapshot`, `transition`, `progress` or `removed`), "
    "`data` (the event as camelCase JSON: `type`, `taskId`, `sessionKey`, `name`, `executor`, `status`, "
    "`previous`, `progress`, `currentStep`, `currentStepDescription`, `error`, `result` (on `completed`), "
    "`attempt`, `at` (epoch ms)) and an `id`. Progress is coalesced to at most about 10 events per second "
    "per task (the latest value wins); transitions are never coalesced."
)
LastEventId = Annotated[
    str | None,
    HeaderParameter(
        name="Last-Event-ID",
        max_length=200,
        description="Sent by EventSource when it reconnects: the id of the last event it received.",
    ),
]
#: Milliseconds a browser waits before it reconnects after a task's stream ended (it then gets 204).
END_RETRY_MS = 1000


class _State(msgspec.Struct):
    """The fields of an event's JSON that name the task state it carries."""

    type: str = ""
    status: str = ""
    attempt: int = 0
    at: int = 0


_decode_state = msgspec.json.Decoder(_State).decode
_encode = msgspec.json.Encoder().encode


def state_id(attempt: int, at: int) -> str:
    """The SSE id of a task state: ``<attempt>-<at>``."""
    return f"{attempt}-{at}"


def parse_state_id(value: str | None) -> tuple[int, int] | None:
    """``(attempt, at)`` of a ``Last-Event-ID`` a task's stream sent, or None."""
    attempt, dash, at = (value or "").strip().partition("-")
    if not dash or not attempt.isdigit() or not at.isdigit() or len(value or "") > 40:
        return None
    return int(attempt), int(at)


async def _opened(frames: AsyncGenerator[Frame, None]) -> None:
    """Wait until a bridge stream is subscribed: a client that has the response headers
    misses nothing that happens afterwards."""
    opened = await anext(frames)
    assert opened is OPENED


async def _sse(frames: AsyncGenerator[Frame, None]) -> ServerSentEvent:
    """The SSE response of the session stream: ids count the messages of the connection."""
    await _opened(frames)

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


async def _task_sse(frames: AsyncGenerator[Frame, None], task_id: str, bridge: StreamBridge) -> ServerSentEvent:
    """The SSE response of a task's stream: state ids, and `end` once the task settled."""
    await _opened(frames)

    async def messages() -> AsyncGenerator[ServerSentEventMessage, None]:
        last: _State | None = None
        async with contextlib.aclosing(frames):
            async for frame in frames:
                if frame is KEEPALIVE:
                    yield ServerSentEventMessage(comment="keep-alive", data=None)
                    continue
                last = _decode_state(frame.data)
                yield ServerSentEventMessage(
                    data=frame.data.decode(), event=frame.type, id=state_id(last.attempt, last.at)
                )
        if bridge.closing.is_set():
            return  # the server is stopping: the stream did not end, a reconnect is welcome
        reason = "removed" if last is None or last.type == EventType.REMOVED.value else last.status
        end = {"type": "end", "taskId": task_id, "reason": reason}
        yield ServerSentEventMessage(
            data=_encode(end).decode(),
            event="end",
            id=state_id(last.attempt, last.at) if last is not None else None,
            retry=END_RETRY_MS,
        )

    return ServerSentEvent(messages())


@get(
    "/tasks/{task_id:str}/events",
    tags=["streams"],
    media_type="text/event-stream",
    responses={
        **responses(400, 404),
        204: ResponseSpec(data_container=None, description="The task is finished and the client has its final state"),
    },
    summary="Stream one task's events until it finishes",
    description=(
        "Starts with a `snapshot` of the task, then every transition and progress change; after the task "
        "settles in `completed`, `failed` (with no automatic retry left) or `cancelled`, or is `removed`, "
        'an `end` event (data `{type: "end", taskId, reason}`), then the stream closes. Ids are '
        "`<attempt>-<at>` (the task state an event carries). A reconnect whose `Last-Event-ID` already "
        "names a finished task's final state is answered 204, which stops a browser's EventSource; "
        "call `close()` on `end` to stop it at once. " + _FORMAT
    ),
)
async def task_events(
    task_system: NamedDependency[TaskSystem],
    session_key: NamedDependency[str],
    task_streams: NamedDependency[StreamBridge],
    task_id: TaskId,
    last_event_id: LastEventId = None,
) -> Response[None] | ServerSentEvent:
    task = await task_system.get_task(session_key, task_id)  # 404 before any streaming
    seen = parse_state_id(last_event_id)
    if seen is not None and task.is_terminal and seen >= (task.attempts, task.updated_at):
        # A reconnect after the end: the client has the final state. 204 stops EventSource.
        return Response(None, status_code=HTTP_204_NO_CONTENT)
    return await _task_sse(task_streams.task_stream(task.session_key, task.id), task.id, task_streams)


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
        route_handlers=[session_events, task_events, websocket("/ws", name="session_socket")(session_socket)],
        dependencies={"task_streams": Provide(lambda: bridge, sync_to_thread=False)},
    )


def root_socket_router(bridge: StreamBridge) -> Router:
    """``WS /ws`` at the app's root: the session stream where seed 004 (TaskFlow) puts its
    WebSocket, so a client written for it connects instead of getting a bare 403 (what a
    server answers a WebSocket to a path with no route). Same stream as ``<api>/ws``."""
    return Router(
        path="/",
        route_handlers=[websocket("/ws", name="session_socket_at_root")(session_socket)],
        dependencies={"task_streams": Provide(lambda: bridge, sync_to_thread=False)},
    )

"""Push streams: ``GET /tasks/{id}/events`` and ``GET /tasks/events`` (Server-Sent
Events) and ``WS /ws`` (the session stream over a WebSocket; also at the app's root
``/ws``, where clients written for a root WebSocket look).

SSE framing, one message per event::

    id: 1-1795360622733
    event: progress
    data: {"type":"progress","taskId":"…","sessionKey":"…","status":"running","progress":45,…}

``event`` is the event type (``snapshot``, ``transition``, ``progress``, ``removed``,
``log``, and on a task's stream ``eta``); ``data`` is the event as camelCase JSON (its
``type`` repeats the event type): a `TaskEvent` (a snapshot also carries the task's log:
all of it on a task's stream, its latest lines on the session's), a `LogEvent` (``lines``
the executor wrote, each ``{n, at, message, data?}``, and ``logsDropped``) or an
`EtaEvent` (``queuePosition`` and ``eta``: ``startsInMs``, ``finishesInMs``,
``typicalMs``, ``samples``).
An idle stream gets a ``: keep-alive`` comment every 15 seconds. On the WebSocket each
event is one text message holding the same JSON.

**Ids.** On a task's stream the id names the task state the event carries:
``<attempt>-<at>`` (the attempt number and the state's time, epoch ms), so it means
the same thing across reconnects. On the session stream the id counts the messages
of the connection (1, 2, …); a reconnect starts again with fresh snapshots.

**The task store away** (Redis restarting, unreachable): a stream ends with
``event: error`` (data ``{"type":"error","code":"store_unavailable","message":…,
"retryAfterMs":…}``) and a ``retry`` field, so EventSource reconnects then; the WebSocket
sends the same JSON and closes with 1013 (try again later). A stream ended to make room
for another address's (the server at MAX_STREAMS, this address holding the most) ends
the same way, with code ``stream_evicted``. A stream whose session ended (forgotten when
idle, or to make room) just ends; the WebSocket closes with 1000.

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
from litestar import Request, Response, Router, WebSocket, get, websocket
from litestar.di import NamedDependency, Provide
from litestar.exceptions import WebSocketDisconnect
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter
from litestar.response import Stream
from litestar.status_codes import HTTP_204_NO_CONTENT, WS_1000_NORMAL_CLOSURE, WS_1001_GOING_AWAY

from async_tasks.errors import QuotaExceeded, StoreUnavailable
from async_tasks.events import EventType
from async_tasks.system import TaskSystem
from async_tasks.task import Task
from async_tasks.web.api.tasks import TaskId
from async_tasks.web.errors import responses
from async_tasks.web.frames import KEEPALIVE, OPENED, Frame, sse_lines
from async_tasks.web.middleware import client_of
from async_tasks.web.security import error_body, refuse_websocket
from async_tasks.web.stream_caps import StreamEvicted
from async_tasks.web.streams import StreamBridge

#: The largest message a WebSocket client may send (the server ignores them anyway);
#: `async-tasks serve` also sets it as uvicorn's ``ws_max_size``.
WS_MAX_MESSAGE_BYTES = 4096
_SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}
_KEEPALIVE_LINE = b": keep-alive\r\n\r\n"

_FORMAT = (
    "Server-Sent Events. Each message has `event` (`snapshot`, `transition`, `progress`, `removed` or `log`), "
    "`data` (the event as camelCase JSON: `type`, `taskId`, `sessionKey`, `name`, `executor`, `status`, "
    "`previous`, `progress`, `currentStep`, `currentStepDescription`, `error`, `result` (on `completed`), "
    "`attempt`, `at` (epoch ms); a `snapshot` also carries the task's `logs` and `logsDropped`; a `log` event "
    "carries `lines` (each `{n, at, message, data?}`: `n` numbers the task's lines, so a line seen twice is "
    "kept once) and `logsDropped`) and an `id`. Progress is coalesced to at most about 10 events per second "
    "per task (the latest value wins) and log lines batched the same way (none lost); transitions are never "
    "coalesced. Open streams are capped per session and overall (429 beyond: MAX_STREAMS_PER_SESSION, "
    "MAX_STREAMS). A page that cannot send headers (EventSource) opens it with `?ticket=` from "
    "`POST /session/ticket`."
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
#: The WebSocket close code for "try again later" (RFC 6455: service restart / overload).
WS_TRY_AGAIN_LATER = 1013


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


def _stream(messages: AsyncGenerator[bytes, None]) -> Stream:
    return Stream(messages, media_type="text/event-stream", headers=_SSE_HEADERS)


#: What ends a stream with an ``error`` event rather than quietly: the store away, or the
#: stream evicted to make room (`StreamEvicted`).
_ENDS_WITH_ERROR = (StoreUnavailable, StreamEvicted)


def _unavailable(exc: StoreUnavailable | StreamEvicted) -> bytes:
    """The message that ends a stream while the task store is away (or that was evicted): an
    ``error`` event a client understands, and when to reconnect (``retry``, which
    EventSource follows)."""
    retry_ms = int(exc.retry_after * 1000)
    error = _encode({"type": "error", "code": exc.code, "message": exc.message, "retryAfterMs": retry_ms})
    return b"event: error\r\ndata: " + error + b"\r\nretry: %d\r\n\r\n" % retry_ms


async def _sse(frames: AsyncGenerator[Frame, None]) -> Stream:
    """The SSE response of the session stream: ids count the messages of the connection.
    The event and data lines of a forwarded event are encoded once for every stream."""
    await _opened(frames)

    async def messages() -> AsyncGenerator[bytes, None]:
        count = 0
        async with contextlib.aclosing(frames):
            try:
                async for frame in frames:
                    if frame is KEEPALIVE:
                        yield _KEEPALIVE_LINE
                        continue
                    count += 1
                    yield b"id: %d\r\n" % count + sse_lines(frame)
            except _ENDS_WITH_ERROR as exc:
                yield _unavailable(exc)

    return _stream(messages())


async def _task_sse(frames: AsyncGenerator[Frame, None], task_id: str, bridge: StreamBridge) -> Stream:
    """The SSE response of a task's stream: state ids, and `end` once the task settled."""
    await _opened(frames)

    async def messages() -> AsyncGenerator[bytes, None]:
        last: _State | None = None
        async with contextlib.aclosing(frames):
            try:
                async for frame in frames:
                    if frame is KEEPALIVE:
                        yield _KEEPALIVE_LINE
                        continue
                    last = _decode_state(frame.data)
                    yield b"id: " + state_id(last.attempt, last.at).encode() + b"\r\n" + sse_lines(frame)
            except _ENDS_WITH_ERROR as exc:
                yield _unavailable(exc)  # not the end: the client reconnects (Last-Event-ID) later
                return
        if bridge.closing.is_set():
            return  # the server is stopping: the stream did not end, a reconnect is welcome
        reason = "removed" if last is None or last.type == EventType.REMOVED.value else last.status
        end = _encode({"type": "end", "taskId": task_id, "reason": reason})
        ended = b"id: " + state_id(last.attempt, last.at).encode() + b"\r\n" if last is not None else b""
        yield ended + b"event: end\r\ndata: " + end + b"\r\nretry: %d\r\n\r\n" % END_RETRY_MS

    return _stream(messages())


@get(
    "/tasks/{task_id:str}/events",
    tags=["streams"],
    media_type="text/event-stream",
    responses={
        **responses(400, 401, 404, 429, 503),
        204: ResponseSpec(data_container=None, description="The task is finished and the client has its final state"),
    },
    summary="Stream one task's events until it finishes",
    description=(
        "Starts with a `snapshot` of the task (with its whole log), then every transition, progress change "
        "and batch of log lines, and `eta` events (data `{type, taskId, status, attempt, at, queuePosition, eta}`: "
        "its place in its session's line and when it should start and finish, in ms) when those move; "
        "after the task settles in `completed`, `failed` (with no automatic retry left) or `cancelled`, "
        'or is `removed`, an `end` event (data `{type: "end", taskId, reason}`), then the stream closes. Ids are '
        "`<attempt>-<at>` (the task state an event carries). A reconnect whose `Last-Event-ID` already "
        "names a finished task's final state is answered 204, which stops a browser's EventSource; "
        "call `close()` on `end` to stop it at once. " + _FORMAT
    ),
)
async def task_events(
    request: Request[Any, Any, Any],
    task_system: NamedDependency[TaskSystem],
    session_key: NamedDependency[str],
    task_streams: NamedDependency[StreamBridge],
    task_id: TaskId,
    last_event_id: LastEventId = None,
) -> Response[None] | Stream:
    task = await task_system.get_task(session_key, task_id, decode=False)  # 404 before any streaming
    return await task_event_stream(task_streams, task, last_event_id, client_of(request.scope))


async def task_event_stream(
    bridge: StreamBridge, task: Task, last_event_id: str | None, client: str, *, shared: bool = False
) -> Response[None] | Stream:
    """The SSE answer following `task` (found beforehand) for `client` (through a share link
    when `shared`): its events until it settles, then `end`; or 204 for a reconnect whose
    `Last-Event-ID` names its final state."""
    seen = parse_state_id(last_event_id)
    if seen is not None and task.is_terminal and seen >= (task.attempts, task.updated_at):
        # A reconnect after the end: the client has the final state. 204 stops EventSource.
        return Response(None, status_code=HTTP_204_NO_CONTENT)
    frames = bridge.task_stream(task.session_key, task.id, client=client, shared=shared)
    return await _task_sse(frames, task.id, bridge)


@get(
    "/tasks/events",
    tags=["streams"],
    media_type="text/event-stream",
    responses=responses(401, 429, 503),
    summary="Stream all the session's task events",
    description=(
        "Starts with a `snapshot` of every task of the session, then its events live; stays "
        "open (a `: keep-alive` comment every 15 s when idle) until the client leaves or the "
        "server stops. " + _FORMAT
    ),
)
async def session_events(
    request: Request[Any, Any, Any],
    task_system: NamedDependency[TaskSystem],
    session_key: NamedDependency[str],
    task_streams: NamedDependency[StreamBridge],
) -> Stream:
    client = client_of(request.scope)
    return await _sse(task_streams.session_stream(session_key, client=client))


async def session_socket(
    socket: WebSocket[Any, Any, Any],
    task_system: NamedDependency[TaskSystem],
    session_key: NamedDependency[str],
    task_streams: NamedDependency[StreamBridge],
) -> None:
    """The session stream over a WebSocket: one JSON text message per event (the SSE
    `data`). Messages from the client are ignored; one larger than
    `WS_MAX_MESSAGE_BYTES` closes the socket (1009). Beyond the stream caps the
    handshake is refused with 429. The server closes with 1001 when it shuts down, with
    1000 when the session ended, and with 1013 (try again later) after an ``error``
    message when the task store is away or the stream was evicted."""
    server_ended = False
    too_big = False
    unavailable: StoreUnavailable | StreamEvicted | None = None
    frames = task_streams.session_stream(session_key, keepalive=False, client=client_of(socket.scope))
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
            except _ENDS_WITH_ERROR as exc:
                # Said as a message the client can read, then closed with "try again later".
                unavailable = exc
                with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
                    await socket.send_text(
                        _encode({"type": "error", "code": exc.code, "message": exc.message}).decode()
                    )
            except (WebSocketDisconnect, OSError):
                pass  # the client went away while we were sending
            tg.cancel_scope.cancel()
    if unavailable is not None:
        reason = "task store unavailable" if isinstance(unavailable, StoreUnavailable) else "stream evicted"
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await socket.close(code=WS_TRY_AGAIN_LATER, reason=reason)
    elif server_ended or too_big:
        if too_big:
            code, reason = 1009, "message too big"
        elif task_streams.closing.is_set():
            code, reason = WS_1001_GOING_AWAY, "server shutting down"
        else:
            code, reason = WS_1000_NORMAL_CLOSURE, "session ended"
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await socket.close(code=code, reason=reason)


def stream_router(bridge: StreamBridge, **api: Any) -> Router:
    """The stream routes, bound to `bridge`; `api`: the API router's own settings (its
    ``path``, error handlers, body limit), as `AsyncTasksPlugin.routers` mounts it beside that router."""
    return Router(
        route_handlers=[session_events, task_events, websocket("/ws", name="session_socket")(session_socket)],
        dependencies={"task_streams": Provide(lambda: bridge, sync_to_thread=False)},
        **{"path": "/", **api},
    )


def root_socket_router(bridge: StreamBridge) -> Router:
    """``WS /ws`` at the app's root: the session stream where many task dashboards put their
    WebSocket, so a client written for it connects instead of getting a bare 403 (what a
    server answers a WebSocket to a path with no route). Same stream as ``<api>/ws``."""
    return Router(
        path="/",
        route_handlers=[websocket("/ws", name="session_socket_at_root")(session_socket)],
        dependencies={"task_streams": Provide(lambda: bridge, sync_to_thread=False)},
    )

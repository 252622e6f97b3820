"""Push streams: per-task SSE, session SSE, WebSocket; coalescing, back-pressure,
cleanup on disconnect, shutdown. No sleeping: waits are on events, `wait_for`,
`anyio.wait_all_tasks_blocked` and `fail_after` guards."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
import uvicorn
from litestar import Litestar
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient

from async_tasks import TaskExecutor, TaskParams
from async_tasks.events import TaskEvent
from async_tasks.task import Task
from async_tasks.testing import asgi_client, serve_in_loop
from async_tasks.web.frames import OPENED, Frame
from async_tasks.web.plugin import AsyncTasksPlugin
from async_tasks.web.streams import StreamBridge
from tests.helpers import TEST_EXECUTORS, ScriptExecutor, system_of, wait_for

API = "/api/v1"
GUARD = 10.0  # seconds: a hang fails the test instead of blocking the run
EVENT_FIELDS = set(TaskEvent.__struct_encode_fields__)
#: A snapshot is a task event with the task's log.
SNAPSHOT_FIELDS = EVENT_FIELDS | {"logs", "logsDropped"}


class FloodParams(TaskParams):
    count: int = 10_000


class FloodExecutor(TaskExecutor[FloodParams]):
    """Reports `count` progress updates back to back, never sleeping."""

    name = "flood"
    title = "Flood"
    Params = FloodParams

    async def execute(self, task: Task, progress: Any) -> Any:
        count = task.params.count
        for i in range(1, count + 1):
            await progress(90 * i / count)
        return {"reports": count}


# -- helpers ---------------------------------------------------------------------------


def bridge_of(app: Litestar) -> StreamBridge:
    return app.plugins.get(AsyncTasksPlugin).streams


async def until(predicate: Callable[[], bool]) -> None:
    """Wait until `predicate()` holds, letting every other task run in between.

    anyio's `wait_all_tasks_blocked` re-checks every 0.1 s on asyncio; a task that wakes
    on the same beat (uvicorn's main loop, the loop-lag probe: both tick every 0.1 s) can
    look runnable at every check and starve it forever, so each round is bounded.
    """
    with anyio.fail_after(GUARD):
        while not predicate():
            with anyio.move_on_after(0.25):
                await anyio.wait_all_tasks_blocked()


def parse_sse(text: str, *, eta: bool = False) -> list[dict[str, Any]]:
    """SSE text -> messages ({"id", "event", "data" (decoded JSON)} or {"comment"}); `eta`
    events (a task's estimates, which depend on how fast earlier tasks ran) only with `eta`."""
    messages = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        if block.strip():
            message = _message(block.split("\n"))
            if eta or message.get("event") != "eta":
                messages.append(message)
    return messages


def _message(lines: list[str]) -> dict[str, Any]:
    message: dict[str, Any] = {}
    for line in lines:
        if line.startswith(":"):
            message["comment"] = line[1:].strip()
        else:
            name, _, value = line.partition(": ")
            message[name] = json.loads(value) if name == "data" else value
    return message


async def sse_messages(response: httpx.Response, *, eta: bool = False) -> AsyncIterator[dict[str, Any]]:
    """Messages of a streaming httpx response, as they arrive (`eta` events only with `eta`)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if line:
            lines.append(line)
        elif lines:
            message = _message(lines)
            lines = []
            if eta or message.get("event") != "eta":
                yield message


def data_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task events of some messages (not the `end` marker of a task's stream)."""
    return [m["data"] for m in messages if "data" in m and m.get("event") != "end"]


async def new_session(http: httpx.AsyncClient) -> tuple[str, dict[str, str]]:
    """(session key, headers carrying its token)."""
    body = (await http.post(f"{API}/session")).json()
    http.cookies.clear()  # the token header alone says which session a request is in
    return body["sessionKey"], {"X-Session-Token": body["token"]}


async def create(http: httpx.AsyncClient, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    body.setdefault("executor", "script")
    response = await http.post(f"{API}/tasks", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["task"]  # type: ignore[no-any-return]


@asynccontextmanager
async def streamed(http: httpx.AsyncClient, url: str, **kwargs: Any) -> AsyncIterator[dict[str, httpx.Response]]:
    """GET a finite stream in the background (the ASGI transport buffers whole bodies):
    the response is in the dict when the block's task group ends."""
    result: dict[str, httpx.Response] = {}

    async def fetch() -> None:
        result["response"] = await http.get(url, **kwargs)

    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fetch)
            yield result


@asynccontextmanager
async def uvicorn_in_loop(app: Litestar) -> AsyncIterator[str]:
    """A real uvicorn server in the test's own event loop (lifespan included); yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, lifespan="on", ws="none", log_config=None, access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            await until(lambda: server.started)
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True
    finally:
        sock.close()


def assert_nothing_left(bridge: StreamBridge) -> None:
    """No stream bookkeeping anywhere: bridge, channels plugin, backend, event hub."""
    assert bridge.sessions == {}
    assert bridge.subscriber_count == 0
    assert bridge._pending == {}
    assert not any(name.startswith("session:") for name in bridge.channels._channels)
    assert not bridge.channels._backend._channels  # type: ignore[attr-defined]
    assert bridge._detach is None
    assert all(getattr(listener, "__self__", None) is not bridge for listener in bridge.hub.listeners)


# -- per-task stream (finite: the in-process client can read it) ----------------------------


async def test_task_stream_from_snapshot_to_terminal(client: httpx.AsyncClient, app: Litestar) -> None:
    bridge = bridge_of(app)
    bridge.coalesce_window = 0  # every progress report goes out: an exact sequence
    task = await create(client, params={"hold": True})
    async with streamed(client, f"{API}/tasks/{task['id']}/events") as result:
        await until(lambda: bridge.subscriber_count == 1)
        assert (await client.post(f"{API}/tasks/{task['id']}/start")).status_code == 200
        await wait_for(app, task["id"], "running", progress=90)
        ScriptExecutor.release(task["id"])
    response = result["response"]  # the body is complete: the stream ended by itself

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.startswith("id: 0-")
    assert response.text.endswith('"reason":"completed"}\r\nretry: 1000\r\n\r\n')
    *messages, end = parse_sse(response.text)
    assert [m["event"] for m in messages] == [
        "snapshot",
        "transition",
        "progress",
        "progress",
        "progress",
        "transition",
    ]
    events = data_of(messages)
    # Each id names the task state the event carries: <attempt>-<at>.
    assert [m["id"] for m in messages] == [f"{e['attempt']}-{e['at']}" for e in events]
    assert end == {
        "id": messages[-1]["id"],
        "event": "end",
        "data": {"type": "end", "taskId": task["id"], "reason": "completed"},
        "retry": "1000",
    }
    assert all(set(e) == (SNAPSHOT_FIELDS if e["type"] == "snapshot" else EVENT_FIELDS) for e in events)
    assert all(e["type"] == m["event"] for e, m in zip(events, messages, strict=True))
    assert {e["taskId"] for e in events} == {task["id"]}
    snapshot, running, *progress, completed = events
    assert (snapshot["status"], snapshot["progress"], snapshot["name"]) == ("pending", 0, "Scripted Task")
    assert (running["status"], running["previous"], running["attempt"]) == ("running", "pending", 1)
    assert [e["progress"] for e in progress] == [30, 60, 90]
    assert progress[0]["currentStep"] == "Warming Up"
    assert completed["status"] == "completed" and completed["previous"] == "running"
    assert completed["progress"] == 100 and completed["result"] == {"steps": 3}
    assert completed["name"] == "Scripted Task"
    await until(lambda: not bridge.sessions)
    assert_nothing_left(bridge)


async def test_task_stream_of_a_finished_task_is_one_snapshot(client: httpx.AsyncClient, app: Litestar) -> None:
    task = await create(client, start=True, params={"result": {"answer": 42}})
    await wait_for(app, task["id"], "completed")
    with anyio.fail_after(GUARD):
        response = await client.get(f"{API}/tasks/{task['id']}/events")
    message, end = parse_sse(response.text)
    assert message["event"] == "snapshot" and message["id"] == f"1-{message['data']['at']}"
    assert message["data"]["status"] == "completed"
    assert message["data"]["result"] == {"answer": 42}
    assert end["event"] == "end" and end["id"] == message["id"]
    assert bridge_of(app).sessions == {}  # never subscribed


async def test_a_reconnect_after_the_end_is_204(client: httpx.AsyncClient, app: Litestar) -> None:
    """EventSource reconnects with Last-Event-ID: for a finished task it already knows, 204 (stop);
    one that missed the final state gets it, then `end`; a running task's reconnect streams on."""
    task = await create(client, start=True)
    await wait_for(app, task["id"], "completed")
    url = f"{API}/tasks/{task['id']}/events"
    with anyio.fail_after(GUARD):
        final, end = parse_sse((await client.get(url)).text)
        assert final["data"]["status"] == "completed" and end["id"] == final["id"]
        stop = await client.get(url, headers={"Last-Event-ID": end["id"]})
        assert stop.status_code == 204 and stop.content == b""
        missed = await client.get(url, headers={"Last-Event-ID": "1-1"})
        assert [m["event"] for m in parse_sse(missed.text)] == ["snapshot", "end"]
        for garbage in ("", "abc", "1-x", "-1", "1-2-3"):
            again = await client.get(url, headers={"Last-Event-ID": garbage})
            assert again.status_code == 200 and parse_sse(again.text)[-1]["event"] == "end", garbage
        # A retried task is not finished: the old id does not stop its new attempt's stream.
        held = await create(client, start=True, params={"hold": True})
        await wait_for(app, held["id"], "running")
        old = f"{API}/tasks/{held['id']}/events"
        assert (await client.post(old.replace("/events", "/cancel"))).status_code == 200
        cancelled, cancelled_end = parse_sse((await client.get(old)).text)
        assert cancelled_end["data"]["reason"] == cancelled["data"]["status"] == "cancelled"
        assert (await client.get(old, headers={"Last-Event-ID": cancelled_end["id"]})).status_code == 204
        assert (await client.post(old.replace("/events", "/retry"))).status_code == 200
        async with streamed(client, old, headers={"Last-Event-ID": cancelled_end["id"]}) as result:
            await wait_for(app, held["id"], "running")
            ScriptExecutor.release(held["id"])
        messages = parse_sse(result["response"].text)
        assert messages[0]["event"] == "snapshot" and messages[-1]["event"] == "end"
        assert messages[-1]["data"]["reason"] == "completed" and messages[-1]["id"].startswith("2-")


async def test_task_stream_of_unknown_or_foreign_task_is_404(client: httpx.AsyncClient) -> None:
    _, alice = await new_session(client)
    _, bob = await new_session(client)
    task = await create(client, alice)
    for task_id, headers in (("no-such-task", alice), (task["id"], bob)):
        response = await client.get(f"{API}/tasks/{task_id}/events", headers=headers)
        assert response.status_code == 404
        body = response.json()
        assert body["success"] is False and body["error"]["code"] == "task_not_found"


async def test_task_stream_follows_an_automatic_retry_to_the_end(make_app: Callable[..., Litestar]) -> None:
    app = make_app(retry_backoff_ms=0)
    async with serve_in_loop(app) as http:
        task = await create(http, params={"steps": 0, "failAttempts": 1}, maxRetries=1)
        async with streamed(http, f"{API}/tasks/{task['id']}/events") as result:
            await until(lambda: bridge_of(app).subscriber_count == 1)
            await http.post(f"{API}/tasks/{task['id']}/start")
        events = data_of(parse_sse(result["response"].text))
    # The first failure is followed by an automatic retry, so it does not end the stream.
    assert [(e["type"], e["status"], e["attempt"]) for e in events] == [
        ("snapshot", "pending", 0),
        ("transition", "running", 1),
        ("transition", "failed", 1),
        ("transition", "pending", 1),
        ("transition", "running", 2),
        ("transition", "completed", 2),
    ]
    assert events[2]["error"] == "RuntimeError: attempt 1 failed on purpose"


# -- coalescing ------------------------------------------------------------------------------


async def test_coalescing_sends_the_latest_progress_before_the_transition(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    bridge = bridge_of(app)
    bridge.coalesce_window = 60.0  # nothing flushes by time in this test: only the transition does
    task = await create(client, params={"hold": True})
    async with streamed(client, f"{API}/tasks/{task['id']}/events") as result:
        await until(lambda: bridge.subscriber_count == 1)
        await client.post(f"{API}/tasks/{task['id']}/start")
        await wait_for(app, task["id"], "running", progress=90)
        ScriptExecutor.release(task["id"])
    events = data_of(parse_sse(result["response"].text))
    # 30 goes out at once (first in its window); 60 is replaced by 90 (latest wins);
    # the completion flushes 90 first, so the order is the store's.
    assert [(e["type"], e["progress"]) for e in events] == [
        ("snapshot", 0),
        ("transition", 0),
        ("progress", 30),
        ("progress", 90),
        ("transition", 100),
    ]
    assert bridge.events_coalesced_total == 1


async def test_a_progress_flood_is_coalesced(make_app: Callable[..., Litestar]) -> None:
    app = make_app([*TEST_EXECUTORS, FloodExecutor])
    bridge = bridge_of(app)  # the default window (100 ms)
    async with serve_in_loop(app) as http:
        task = await create(http, executor="flood")
        async with streamed(http, f"{API}/tasks/{task['id']}/events") as result:
            await until(lambda: bridge.subscriber_count == 1)
            await http.post(f"{API}/tasks/{task['id']}/start")
        events = data_of(parse_sse(result["response"].text))
    progress = [e["progress"] for e in events if e["type"] == "progress"]
    assert 1 <= len(progress) < 100  # out of 10 000 reports
    assert progress == sorted(set(progress))
    assert progress[-1] == 90  # the last report is never lost
    assert [e["status"] for e in events if e["type"] == "transition"] == ["running", "completed"]
    assert events[-1]["result"] == {"reports": 10_000}
    assert bridge.events_coalesced_total >= 10_000 - len(progress) - 1


# -- session stream over real HTTP ---------------------------------------------------------------


@pytest.mark.e2e
async def test_session_streams_are_isolated_keep_alive_and_clean_up(make_app: Callable[..., Litestar]) -> None:
    app = make_app(auto_map_session_by_ip=False)
    bridge = bridge_of(app)
    bridge.keepalive_interval = 0.05
    async with uvicorn_in_loop(app) as url, httpx.AsyncClient(base_url=url, timeout=GUARD) as http:
        alice_key, alice = await new_session(http)
        bob_key, bob = await new_session(http)
        before = await create(http, alice, name="before")
        assert bridge.sessions == {}
        assert_nothing_left(bridge)  # nothing is forwarded, or even listened to, without a stream

        with anyio.fail_after(GUARD):
            async with (
                http.stream("GET", f"{API}/tasks/events", headers=alice) as alice_response,
                http.stream("GET", f"{API}/tasks/events", headers=bob) as bob_response,
            ):
                assert alice_response.headers["content-type"].startswith("text/event-stream")
                # Both are subscribed before their headers went out: nothing from now on is missed.
                assert bridge.subscriber_count == 2
                alice_messages = sse_messages(alice_response)
                bob_messages = sse_messages(bob_response)
                first = await anext(alice_messages)
                assert (first["event"], first["data"]["taskId"]) == ("snapshot", before["id"])

                bobs = await create(http, bob, start=True, params={"steps": 1})
                alices = await create(http, alice, start=True, params={"steps": 1})

                async def until_completed(messages: AsyncIterator[dict[str, Any]], task_id: str) -> list[Any]:
                    seen: list[Any] = []
                    async for message in messages:
                        if "data" in message:
                            seen.append(message["data"])
                            if message["data"]["taskId"] == task_id and message["data"]["status"] == "completed":
                                return seen
                    raise AssertionError("the stream ended early")

                seen_by_alice = await until_completed(alice_messages, alices["id"])
                seen_by_bob = await until_completed(bob_messages, bobs["id"])
                assert {e["taskId"] for e in seen_by_alice} == {alices["id"]}
                assert {e["sessionKey"] for e in seen_by_alice} == {alice_key}
                assert {e["taskId"] for e in seen_by_bob} == {bobs["id"]}
                assert {e["sessionKey"] for e in seen_by_bob} == {bob_key}
                assert [e["status"] for e in seen_by_bob if e["type"] == "transition"] == [
                    "pending",
                    "running",
                    "completed",
                ]

                async for message in alice_messages:  # idle now: keep-alive comments
                    if "comment" in message:
                        assert message == {"comment": "keep-alive"}
                        break
            # Both clients hung up (real TCP disconnects).
            await until(lambda: not bridge.sessions)
        assert_nothing_left(bridge)


# -- WebSocket ---------------------------------------------------------------------------------------


def test_seed_004s_socket_path_is_the_session_stream(make_app: Callable[..., Litestar]) -> None:
    """``ws://host/ws`` (where seed 004's clients connect) streams the session like ``/api/v1/ws``."""
    app = make_app(auto_map_session_by_ip=False)
    with TestClient(app) as client:
        token = client.post(f"{API}/session").json()["token"]
        client.cookies.clear()
        mine = {"X-Session-Token": token}
        task = client.post(f"{API}/tasks", json={"executor": "script"}, headers=mine).json()["task"]
        for path in ("/ws", f"{API}/ws"):
            with client.websocket_connect(path, headers=mine) as ws:
                first = ws.receive_json(timeout=GUARD)
                assert (first["type"], first["taskId"], first["status"]) == ("snapshot", task["id"], "pending")
        assert "/ws" in {route.path for route in app.routes}


def test_websocket_stream(make_app: Callable[..., Litestar]) -> None:
    app = make_app(auto_map_session_by_ip=False)
    bridge = bridge_of(app)
    with TestClient(app) as client:
        alice_key, alice_token = (lambda b: (b["sessionKey"], b["token"]))(client.post(f"{API}/session").json())
        bob_token = client.post(f"{API}/session").json()["token"]
        client.cookies.clear()
        alice, bob = {"X-Session-Token": alice_token}, {"X-Session-Token": bob_token}
        before = client.post(f"{API}/tasks", json={"executor": "script"}, headers=alice).json()["task"]

        with client.websocket_connect(f"{API}/ws", headers=alice) as ws:
            first = ws.receive_json(timeout=GUARD)
            assert (first["type"], first["taskId"], first["status"]) == ("snapshot", before["id"], "pending")
            assert set(first) == SNAPSHOT_FIELDS
            client.post(f"{API}/tasks", json={"executor": "script", "start": True}, headers=bob)
            mine = client.post(
                f"{API}/tasks", json={"executor": "script", "start": True, "params": {"steps": 1}}, headers=alice
            ).json()["task"]
            seen: list[dict[str, Any]] = []
            while not seen or seen[-1]["status"] != "completed":
                seen.append(ws.receive_json(timeout=GUARD))
            assert {e["taskId"] for e in seen} == {mine["id"]}
            assert {e["sessionKey"] for e in seen} == {alice_key}
            assert [e["type"] for e in seen] == ["transition", "transition", "progress", "transition"]
            assert seen[-1]["result"] == {"steps": 1}
        client.blocking_portal.call(until, lambda: not bridge.sessions)
        assert_nothing_left(bridge)

        # At shutdown the server closes the socket ("going away").
        ws = client.websocket_connect(f"{API}/ws", headers=alice).__enter__()
        try:
            assert ws.receive_json(timeout=GUARD)["type"] == "snapshot"
            client.blocking_portal.call(until, lambda: bridge.subscriber_count == 1)
            # The app's lifespan ends (in a thread, so that a hang fails the test instead).
            stopping = threading.Thread(target=client.__exit__, args=(None, None, None), daemon=True)
            stopping.start()
            with pytest.raises(WebSocketDisconnect) as closed:
                for _ in range(10):
                    ws.receive(timeout=GUARD)
            assert closed.value.code == 1001
            stopping.join(GUARD)
            assert not stopping.is_alive()
        finally:
            ws.__exit__(None, None, None)
        assert_nothing_left(bridge)


# -- disconnect, back-pressure, shutdown -----------------------------------------------------------------


async def test_a_disconnected_client_leaves_nothing_behind(client: httpx.AsyncClient, app: Litestar) -> None:
    bridge = bridge_of(app)
    task = await create(client, start=True, params={"hold": True})
    await wait_for(app, task["id"], "running")
    assert_nothing_left(bridge)
    with anyio.fail_after(GUARD):
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, f"{API}/tasks/events")
            tg.start_soon(client.get, f"{API}/tasks/{task['id']}/events")
            await until(lambda: bridge.subscriber_count == 2)
            assert len(bridge.hub.listeners) >= 1
            tg.cancel_scope.cancel()  # both clients vanish mid-stream
    await until(lambda: not bridge.sessions)
    assert_nothing_left(bridge)
    published = bridge.events_published_total
    ScriptExecutor.release(task["id"])
    await wait_for(app, task["id"], "completed")
    assert bridge.events_published_total == published  # nobody listening: nothing forwarded


@asynccontextmanager
async def own_bridge(app: Litestar, **options: Any) -> AsyncIterator[tuple[Any, StreamBridge]]:
    """The app running in this loop plus a bridge of our own on its store: (system, bridge)."""
    with anyio.fail_after(GUARD):
        async with app.lifespan(), anyio.create_task_group() as tg:
            system = system_of(app)
            bridge = StreamBridge(system.store, **options)
            await tg.start(bridge.run)
            yield system, bridge
            tg.cancel_scope.cancel()


def task_id_of(frame: Frame) -> str:
    return json.loads(frame.data)["taskId"]  # type: ignore[no-any-return]


async def test_a_slow_client_has_a_bounded_backlog_then_resyncs(app: Litestar) -> None:
    async with own_bridge(app, max_backlog=5, coalesce_window=0) as (system, bridge):
        first = await system.create_task("s_slow", executor="script", start=False)
        stream = bridge.session_stream("s_slow")
        assert await anext(stream) is OPENED
        frame = await anext(stream)
        assert frame.type == "snapshot" and task_id_of(frame) == first.id
        (subscriber,) = bridge.sessions["s_slow"].subscribers
        more = [await system.create_task("s_slow", executor="script", start=False) for _ in range(20)]
        await until(lambda: bridge.events_dropped_total == 15)  # 20 delivered, nobody read
        assert subscriber.qsize == 5
        assert subscriber.dropped == 15
        # The stream notices the gap and starts again from the store's state.
        frames = [await anext(stream) for _ in range(21)]
        assert {f.type for f in frames} == {"snapshot"}
        assert [task_id_of(f) for f in frames] == [t.id for t in [first, *more]]
        await stream.aclose()
        assert_nothing_left(bridge)


async def test_a_new_stream_never_gets_events_older_than_its_snapshot(app: Litestar) -> None:
    async with own_bridge(app) as (system, bridge):
        existing = await system.create_task("s_key", executor="script", start=False)
        older = bridge.session_stream("s_key")  # a stream is open, so the session's events flow
        assert await anext(older) is OPENED
        assert task_id_of(await anext(older)) == existing.id
        task = await system.create_task("s_key", executor="script", start=False)
        # The event of `task` is still on its way through the channels when a second stream
        # opens: that stream's snapshot already shows the task, so it must not get the event.
        newer = bridge.session_stream("s_key")
        assert await anext(newer) is OPENED
        snapshots = [await anext(newer), await anext(newer)]
        assert [(f.type, task_id_of(f)) for f in snapshots] == [("snapshot", existing.id), ("snapshot", task.id)]
        later = await system.create_task("s_key", executor="script", start=False)
        frame = await anext(newer)
        assert (frame.type, task_id_of(frame)) == ("transition", later.id)
        await newer.aclose()
        await older.aclose()
        assert_nothing_left(bridge)


async def test_streams_end_when_the_app_shuts_down(app: Litestar) -> None:
    bridge = bridge_of(app)
    stop, stopped = anyio.Event(), anyio.Event()
    results: dict[str, httpx.Response] = {}

    async def run_app(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with app.lifespan():
            task_status.started()
            await stop.wait()
        stopped.set()

    async with asgi_client(app) as http:

        async def fetch(name: str, url: str) -> None:
            results[name] = await http.get(url)

        with anyio.fail_after(GUARD):
            async with anyio.create_task_group() as tg:
                await tg.start(run_app)
                task = await create(http, start=True, params={"hold": True})
                await wait_for(app, task["id"], "running")
                tg.start_soon(fetch, "session", f"{API}/tasks/events")
                tg.start_soon(fetch, "task", f"{API}/tasks/{task['id']}/events")
                await until(lambda: bridge.subscriber_count == 2)
                stop.set()
                with anyio.fail_after(3):  # promptly: no waiting on clients or timeouts
                    await stopped.wait()
                    await until(lambda: len(results) == 2)
    assert bridge.closing.is_set()
    for name in ("session", "task"):
        (message,) = parse_sse(results[name].text)  # the snapshot, then the end of the stream
        assert message["event"] == "snapshot" and message["data"]["taskId"] == task["id"]
    assert_nothing_left(bridge)

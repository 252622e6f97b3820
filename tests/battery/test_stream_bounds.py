"""Push streams are bounded and cheap (issue 11: 1500 SSE + 750 WebSocket streams made
``/health`` unresponsive for minutes; each event was encoded once per open stream;
WebSocket clients could send 16 MiB messages).

Beyond MAX_STREAMS_PER_SESSION in a session or MAX_STREAMS overall, opening a stream
is a 429 (SSE) or a refused handshake (WebSocket); a forwarded event is decoded and
encoded once for all the streams of its session; a client message beyond 4 KiB
closes the socket.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import httpx
import pytest
from litestar import Litestar
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient

from async_tasks.errors import QuotaExceeded
from async_tasks.testing import serve_in_loop
from async_tasks.web import streams as stream_module
from async_tasks.web.api.streams import WS_MAX_MESSAGE_BYTES
from async_tasks.web.frames import OPENED, Frame, decode_envelope
from async_tasks.web.plugin import AsyncTasksPlugin
from async_tasks.web.streams import StreamBridge
from tests.battery.test_limits import API, assert_error
from tests.helpers import system_of
from tests.test_streams import until, uvicorn_in_loop

pytestmark = pytest.mark.battery


def bridge_of(app: Litestar) -> StreamBridge:
    return app.plugins.get(AsyncTasksPlugin).streams


@asynccontextmanager
async def open_streams(bridge: StreamBridge, key: str, count: int) -> AsyncIterator[list[AsyncGenerator[Frame, None]]]:
    """`count` open session streams of `key` (subscribed: past OPENED)."""
    async with AsyncExitStack() as stack:
        streams = []
        for _ in range(count):
            stream = bridge.session_stream(key)
            stack.push_async_callback(stream.aclose)
            assert await anext(stream) is OPENED
            streams.append(stream)
        yield streams


async def test_streams_beyond_the_session_cap_are_429(make_app: Callable[..., Litestar]) -> None:
    app = make_app(max_streams_per_session=3)
    async with serve_in_loop(app) as client:
        key = (await client.get(f"{API}/session")).json()["sessionKey"]
        bridge = bridge_of(app)
        async with open_streams(bridge, key, 3):
            refused = await client.get(f"{API}/tasks/events")
            error = assert_error(refused, 429, "quota_exceeded")
            assert "MAX_STREAMS_PER_SESSION" in str(error["message"]) and int(refused.headers["Retry-After"]) >= 1
            task = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
            assert_error(await client.get(f"{API}/tasks/{task['id']}/events"), 429, "quota_exceeded")
            async with open_streams(bridge, "another-session", 3):  # per session
                assert bridge.open_streams == 6
        assert bridge.open_streams == 0 and not bridge.sessions
        async with open_streams(bridge, key, 3):  # closed streams give their places back
            pass


async def test_streams_beyond_the_server_cap_are_429(make_app: Callable[..., Litestar]) -> None:
    app = make_app(max_streams=5, max_streams_per_session=5)
    async with serve_in_loop(app) as client:
        bridge = bridge_of(app)
        async with AsyncExitStack() as stack:
            for n in range(5):
                await stack.enter_async_context(open_streams(bridge, f"s{n}", 1))
            error = assert_error(await client.get(f"{API}/tasks/events"), 429, "quota_exceeded")
            assert "MAX_STREAMS" in str(error["message"])
            with pytest.raises(QuotaExceeded):
                await anext(bridge.session_stream("s-new"))
        assert bridge.open_streams == 0


def test_a_websocket_beyond_the_cap_is_refused(make_app: Callable[..., Litestar]) -> None:
    app = make_app(max_streams_per_session=1)
    with TestClient(app) as client:
        with client.websocket_connect(f"{API}/ws") as first:
            first.send_text("hi")
            with pytest.raises(WebSocketDisconnect):  # (under uvicorn: an HTTP 429 with the error body)
                with client.websocket_connect(f"{API}/ws") as second:
                    second.receive_text()
        with client.websocket_connect(f"{API}/ws") as again:  # the first one's place is free again
            again.send_text("hi")


def test_a_websocket_message_over_the_limit_closes_the_socket(make_app: Callable[..., Litestar]) -> None:
    with TestClient(make_app()) as client, client.websocket_connect(f"{API}/ws") as socket:
        socket.send_text("x" * WS_MAX_MESSAGE_BYTES)  # at the limit: ignored
        socket.send_text("x" * (WS_MAX_MESSAGE_BYTES + 1))
        with pytest.raises(WebSocketDisconnect) as closed:
            socket.receive_text()
        assert closed.value.code == 1009


async def test_an_event_is_encoded_once_for_all_its_streams(
    make_app: Callable[..., Litestar], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten streams of one session get the very same frame object for an event: the channel
    message is not decoded, nor the SSE lines or WebSocket text built, per stream."""
    app = make_app(max_streams_per_session=10)
    decodes = 0
    real_decode = decode_envelope

    def counting(raw: bytes) -> object:
        nonlocal decodes
        decodes += 1
        return real_decode(raw)

    monkeypatch.setattr(stream_module, "decode_envelope", counting)
    async with serve_in_loop(app) as client:
        key = (await client.get(f"{API}/session")).json()["sessionKey"]
        await client.post(f"{API}/tasks", json={"executor": "script"})
        async with open_streams(bridge_of(app), key, 10) as streams:
            with anyio.fail_after(5):
                for stream in streams:  # each stream starts with its own snapshot
                    assert (await anext(stream)).type == "snapshot"
            await client.post(f"{API}/tasks", json={"executor": "script"})
            frames = []
            with anyio.fail_after(5):
                for stream in streams:
                    frame = await anext(stream)
                    while frame.type == "keep-alive":
                        frame = await anext(stream)
                    frames.append(frame)
        assert all(frame is frames[0] for frame in frames) and frames[0].type == "transition"
        assert frames[0].sse.startswith(b"event: transition\r\ndata: {") and frames[0].text.startswith("{")
        assert decodes == 0


async def test_fan_out_cost_per_stream_stays_small(make_app: Callable[..., Litestar]) -> None:
    """With the session at its cap of streams, a burst of events reaches every stream and
    the API still answers at once (the figure is printed for the report)."""
    app = make_app(max_streams_per_session=16)
    async with serve_in_loop(app) as client:
        key = (await client.get(f"{API}/session")).json()["sessionKey"]
        system = system_of(app)
        async with open_streams(bridge_of(app), key, 16) as streams:
            began = time.perf_counter()
            for _ in range(50):  # (the first create is read as a snapshot, the rest live)
                await system.create_task(key, executor="script", start=False)
            received = 0
            with anyio.fail_after(10):
                for stream in streams:
                    for _ in range(50):
                        frame = await anext(stream)
                        while frame.type == "keep-alive":
                            frame = await anext(stream)
                        received += 1
            elapsed = time.perf_counter() - began
            health = await client.get("/health")
        assert received == 800 and health.status_code == 200
        assert elapsed < 5, f"{received} deliveries took {elapsed:.2f} s"


@pytest.mark.e2e
async def test_real_sse_streams_are_refused_beyond_the_cap_over_http(make_app: Callable[..., Litestar]) -> None:
    """Through a real server: open SSE responses count, and leaving frees the place."""
    app = make_app(max_streams_per_session=1)
    async with uvicorn_in_loop(app) as url, httpx.AsyncClient(base_url=url) as client:
        async with client.stream("GET", f"{API}/tasks/events") as first:
            assert first.status_code == 200
            assert_error(await client.get(f"{API}/tasks/events"), 429, "quota_exceeded")
        await until(lambda: bridge_of(app).open_streams == 0)
        async with client.stream("GET", f"{API}/tasks/events") as again:
            assert again.status_code == 200

"""The app in-process behind httpx transports that stream, for the client and CLI tests.

    async with streaming_transport(app) as transport:        # AsyncTaskClient(transport=...)
    with sync_transport(app) as transport:                   # TaskClient(transport=...)

httpx's ``ASGITransport`` hands a response over only once the app has finished it,
so an event stream (which ends when its task ends) could not be read while the task
runs. `StreamingASGITransport` hands over the response as soon as its head is sent
and streams the body; closing the response early tells the app the client left
(``http.disconnect``), as a closed socket would. `sync_transport` runs the app and
that transport in the event loop of an anyio blocking portal (the way Litestar's
TestClient does), so the synchronous client and the CLI can use it. No sockets, no
processes: a request costs a few hundred microseconds.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, cast
from urllib.parse import unquote

import anyio
import httpx
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio.streams.memory import MemoryObjectReceiveStream
from litestar import Litestar

CLIENT = ("127.0.0.1", 50000)


class StreamingASGITransport(httpx.AsyncBaseTransport):
    """Runs each request through the ASGI app as a task of `task_group`."""

    def __init__(self, app: Litestar, task_group: TaskGroup, client: tuple[str, int] = CLIENT) -> None:
        self.app = app
        self.task_group = task_group
        self.client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(key.lower(), value) for key, value in request.headers.raw],
            "scheme": request.url.scheme,
            "path": unquote(request.url.path),
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port),
            "client": self.client,
            "root_path": "",
        }
        request_read = False
        disconnected = anyio.Event()
        head: dict[str, Any] = {}
        started = anyio.Event()
        chunks_in, chunks_out = anyio.create_memory_object_stream[bytes](math.inf)
        failures: list[Exception] = []

        async def receive() -> dict[str, Any]:
            nonlocal request_read
            if not request_read:
                request_read = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                head.update(message)
                started.set()
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    try:
                        chunks_in.send_nowait(message["body"])
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass  # the client has gone: a server drops what it writes then
                if not message.get("more_body", False):
                    chunks_in.close()

        async def run() -> None:
            try:
                await cast("Any", self.app)(scope, receive, send)
            except Exception as exc:  # surfaced below when no response was started
                failures.append(exc)
            finally:
                chunks_in.close()
                started.set()

        self.task_group.start_soon(run)
        await started.wait()
        if "status" not in head:
            raise failures[0] if failures else RuntimeError("the app answered nothing")
        read_timeout = request.extensions.get("timeout", {}).get("read")
        stream = _Body(chunks_out, disconnected, read_timeout, request)
        return httpx.Response(head["status"], headers=head.get("headers", []), stream=stream, request=request)


class _Body(httpx.AsyncByteStream):
    def __init__(
        self,
        chunks: MemoryObjectReceiveStream[bytes],
        disconnected: anyio.Event,
        read_timeout: float | None,
        request: httpx.Request,
    ) -> None:
        self.chunks = chunks
        self.disconnected = disconnected
        self.read_timeout = read_timeout
        self.request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                with anyio.fail_after(self.read_timeout):
                    chunk = await self.chunks.receive()
            except anyio.EndOfStream:
                return
            except TimeoutError as exc:
                raise httpx.ReadTimeout("no data within the read timeout", request=self.request) from exc
            yield chunk

    async def aclose(self) -> None:
        self.disconnected.set()
        self.chunks.close()


class PortalTransport(httpx.BaseTransport):
    """A synchronous transport that hands each request to `transport` in `portal`'s loop."""

    def __init__(self, transport: httpx.AsyncBaseTransport, portal: BlockingPortal) -> None:
        self.transport = transport
        self.portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        response = self.portal.call(self.transport.handle_async_request, request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_PortalBody(response.stream, self.portal),
            request=request,
        )


class _PortalBody(httpx.SyncByteStream):
    def __init__(self, stream: httpx.AsyncByteStream, portal: BlockingPortal) -> None:
        self.stream = stream
        self.portal = portal
        self.chunks = stream.__aiter__()

    async def _next(self) -> bytes | None:
        return await anext(self.chunks, None)

    def __iter__(self) -> Iterator[bytes]:
        while (chunk := self.portal.call(self._next)) is not None:
            yield chunk

    def close(self) -> None:
        self.portal.call(self.stream.aclose)


@asynccontextmanager
async def streaming_transport(app: Litestar, client: tuple[str, int] = CLIENT) -> AsyncIterator[StreamingASGITransport]:
    """`app` with its lifespan running in this event loop, behind a streaming transport."""
    async with app.lifespan(), anyio.create_task_group() as requests:
        try:
            yield StreamingASGITransport(app, requests, client)
        finally:
            requests.cancel_scope.cancel()  # streams left open


@contextmanager
def sync_transport(app: Litestar) -> Iterator[PortalTransport]:
    """`app` running in a portal thread's event loop, behind a synchronous transport."""
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(streaming_transport(app)) as transport,
    ):
        yield PortalTransport(transport, portal)

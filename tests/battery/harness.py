"""A synchronous handle on an app running in a blocking portal, for hypothesis state machines.

Each request may come from its own client address (the ASGI scope's ``client``), so
IP-mapped sessions can be told apart in process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from litestar import Litestar

from async_tasks.testing import asgi_client


class PortalApp:
    """`app` with its lifespan running in `portal`; `request` is a plain function call."""

    def __init__(self, app: Litestar, portal: BlockingPortal) -> None:
        self.app = app
        self.portal = portal

    def request(self, method: str, path: str, *, ip: str = "127.0.0.1", **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            async with asgi_client(self.app, ip) as http:
                response: httpx.Response = await http.request(method, path, **kwargs)
                return response

        return self.portal.call(send)

    def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run `func` (a coroutine function or a plain one) in the app's event loop thread;
        anyio primitives such as `Event.set` must be used there."""
        return self.portal.call(func, *args)


@contextmanager
def blocking_portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal("asyncio") as portal:
        yield portal


@contextmanager
def running(app: Litestar, portal: BlockingPortal) -> Iterator[PortalApp]:
    """Run `app`'s lifespan in `portal` for the duration of the block."""
    with portal.wrap_async_context_manager(app.lifespan()):
        yield PortalApp(app, portal)

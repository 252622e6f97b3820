"""Push streams on the PostgreSQL backend: a Litestar channels backend over LISTEN/NOTIFY.

The store's functions NOTIFY every change on one channel per deployment
(``<schema>_events``), the payload being the session's key, a newline and the envelope the
streams read; this backend LISTENs on that one channel through one connection of its own
and hands each envelope to the subscribers of ``session:<key>``. Why not Litestar's
`PsycoPgChannelsBackend`: it LISTENs on one channel per session, and a channel is an
identifier of at most 63 bytes (longer session keys would be cut and could meet); it
stops and restarts its listener for every new channel (up to 0.1 s per subscription); and
its listener ends for good on the first connection error. Here:

- a subscription is a local set: opening a stream costs nothing in PostgreSQL, and is
  refused (`StoreUnavailable`, 503) while the listening connection is down;
- the listener reconnects by itself, saying once that it lost PostgreSQL and once that it
  is back, and calls `on_resubscribe` (what was sent meanwhile is lost: the streams start
  again from snapshots).

Each API process receives every change of the deployment (it keeps the sessions that have
an open stream here); NOTIFY carries at most 8000 bytes, so an event whose result is
larger leaves the result out (see ``publish`` in `sql/prelude.sql`).

Imported only by the web door (it needs Litestar).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterable

import anyio
from litestar.channels.backends.base import ChannelsBackend

from async_tasks.backends.postgres.connection import Availability, Listener, connection_kwargs
from async_tasks.errors import StoreUnavailable


class NotifyChannelsBackend(ChannelsBackend):
    """Sessions' channels (``<prefix><session key>``) fed by the deployment's NOTIFY channel."""

    def __init__(
        self,
        *,
        url: str,
        schema: str,
        channel: str,
        prefix: str,
        timeout_ms: int,
        on_resubscribe: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.schema = schema
        self.channel = channel
        self.prefix = prefix
        self.timeout = timeout_ms / 1000
        self.on_resubscribe = on_resubscribe
        self.availability = Availability("The push streams")
        self.listener = Listener(
            url,
            schema,
            [channel],
            self._received,
            availability=self.availability,
            timeout_ms=timeout_ms,
            on_reconnect=self._reconnected,
        )
        self._subscribed: set[str] = set()
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def on_startup(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self.listener.run())

    async def on_shutdown(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._subscribed.clear()

    def _received(self, channel: str, payload: str) -> None:
        session, _, envelope = payload.partition("\n")
        name = self.prefix + session
        if name in self._subscribed:
            self._queue.put_nowait((name, envelope.encode()))

    def _reconnected(self) -> None:
        if self.on_resubscribe is not None:
            self.on_resubscribe()

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Subscribe, once the deployment's channel is listened to: PostgreSQL away is
        `StoreUnavailable` within the timeout (the stream answers 503)."""
        try:
            with anyio.fail_after(self.timeout):
                await self.listener.listening.wait()
        except TimeoutError:
            raise StoreUnavailable(
                "The task store (PostgreSQL) is unavailable: the push streams cannot listen to it"
            ) from None
        self._subscribed.update(channels)

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        self._subscribed.difference_update(channels)

    async def publish(self, data: bytes, channels: Iterable[str]) -> None:
        """Send `data` to sessions' channels in every process (the store's functions do this
        for every change; this is for other messages)."""
        from psycopg import AsyncConnection

        async with await AsyncConnection.connect(self.url, **connection_kwargs(self.schema, 2000)) as conn:
            for channel in channels:
                session = channel.removeprefix(self.prefix)
                await conn.execute("SELECT pg_notify(%s, %s)", (self.channel, session + "\n" + data.decode()))

    async def stream_events(self) -> AsyncGenerator[tuple[str, bytes], None]:
        while True:
            yield await self._queue.get()

    async def get_history(self, channel: str, limit: int | None = None) -> list[bytes]:
        raise NotImplementedError("PostgreSQL's NOTIFY keeps no history")

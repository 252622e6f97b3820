"""Push streams on the Redis backend: Litestar's Redis pub/sub channels, made to last.

The store publishes every change on ``<prefix>session:<key>`` itself (from the script
that makes the change), so every API process's stream bridge only subscribes, through
Litestar's `RedisChannelsPubSubBackend`. Two things are added to it:

- Litestar's subscriber task ends for good on the first connection error; here the
  event stream reconnects instead (redis-py re-subscribes every channel on reconnect),
  saying once that it lost Redis and once that it is back.
- Pub/sub loses what is published while a subscriber reconnects, so every reconnect
  calls `on_resubscribe` (the streams start again from snapshots).

Imported only by the web door (it needs Litestar).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio
from litestar.channels.backends.redis import RedisChannelsPubSubBackend

from async_tasks.backends.redis.connection import Availability, is_transient, pubsub_client, reachable

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: Seconds between two attempts to reach Redis again after the channel connection broke.
RECONNECT_DELAY = 0.5


class ReconnectingPubSubBackend(RedisChannelsPubSubBackend):
    """`RedisChannelsPubSubBackend` that survives Redis restarts and says when it has
    subscribed again (`on_resubscribe`), so that streams can catch up."""

    def __init__(self, *, url: str, timeout: float, on_resubscribe: Callable[[], None] | None = None) -> None:
        self.availability = Availability("The push streams")
        super().__init__(redis=_notifying_client(url, self._resubscribed))
        self.on_resubscribe = on_resubscribe
        #: Seconds a subscription may wait for Redis (a hung Redis answers 503, it never holds the request).
        self.timeout = timeout

    def _resubscribed(self) -> None:
        self.availability.succeeded()
        if self.on_resubscribe is not None:
            self.on_resubscribe()

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Subscribe; Redis away is `StoreUnavailable` (the stream answers 503)."""
        with reachable(self.availability), anyio.fail_after(self.timeout):
            await super().subscribe(channels)

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        try:
            await super().unsubscribe(channels)
        except Exception as exc:  # the connection is gone: so is the subscription
            if not is_transient(exc):
                raise

    async def stream_events(self) -> AsyncGenerator[tuple[str, Any], None]:
        while True:
            try:
                async for event in super().stream_events():
                    yield event
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.availability.failed(exc)
                await asyncio.sleep(RECONNECT_DELAY)


def _notifying_client(url: str, on_reconnect: Callable[[], None]) -> Redis:
    """A client whose PubSub objects call `on_reconnect` after they have subscribed
    again on a new connection (redis-py calls a PubSub's `on_connect` then)."""
    from redis.asyncio.client import PubSub

    class NotifyingPubSub(PubSub):
        async def on_connect(self, connection: Any) -> None:
            await super().on_connect(connection)
            on_reconnect()

    client = pubsub_client(url)
    client.pubsub = lambda **kwargs: NotifyingPubSub(client.connection_pool, **kwargs)  # type: ignore[method-assign]
    return client

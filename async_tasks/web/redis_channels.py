"""Push streams on the Redis backend: Litestar's Redis pub/sub channels, made to last.

The Redis store publishes every change on ``<prefix>session:<key>`` itself (from the
script that makes the change), so every API process's `StreamBridge` only subscribes,
through Litestar's `RedisChannelsPubSubBackend`. Two things are added to it:

- Litestar's subscriber task ends for good on the first connection error; here the
  event stream reconnects instead (redis-py re-subscribes every channel on reconnect).
- Pub/sub loses what is published while a subscriber reconnects, so every reconnect
  makes each open stream start again from snapshots (`StreamBridge.resync`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, cast

from litestar.channels.backends.redis import RedisChannelsPubSubBackend

from async_tasks.web.streams import SharedStore, StreamBridge

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from async_tasks.settings import Settings
    from async_tasks.store.redis import RedisTaskStore

logger = logging.getLogger("async_tasks.streams")

#: Seconds between two attempts to reach Redis again after the channel connection broke.
RECONNECT_DELAY = 0.5


class ReconnectingPubSubBackend(RedisChannelsPubSubBackend):
    """`RedisChannelsPubSubBackend` that survives Redis restarts and says when it has
    subscribed again (`on_resubscribe`), so that streams can catch up."""

    def __init__(self, *, url: str, on_resubscribe: Callable[[], None] | None = None) -> None:
        super().__init__(redis=_notifying_client(url, self._resubscribed))
        self.on_resubscribe = on_resubscribe

    def _resubscribed(self) -> None:
        logger.info("Subscribed to the task channels again after a lost connection")
        if self.on_resubscribe is not None:
            self.on_resubscribe()

    async def stream_events(self) -> AsyncGenerator[tuple[str, Any], None]:
        while True:
            try:
                async for event in super().stream_events():
                    yield event
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("Lost the connection of the task channels (%s); reconnecting", exc)
                await asyncio.sleep(RECONNECT_DELAY)


def _notifying_client(url: str, on_reconnect: Callable[[], None]) -> Redis:
    """A client whose PubSub objects call `on_reconnect` after they have subscribed
    again on a new connection (redis-py calls a PubSub's `on_connect` then)."""
    from redis.asyncio.client import PubSub

    from async_tasks.execution.saq import redis_client

    class NotifyingPubSub(PubSub):
        async def on_connect(self, connection: Any) -> None:
            await super().on_connect(connection)
            on_reconnect()

    client = redis_client(url, retries=3)
    client.pubsub = lambda **kwargs: NotifyingPubSub(client.connection_pool, **kwargs)  # type: ignore[method-assign]
    return client


def redis_stream_bridge(store: RedisTaskStore, settings: Settings) -> StreamBridge:
    """The push streams of an API process on the Redis backend."""
    backend = ReconnectingPubSubBackend(url=settings.task_backend)
    bridge = StreamBridge(
        store,
        backend=backend,
        shared=cast(SharedStore, store),
        max_streams=settings.max_streams,
        max_streams_per_session=settings.max_streams_per_session,
    )
    backend.on_resubscribe = bridge.resync
    return bridge

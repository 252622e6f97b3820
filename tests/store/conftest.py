"""The `store` fixture: one fresh task store per test, for every implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from async_tasks.store.base import TaskStore
from async_tasks.store.memory import MemoryTaskStore


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TaskStore]:
    if request.param == "memory":
        yield MemoryTaskStore()
        return
    from redis.asyncio import Redis

    from async_tasks.store.redis import RedisTaskStore

    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    redis_store = RedisTaskStore(Redis.from_url(url), prefix=prefix)
    try:
        yield redis_store
    finally:
        await redis_store.aclose()

"""The `store` fixture: one fresh task store per test, for every implementation.

`make_store` builds one on a given clock (the time-limit promises run on a
`FakeClock`); `store` is one on the system clock. The Redis stores share one
redis-server (`redis_url`), each test under a key prefix of its own; the PostgreSQL stores
one cluster (`postgres_url`), each test in a schema of its own (migrated: `postgres_schema`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.store.base import TaskStore
from async_tasks.store.memory import MemoryTaskStore

MakeStore = Callable[..., TaskStore]


@pytest.fixture(params=["memory", "redis", "postgres"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    if request.param == "memory":
        yield MemoryTaskStore
        return
    if request.param == "postgres":
        async for postgres_store in _postgres_stores(request):
            yield postgres_store
        return
    from redis.asyncio import Redis

    from async_tasks.backends.redis import RedisTaskStore

    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    made: list[RedisTaskStore] = []

    def build(clock: Clock = SYSTEM_CLOCK) -> TaskStore:
        made.append(RedisTaskStore(Redis.from_url(url), prefix=prefix, clock=clock))
        return made[-1]

    try:
        yield build
    finally:
        for store in made:
            await store.aclose()


@pytest.fixture
def store(make_store: MakeStore) -> TaskStore:
    return make_store()


async def _postgres_stores(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    from async_tasks.backends.postgres import PostgresTaskStore
    from async_tasks.backends.postgres.connection import Database

    url: str = request.getfixturevalue("postgres_url")
    schema: str = request.getfixturevalue("postgres_schema")
    made: list[PostgresTaskStore] = []

    def build(clock: Clock = SYSTEM_CLOCK) -> TaskStore:
        made.append(PostgresTaskStore(Database(url, schema, 2000), clock=clock))
        return made[-1]

    try:
        yield build
    finally:
        for store in made:
            await store.aclose()

"""`make_system`: start engines on one backend, for every backend.

On the memory backend an engine runs its own attempts; on Redis and PostgreSQL each engine
is an API with an embedded worker (``serve --with-worker``), sharing a real redis-server
under a key prefix of the test's own (a PostgreSQL cluster, in a schema of the test's own),
as the processes of a deployment share one server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from tests.execution.executors import EXECUTORS
from tests.helpers import SECRET

MakeSystem = Callable[..., Awaitable[TaskSystem]]


@pytest.fixture(params=["memory", "redis", "postgres"])
async def make_system(request: pytest.FixtureRequest) -> AsyncIterator[MakeSystem]:
    """``await make_system(clock=..., **settings)``: an engine started for the test (stopped after it)."""
    backend: dict[str, Any] = {}
    if request.param == "redis":
        backend = {
            "task_backend": request.getfixturevalue("redis_url"),
            "redis_key_prefix": request.getfixturevalue("redis_prefix"),
            "embedded_worker": True,
            "worker_lease_ms": 600,
        }
    elif request.param == "postgres":
        backend = {
            "task_backend": request.getfixturevalue("postgres_url"),
            "postgres_schema": request.getfixturevalue("postgres_schema"),
            "embedded_worker": True,
            "worker_lease_ms": 600,
        }
    async with AsyncExitStack() as stack:

        async def make(clock: Clock = SYSTEM_CLOCK, **overrides: Any) -> TaskSystem:
            fields: dict[str, Any] = {
                "secret_key": SECRET,
                "task_create_rate": 0.0,
                "worker_concurrency": 4,
                "retry_backoff_ms": 0,
                **backend,
                **overrides,
            }
            system = TaskSystem(EXECUTORS, settings=Settings(**fields), load_entry_points=False, clock=clock)
            return await stack.enter_async_context(system)

        yield make

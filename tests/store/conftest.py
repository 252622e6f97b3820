"""The `store` fixture: one fresh task store per test, for every implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from async_tasks.store.base import TaskStore
from async_tasks.store.memory import MemoryTaskStore


@pytest.fixture(params=["memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[TaskStore]:
    if request.param == "memory":
        yield MemoryTaskStore()

"""The `store` fixture: one fresh task store per test, for every implementation.

`make_store` builds one on a given clock (the time-limit promises run on a
`FakeClock`); `store` is one on the system clock.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.store.base import TaskStore
from async_tasks.store.memory import MemoryTaskStore

MakeStore = Callable[..., TaskStore]


@pytest.fixture(params=["memory"])
def make_store(request: pytest.FixtureRequest) -> MakeStore:
    def build(clock: Clock = SYSTEM_CLOCK) -> TaskStore:
        if request.param == "memory":
            return MemoryTaskStore(clock)
        raise AssertionError(request.param)

    return build


@pytest.fixture
def store(make_store: MakeStore) -> TaskStore:
    return make_store()

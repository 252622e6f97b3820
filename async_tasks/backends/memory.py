"""The memory backend (the default): tasks in this process's memory, attempts in its
event loop. Nothing else to run; tasks are gone after a restart."""

from __future__ import annotations

from typing import TYPE_CHECKING

from async_tasks.execution.local import LocalExecution
from async_tasks.store.memory import MemoryTaskStore

if TYPE_CHECKING:
    from async_tasks.backends import Worker
    from async_tasks.clock import Clock
    from async_tasks.executor import ExecutorRegistry
    from async_tasks.settings import BackendSettings


class MemoryBackend:
    name = "memory"
    shared = False
    events = None
    keeps_queued_tasks = False

    def __init__(self, settings: BackendSettings, executors: ExecutorRegistry, clock: Clock) -> None:
        self.store = MemoryTaskStore(clock)
        self.execution = LocalExecution(self.store, executors, settings, clock)

    def worker(self, concurrency: int) -> Worker | None:
        return None

    async def ping(self) -> bool | None:
        return None

    @staticmethod
    def check(settings: BackendSettings) -> None:
        return None

"""The Redis backend's execution, as API processes use it: every hand-off is one script.

All of it is `QueuedExecution`'s (`async_tasks.backends.queued.producer`): the store's
scripts store a task and park it in its session's line in one step, and dispatch parked
tasks to workers' queues as slots free up; the workers (`RedisWorker`) run them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from async_tasks.backends.queued.producer import QueuedExecution

if TYPE_CHECKING:
    from collections.abc import Sequence

    from async_tasks.backends.redis.store import RedisTaskStore


class RedisExecution(QueuedExecution):
    """`ExecutionBackend` of API processes on the Redis backend."""

    def __init__(self, store: RedisTaskStore, executors: Sequence[str] = ()) -> None:
        super().__init__(store, executors)
        self.store: RedisTaskStore = store

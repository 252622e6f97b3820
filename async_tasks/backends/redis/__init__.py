"""The Redis backend: TASK_BACKEND=redis://... (the ``redis`` extra: SAQ and redis-py).

Tasks live in Redis and are shared by any number of API processes and workers; SAQ
delivers attempts to the workers. The pieces: `connection` (clients, what counts as Redis
trouble), `keys` (every key's name), `scripts/` (the Lua scripts: every change is one),
`store` (`RedisTaskStore`, the authority on each task and its delivery, in parts:
`store_base`, `reads`, `delivery`, `upkeep`), `producer` (`RedisExecution`, what API
processes hand over), `worker` (`RedisWorker`, which runs attempts) and `channels` (push
streams across processes, for the web door). The producer, the worker and the reconciler
(which repairs what a dead worker left) are written once for both shared backends, in
`async_tasks.backends.queued`; the modules here add what is Redis's own.

What it relies on in SAQ (pinned below 0.27): a job is the JSON its `Job.to_dict` gives,
stored at ``saq:job:<queue>:<key>``, queued by pushing its id on ``saq:<queue>:queued``
and adding it to ``saq:<queue>:incomplete``; the worker moves it to ``saq:<queue>:active``
with BLMOVE and calls the job's function with its kwargs. The store's scripts write such
jobs themselves, in the same step as the task's change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from async_tasks.backends.queued.store import RunLimits
from async_tasks.backends.redis.connection import Availability, check, request_client
from async_tasks.backends.redis.keys import Keys
from async_tasks.backends.redis.producer import RedisExecution
from async_tasks.backends.redis.store import RedisTaskStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from async_tasks.backends.redis.worker import RedisWorker
    from async_tasks.clock import Clock
    from async_tasks.executor import ExecutorRegistry
    from async_tasks.settings import BackendSettings


class RedisEvents:
    """The push streams' source on Redis: the store publishes, the channels subscribe."""

    def __init__(self, store: RedisTaskStore, url: str, timeout_ms: int) -> None:
        self.store = store
        self.url = url
        self.timeout_ms = timeout_ms
        self.channel_prefix = store.channel_prefix

    def channels_backend(self, on_resubscribe: Callable[[], None]) -> Any:
        from async_tasks.backends.redis.channels import ReconnectingPubSubBackend

        return ReconnectingPubSubBackend(url=self.url, timeout=self.timeout_ms / 1000, on_resubscribe=on_resubscribe)

    async def snapshot(self, session_key: str, task_id: str | None = None) -> tuple[int, list[bytes]]:
        return await self.store.snapshot(session_key, task_id)


class RedisBackend:
    name = "redis"
    shared = True
    keeps_queued_tasks = True

    def __init__(self, settings: BackendSettings, executors: ExecutorRegistry, clock: Clock) -> None:
        self.settings = settings
        self.executors = executors
        self.clock = clock
        self.url = settings.task_backend
        timeout = settings.redis_timeout_ms
        self.store = RedisTaskStore(
            factory=lambda: request_client(self.url, timeout),
            prefix=settings.redis_key_prefix,
            clock=clock,
            limits=RunLimits(settings.max_concurrent_tasks, settings.max_concurrent_tasks_per_session),
            availability=Availability("The task store"),
        )
        self.execution = RedisExecution(self.store, executors.names())
        self.events = RedisEvents(self.store, self.url, timeout)

    def worker(self, concurrency: int) -> RedisWorker:
        from async_tasks.backends.redis.worker import RedisWorker

        names = self.settings.worker_executor_names
        worker = RedisWorker(
            self.store,
            self.executors.only(names) if names else self.executors,
            self.settings,
            url=self.url,
            slots=concurrency,
            clock=self.clock,
            patient=lambda: request_client(self.url, max(self.settings.redis_timeout_ms, 5000), patient=True),
        )
        worker.on_finish = self.execution.on_finish
        return worker

    async def ping(self) -> bool | None:
        return await self.store.ping()

    @staticmethod
    def check(settings: BackendSettings) -> None:
        check(settings.task_backend)


__all__ = ["Keys", "RedisBackend", "RedisTaskStore"]

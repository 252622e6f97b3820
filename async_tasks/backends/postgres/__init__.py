"""The PostgreSQL backend: TASK_BACKEND=postgresql://... (the ``postgres`` extra: SAQ's
Postgres queue and psycopg).

Tasks live in PostgreSQL tables (a schema per deployment, POSTGRES_SCHEMA) that a person
can read and query, shared by any number of API processes and workers; SAQ's Postgres
queue delivers attempts to the workers. The pieces: `connection` (the pool, what counts as
PostgreSQL trouble, the listening connection), `schema` (every table, the versioned
migrations), `sql/` (the functions: every change is one transaction), `store`
(`PostgresTaskStore`, the authority on each task and its delivery, in parts:
`store_base`, `reads`, `delivery`, `upkeep`), `producer` (`PostgresExecution`, what API
processes hand over), `worker` (`PostgresWorker`, which runs attempts) and `channels`
(push streams across processes over LISTEN/NOTIFY, for the web door). The producer, the
worker and the reconciler (which repairs what a dead worker left) are written once for
both shared backends, in `async_tasks.backends.queued`; the modules here add what is
PostgreSQL's own.

What it relies on in SAQ (pinned below 0.27): its tables (`saq_jobs`: one row per job,
``job`` the JSON its `Job.to_dict` gives, ``queue`` the queue's name, ``status``
'queued' until a worker takes it) made by its own migrations; its worker dequeues a
queue's 'queued' rows (``FOR UPDATE SKIP LOCKED``), woken by ``NOTIFY "saq:<queue>",
'saq:enqueue'``, and calls the job's function with its kwargs. The store's functions
insert such rows and send that NOTIFY themselves, in the same transaction as the task's
change: SAQ's own `enqueue` runs on a connection of its own and cannot share ours.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from async_tasks.backends.postgres.connection import Availability, Database, check
from async_tasks.backends.postgres.producer import PostgresExecution
from async_tasks.backends.postgres.schema import events_channel, migrate
from async_tasks.backends.postgres.store import PostgresTaskStore
from async_tasks.backends.queued.store import RunLimits

if TYPE_CHECKING:
    from collections.abc import Callable

    from async_tasks.backends.postgres.worker import PostgresWorker
    from async_tasks.clock import Clock
    from async_tasks.executor import ExecutorRegistry
    from async_tasks.settings import BackendSettings


class PostgresEvents:
    """The push streams' source on PostgreSQL: the store's functions NOTIFY, the channels LISTEN."""

    def __init__(self, store: PostgresTaskStore, url: str, timeout_ms: int) -> None:
        self.store = store
        self.url = url
        self.timeout_ms = timeout_ms
        #: Each session's changes reach the channel ``<channel_prefix><session key>``.
        self.channel_prefix = "session:"

    def channels_backend(self, on_resubscribe: Callable[[], None]) -> Any:
        from async_tasks.backends.postgres.channels import NotifyChannelsBackend

        return NotifyChannelsBackend(
            url=self.url,
            schema=self.store.schema,
            channel=events_channel(self.store.schema),
            prefix=self.channel_prefix,
            timeout_ms=self.timeout_ms,
            on_resubscribe=on_resubscribe,
        )

    async def snapshot(self, session_key: str, task_id: str | None = None) -> tuple[int, list[bytes]]:
        return await self.store.snapshot(session_key, task_id)


class PostgresBackend:
    name = "postgres"
    shared = True
    keeps_queued_tasks = True

    def __init__(self, settings: BackendSettings, executors: ExecutorRegistry, clock: Clock) -> None:
        self.settings = settings
        self.executors = executors
        self.clock = clock
        self.url = settings.task_backend
        timeout = settings.postgres_timeout_ms
        self.store = PostgresTaskStore(
            Database(self.url, settings.postgres_schema, timeout, availability=Availability("The task store")),
            clock=clock,
            limits=RunLimits(settings.max_concurrent_tasks, settings.max_concurrent_tasks_per_session),
        )
        self.execution = PostgresExecution(self.store, executors.names(), timeout)
        self.events = PostgresEvents(self.store, self.url, timeout)

    def worker(self, concurrency: int) -> PostgresWorker:
        from async_tasks.backends.postgres.worker import PostgresWorker

        names = self.settings.worker_executor_names
        runs = self.executors.only(names) if names else self.executors
        worker = PostgresWorker(self.store, runs, self.settings, slots=concurrency, clock=self.clock)
        worker.on_finish = self.execution.on_finish
        return worker

    async def ping(self) -> bool | None:
        return await self.store.ping()

    @staticmethod
    def check(settings: BackendSettings) -> None:
        """Refuse an unreachable database in one line; create or migrate the schema."""
        check(settings.task_backend, settings.postgres_timeout_ms / 1000)
        asyncio.run(migrate(settings.task_backend, settings.postgres_schema, settings.postgres_timeout_ms))


__all__ = ["PostgresBackend", "PostgresTaskStore"]

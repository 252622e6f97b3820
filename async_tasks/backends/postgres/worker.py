"""The PostgreSQL backend's worker: `QueuedWorker` on a SAQ Postgres queue.

What is its own here (the rest, claiming, running, recording, the lease, shutdown, is
`async_tasks.backends.queued.worker`'s):

- **Its queue**: SAQ's `PostgresQueue` on a pool of its own (its listening connection,
  its dequeues, its job updates), named ``<schema>.<suffix>``; the store's functions insert
  jobs into it and wake it with the NOTIFY the same transaction sends. The schema is
  created or migrated first.
- **Cancel**: the API's transaction marks the task cancelled and NOTIFYs
  ``<schema>_stop``; the worker's `Listener` stops the attempt within milliseconds.
- **Lease**: its row of ``workers``, renewed every third of WORKER_LEASE_MS.
- **Delayed tasks**: the shared timer learns of a new earliest due time from the
  ``<schema>_due`` NOTIFY (sent by the transaction that makes a task the earliest), which
  the worker's `Listener` hears beside the stop messages.
- **Its own jobs**: what SAQ holds is read from ``saq_jobs``; a job still queued at two
  upkeeps in a row (its NOTIFY was lost while SAQ's listening connection reconnected)
  makes the upkeep wake SAQ again.
- **Shutdown**: SAQ's stop is bounded (`saq_stop_timeout`): one of its dequeues stuck
  waiting for a connection would hold the shutdown forever.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.abc

from async_tasks.backends.postgres.connection import Availability, Listener, connection_kwargs, reachable
from async_tasks.backends.postgres.schema import due_channel, migrate, saq_lock_keyspace, stop_channel
from async_tasks.backends.queued.worker import PROGRESS_WINDOW, QueuedWorker
from async_tasks.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from saq.queue.base import Queue

    from async_tasks.backends.postgres.store import PostgresTaskStore
    from async_tasks.backends.queued.store import Dispatched
    from async_tasks.executor import ExecutorRegistry
    from async_tasks.settings import BackendSettings

logger = logging.getLogger("async_tasks.execution")

#: Seconds a stopping worker waits for SAQ's worker to stop dequeuing.
SAQ_STOP_TIMEOUT: Final = 3.0
#: Seconds an idle dequeue waits for SAQ's NOTIFY before it looks at the queue's table again.
#: SAQ's Postgres queue starts LISTENing only once its first look found nothing: a job queued
#: in between is announced to nobody (the upkeep also wakes SAQ for a job still queued at two
#: upkeeps in a row; this bounds the wait to a second, at a query a second per idle worker).
DEQUEUE_TIMEOUT: Final = 1.0


class PostgresWorker(QueuedWorker):
    """Runs attempts dispatched to it, up to `slots` at once. See the module docstring."""

    store_name = "PostgreSQL"
    saq_stop_timeout = SAQ_STOP_TIMEOUT
    dequeue_timeout = DEQUEUE_TIMEOUT
    store: PostgresTaskStore
    availability: Availability

    def __init__(
        self,
        store: PostgresTaskStore,
        executors: ExecutorRegistry,
        settings: BackendSettings,
        *,
        slots: int,
        clock: Clock = SYSTEM_CLOCK,
        rng: Callable[[], float] = random.random,
        progress_window: float = PROGRESS_WINDOW,
    ) -> None:
        self.url = store.db.url
        super().__init__(store, executors, settings, slots=slots, clock=clock, rng=rng, progress_window=progress_window)
        #: The name of its own SAQ queue (``saq:<queue>`` is a channel: at most 63 bytes).
        self.queue_name = f"{store.schema}.{self.suffix}"
        self._due = due_channel(store.schema)
        self._stops = Listener(
            self.url, store.schema, [stop_channel(store.schema), self._due], self._stop_message,
            availability=self.availability, timeout_ms=settings.postgres_timeout_ms,
        )  # fmt: skip
        #: Jobs still queued at the last upkeep (SAQ is woken if they still are).
        self._waiting: set[str] = set()

    def _availability(self, what: str) -> Availability:
        return Availability(what)

    def _patient_store(self, store: PostgresTaskStore) -> PostgresTaskStore:
        # A pool that waits out a PostgreSQL restart (requests use one that fails fast).
        return store.sibling(store.db.sibling(patient=True, availability=self.availability))

    async def _open_queue(self) -> Queue:
        from psycopg_pool import AsyncConnectionPool
        from saq.queue.postgres import PostgresQueue

        schema = self.store.schema
        timeout_ms = self.settings.postgres_timeout_ms
        with reachable(self.availability):
            await migrate(self.url, schema, timeout_ms)
        # SAQ's own pool: its listening connection, its dequeues and its job updates.
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url, kwargs=connection_kwargs(schema, timeout_ms), min_size=1, max_size=min(self.slots + 2, 10),
            open=False, check=AsyncConnectionPool.check_connection, name=f"saq {self.queue_name}",
        )  # fmt: skip
        queue = PostgresQueue(
            pool,
            name=self.queue_name,
            saq_lock_keyspace=saq_lock_keyspace(schema),
            min_size=1,
            max_size=min(self.slots + 2, 10),
            manage_pool_lifecycle=True,
        )
        await queue.connect()
        return queue

    async def _join(self, *, retiring: bool) -> None:
        await self.store.join(
            self.worker_id, self.queue_name, self.slots, self.lease_ms, self.description, retiring=retiring
        )

    async def _start_services(self, tg: anyio.abc.TaskGroup) -> None:
        await tg.start(self._stops.run)

    def _stop_message(self, channel: str, payload: str) -> None:
        """``<task id>:<attempt>``: a running attempt was cancelled; on the due channel, the
        time (epoch ms) of a task that became the earliest delayed one."""
        if channel == self._due:
            if payload.isdigit():
                self._note_due(int(payload))
            return
        task_id, _, number = payload.rpartition(":")
        if number.isdigit():
            self._stop_local(task_id, int(number), "cancelled")

    async def _missing_jobs(self, pending: Sequence[Dispatched]) -> set[str]:
        """From ``saq_jobs``; wake SAQ when a job is still queued at two upkeeps in a row
        (its NOTIFY was lost)."""
        if not pending:
            self._waiting = set()
            return set()
        jobs = await self.store.queued_jobs(self.queue_name)
        missing = {item.job_key for item in pending if item.job_key not in jobs}
        waiting = {key for key, status in jobs.items() if status == "queued"}
        if waiting & self._waiting:
            await self.store.db.call("SELECT pg_notify(%s, 'saq:enqueue')", ("saq:" + self.queue_name,))
        self._waiting = waiting
        return missing

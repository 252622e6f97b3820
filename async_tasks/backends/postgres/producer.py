"""The PostgreSQL backend's execution, as API processes use it: every hand-off is one
transaction.

`QueuedExecution` (`async_tasks.backends.queued.producer`) with one step of its own:
`prepare` creates or migrates the deployment's schema and connects the pool before the
first request. The store's functions dispatch parked tasks to workers' SAQ queues as slots
free up; the workers (`PostgresWorker`) run them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from async_tasks.backends.postgres.connection import reachable
from async_tasks.backends.postgres.schema import migrate
from async_tasks.backends.queued.producer import QueuedExecution

if TYPE_CHECKING:
    from collections.abc import Sequence

    from async_tasks.backends.postgres.store import PostgresTaskStore


class PostgresExecution(QueuedExecution):
    """`ExecutionBackend` of API processes on the PostgreSQL backend."""

    def __init__(self, store: PostgresTaskStore, executors: Sequence[str], timeout_ms: int) -> None:
        super().__init__(store, executors)
        self.store: PostgresTaskStore = store
        self.timeout_ms = timeout_ms

    async def prepare(self) -> None:
        """Make sure the schema is current and the pool connected."""
        with reachable(self.store.availability):
            await migrate(self.store.db.url, self.store.schema, self.timeout_ms)
            await self.store.db.pool()  # connected before the first request

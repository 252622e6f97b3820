"""The PostgreSQL backend's execution, as API processes use it: every hand-off is one
transaction.

A create with ``start`` stores the task and parks it in its session's line in one
transaction; `start`, `retry` and `cancel` are one transaction each too (a cancelled
running attempt is told to stop by a NOTIFY the same transaction sends). The store's
functions dispatch parked tasks to workers' SAQ queues as slots free up (see `store.py`);
the workers (`PostgresWorker`) run them. An API process runs no attempts: its shutdown
leaves every task where it is. `run` creates or migrates the deployment's schema first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import msgspec

from async_tasks.backends.postgres.connection import reachable
from async_tasks.backends.postgres.schema import migrate
from async_tasks.errors import ShuttingDown, StoreUnavailable
from async_tasks.execution.base import ExecutionLoad, WorkerInfo
from async_tasks.task import ACTIVE, RETRYABLE, Task, TaskStatus

if TYPE_CHECKING:
    from async_tasks.backends.postgres.store import PostgresTaskStore
    from async_tasks.store.base import CreateLimits, Idempotency


class _Description(msgspec.Struct):
    """What a worker says of itself (`PostgresWorker.description`)."""

    host: str = ""
    pid: int = 0
    slots: int = 0
    executors: list[str] = msgspec.field(default_factory=list)


class PostgresExecution:
    """`ExecutionBackend` of API processes on the PostgreSQL backend."""

    def __init__(self, store: PostgresTaskStore, executors: list[str], timeout_ms: int) -> None:
        self.store = store
        self.executors = executors
        self.timeout_ms = timeout_ms
        self.on_finish: list[Callable[[Task, float], None]] = []
        self._accepting = True
        self._alive = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def alive(self) -> bool:
        return self._alive

    def stop_accepting(self) -> None:
        self._accepting = False

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Make sure the schema is current, then serve until cancelled (nothing runs here:
        the store's functions deliver)."""
        with reachable(self.store.availability):
            await migrate(self.store.db.url, self.store.schema, self.timeout_ms)
            await self.store.db.pool()  # connected before the first request
        self._accepting = True
        self._alive = True
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._alive = False
            with anyio.CancelScope(shield=True):
                await self.store.aclose()

    async def shutdown(self, grace: float) -> list[Task]:
        self._accepting = False
        return []

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise ShuttingDown()

    async def create(
        self,
        task: Task,
        *,
        limits: CreateLimits,
        idempotency: Idempotency | None,
        start: bool,
        start_at: int | None = None,
    ) -> tuple[Task, bool]:
        if start:
            self._check_accepting()
        return await self.store.create(
            task, limits=limits, idempotency=idempotency, deliver=start, due_ms=start_at if start else None
        )

    async def start(self, session_key: str, task_id: str, *, start_at: int | None = None) -> Task:
        self._check_accepting()
        return await self.store.deliver(session_key, task_id, start_at)

    async def retry(self, session_key: str, task_id: str, *, reason: str = "retry requested") -> Task:
        self._check_accepting()
        return await self.store.transition(
            session_key, task_id, TaskStatus.PENDING, expect=RETRYABLE, reason=reason, action="retry", deliver=True
        )

    async def cancel(self, session_key: str, task_id: str, reason: str) -> Task:
        return await self.store.transition(
            session_key, task_id, TaskStatus.CANCELLED, expect=ACTIVE, reason=reason, action="cancel"
        )

    async def discard(self, tasks: list[Task]) -> None:
        """Nothing to do: the expiry took them out of delivery in its own transaction."""

    async def queue_position(self, task: Task) -> int | None:
        return await self.store.queue_position(task.session_key, task.id)

    async def queue_positions(self, session_key: str, tasks: Sequence[Task]) -> dict[str, int]:
        return await self.store.queue_positions(session_key, [task.id for task in tasks])

    async def load(self) -> ExecutionLoad:
        """Nothing runs in an API process; queued: every task waiting for a slot, and the
        ones dispatched to a worker that has not started them."""
        try:
            parked, starting = await self.store.waiting()
        except StoreUnavailable:
            parked = starting = 0  # said once by the store; a gauge is no reason to fail
        return ExecutionLoad(running=0, queued=parked + starting, starting=starting)

    def running_tasks(self) -> list[Task]:
        return []

    # -- the admin view -------------------------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        """The workers whose lease lives, with what they run (from their rows)."""
        rows = await self.store.db.rows(
            "SELECT w.id, w.description::text, w.slots, w.started_at, db_now() - w.renewed_at, "
            "(SELECT count(*) FROM tasks t WHERE t.runner = w.id AND t.status = 'running') "
            "FROM workers w WHERE w.lease_until > db_now() ORDER BY w.started_at, w.id"
        )
        found = []
        for worker_id, raw, slots, started_at, age, running in rows:
            said = msgspec.json.decode(raw, type=_Description)
            found.append(
                WorkerInfo(
                    id=worker_id, host=said.host, pid=said.pid, executors=said.executors, running=int(running),
                    concurrency=int(slots), started_at=int(started_at), lease_age_ms=max(0, int(age)),
                )
            )  # fmt: skip
        return found

    async def load_by_executor(self) -> dict[str, ExecutionLoad]:
        """Running attempts, tasks waiting for a slot, a worker or their time (a retry's
        backoff, a delayed start), and the live workers that run it, by executor."""
        rows = await self.store.db.rows(
            "SELECT e.name, "
            "(SELECT count(*) FROM tasks t WHERE t.executor = e.name AND t.status = 'running'), "
            "(SELECT count(*) FROM tasks t WHERE t.executor = e.name AND t.status = 'pending' AND t.delivery <> ''), "
            "(SELECT count(*) FROM workers w WHERE NOT w.retired AND w.lease_until > db_now() "
            "AND e.name = ANY(w.executors)) "
            "FROM (SELECT unnest(%s::text[]) UNION SELECT DISTINCT executor FROM tasks "
            "WHERE status IN ('pending', 'running')) AS e(name)",
            (list(self.executors),),
        )
        return {
            name: ExecutionLoad(running=int(running), queued=int(queued), workers=int(workers))
            for name, running, queued, workers in rows
        }

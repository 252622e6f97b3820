"""A queued backend's execution, as API processes use it: every hand-off is one step.

A create with ``start`` stores the task and parks it in its session's line in one step (a
script, a transaction); `start`, `retry` and `cancel` are one step each too (a cancelled
running attempt is told to stop by a message the same step publishes). The store
dispatches parked tasks to workers' queues as slots free up; the workers (`QueuedWorker`)
run them. An API process runs no attempts: its shutdown leaves every task where it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from async_tasks.errors import ShuttingDown, StoreUnavailable
from async_tasks.execution.base import ExecutionLoad, WorkerInfo
from async_tasks.task import ACTIVE, RETRYABLE, Task, TaskStatus

if TYPE_CHECKING:
    from async_tasks.backends.queued.store import QueueStore
    from async_tasks.store.base import CreateLimits, Idempotency


class QueuedExecution:
    """`ExecutionBackend` of API processes on a queued backend."""

    def __init__(self, store: QueueStore, executors: Sequence[str] = ()) -> None:
        self.store = store
        #: The executors this process knows (the admin view lists them even when idle).
        self.executors = list(executors)
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
        """Get ready (`prepare`), then serve until cancelled (nothing runs here: the store
        delivers)."""
        await self.prepare()
        self._accepting = True
        self._alive = True
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._alive = False
            with anyio.CancelScope(shield=True):
                await self.store.aclose()

    async def prepare(self) -> None:
        """What the backend does before it serves (nothing here)."""

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
        """Nothing to do: the expiry took them out of delivery in its own step."""

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
        """The workers with a lease (a retired one, leaving, is listed until it is gone), as
        they describe themselves, oldest first."""
        return await self.store.live_workers()

    async def load_by_executor(self) -> dict[str, ExecutionLoad]:
        """Running attempts, tasks waiting for a slot, a worker or their time (a retry's
        backoff, a delayed start), and the live workers that run it, by executor."""
        return await self.store.executor_loads(self.executors)

"""The store a queued backend's producer, worker and reconciler work against.

`QueueStore` names the store methods they call (`RedisTaskStore` and `PostgresTaskStore`
implement them, each in one script or transaction); `RunLimits` and `Dispatched` are the
records the two stores share.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from async_tasks.execution.base import ExecutionLoad, WorkerInfo
    from async_tasks.store.base import CreateLimits, Finish, Idempotency, Report
    from async_tasks.task import Task, TaskStatus
    from async_tasks.task_log import LogLine


class RunLimits(NamedTuple):
    """The running limits delivery keeps across every worker (None: none)."""

    global_limit: int | None = None
    per_session: int | None = None


class Dispatched(NamedTuple):
    """A task dispatched to a worker, as the reconciler reads it."""

    task_id: str
    session_key: str
    status: str
    attempts: int
    auto_retries: int
    max_retries: int
    job_key: str
    worker: str


class QueueStore(Protocol):
    """The store steps of a queued backend: each one atomic with the task's record."""

    async def aclose(self) -> None: ...

    async def get(self, session_key: str, task_id: str) -> Task: ...

    # -- the producer's steps -------------------------------------------------------

    async def create(
        self,
        task: Task,
        *,
        limits: CreateLimits,
        idempotency: Idempotency | None = None,
        deliver: bool = False,
        due_ms: int | None = None,
    ) -> tuple[Task, bool]: ...

    async def deliver(self, session_key: str, task_id: str, due_ms: int | None = None) -> Task: ...

    async def transition(
        self,
        session_key: str,
        task_id: str,
        target: TaskStatus,
        *,
        expect: Collection[TaskStatus] | None = None,
        attempt: int | None = None,
        reason: str | None = None,
        error: str | None = None,
        result: Any = None,
        action: str | None = None,
        automatic: bool = False,
        dead_letter: bool = False,
        deliver: bool = False,
    ) -> Task: ...

    async def queue_position(self, session_key: str, task_id: str) -> int | None: ...

    async def queue_positions(self, session_key: str, task_ids: Sequence[str]) -> dict[str, int]: ...

    async def waiting(self) -> tuple[int, int]:
        """Tasks waiting for a slot, and those dispatched to a worker that has not started them."""
        ...

    async def live_workers(self) -> list[WorkerInfo]:
        """The workers with a lease, oldest first, as they describe themselves."""
        ...

    async def executor_loads(self, executors: Sequence[str]) -> dict[str, ExecutionLoad]:
        """By executor (`executors`, and any other with tasks in delivery): running,
        waiting, and the workers that run it."""
        ...

    # -- the worker's steps ---------------------------------------------------------

    async def claim(self, session_key: str, task_id: str, attempt: int, worker: str, job_key: str) -> Task: ...

    async def report(
        self,
        session_key: str,
        task_id: str,
        attempt: int,
        report: Report | None,
        lines: Sequence[LogLine] = (),
        *,
        skipped: int = 0,
    ) -> bool: ...

    async def finish(
        self,
        session_key: str,
        task_id: str,
        attempt: int,
        finish: Finish,
        *,
        owner: str | None = None,
        report: Report | None = None,
        lines: Sequence[LogLine] = (),
        skipped: int = 0,
    ) -> Task: ...

    async def running_states(self, task_ids: Sequence[str]) -> list[tuple[str | None, int | None]]: ...

    async def dispatched_to(self, worker: str) -> list[Dispatched]: ...

    async def redeliver(self, session_key: str, task_id: str, job_key: str) -> bool: ...

    async def retire(self, worker: str) -> None: ...

    async def forget_worker(self, worker: str, *, leaving: bool = False) -> int: ...

    async def promote(self, most: int = 500) -> int | None: ...

    # -- the reconciler's steps -----------------------------------------------------

    async def take_lock(self, name: str, holder: str, ms: int) -> bool:
        """Take (or keep) the lease of a one-at-a-time duty for `ms` ms."""
        ...

    async def lost_workers(self, me: str, lease_ms: int) -> list[str]:
        """The workers other than `me` without a lease for half a lease or more."""
        ...

    async def verify(self, session_key: str | None = None) -> list[tuple[str, str, int, int]]: ...


class Availability(Protocol):
    """Says once when the store goes away (each backend's `connection.Availability`)."""

    def failed(self, exc: BaseException) -> None: ...

"""The store a queued backend's producer, worker and reconciler work against.

`QueueStore` names the store methods they call (`RedisTaskStore` and `PostgresTaskStore`
implement them, each in one script or transaction); `RunLimits` and `Dispatched` are the
records the two stores share, and `SharedStore` what they do alike around their steps
(policy and limits shared with siblings, the settings argument every step takes, the event
hub told of each change, operation ids).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from async_tasks.events import EventHub, EventType, LogEvent, TaskEvent

if TYPE_CHECKING:
    from async_tasks.execution.base import ExecutionLoad, WorkerInfo
    from async_tasks.store.base import CreateLimits, Finish, Idempotency, Report, StorePolicy
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


def new_op() -> str:
    """A fresh operation id: what makes a re-sent write answer "done"."""
    return os.urandom(9).hex()


def whole(task: Task) -> None:
    """A whole percent as an int: JSON has one kind of number, so a whole percent decodes
    as 45.0, while the reporter keeps it 45 (clients see `45`, as in memory mode)."""
    progress = task.progress
    if progress.is_integer():
        task.progress = int(progress)


def config_text(policy: StorePolicy, limits: RunLimits) -> str:
    """The settings argument of every script or function (see `prelude.lua`, `sql/prelude.sql`)."""
    retention = policy.retention
    values: list[object | None] = (
        [None, None, None]
        if retention is None
        else [retention.max_completed, retention.max_failed, retention.max_cancelled]
    )
    values += [policy.max_history, limits.global_limit, limits.per_session]
    values += [policy.idempotency_window_ms, policy.idempotency_keys]
    values += [policy.logs.lines, policy.logs.task_bytes]
    return ",".join("" if value is None else str(value) for value in values)


class SharedSettings:
    """What a store and its siblings (other clients or pools on the same data) share."""

    __slots__ = ("config", "limits", "policy")

    def __init__(self, policy: StorePolicy, limits: RunLimits) -> None:
        self.policy = policy
        self.limits = limits
        self.config = config_text(policy, limits)


class SharedStore:
    """What the Redis and PostgreSQL stores do alike around their steps: the policy and
    limits they share with their siblings, and telling the event hub of each change."""

    events: EventHub
    _shared: SharedSettings

    @property
    def policy(self) -> StorePolicy:
        return self._shared.policy

    @policy.setter
    def policy(self, policy: StorePolicy) -> None:
        # In place: the siblings see it too.
        self._shared.policy = policy
        self._shared.config = config_text(policy, self._shared.limits)

    @property
    def limits(self) -> RunLimits:
        return self._shared.limits

    @limits.setter
    def limits(self, limits: RunLimits) -> None:
        self._shared.limits = limits
        self._shared.config = config_text(self._shared.policy, limits)

    async def report(
        self,
        session_key: str,
        task_id: str,
        attempt: int,
        report: Report | None,
        lines: Sequence[LogLine] = (),
        *,
        skipped: int = 0,
    ) -> bool:
        raise NotImplementedError

    async def report_progress(
        self,
        session_key: str,
        task_id: str,
        attempt: int,
        percent: float,
        step: str | None,
        description: str | None,
    ) -> bool:
        return await self.report(session_key, task_id, attempt, (percent, step, description))

    async def add_logs(self, session_key: str, task_id: str, attempt: int, lines: Sequence[LogLine]) -> bool:
        return await self.report(session_key, task_id, attempt, None, lines)

    # -- events -------------------------------------------------------------------------

    def _logged(self, task: Task, added: int) -> None:
        """Tell the hub of the last `added` lines `task` got (those still kept are its tail)."""
        if added and task.logs and self.events.listeners:
            self.events.publish(LogEvent.of(task, task.logs[-added:]))

    def _transitioned(self, task: Task, previous: TaskStatus | None) -> None:
        for hook in self.events.on_transition:
            hook(task, previous)
        self._publish(task, EventType.TRANSITION, previous)

    def _removed_one(self, task: Task, cause: str) -> None:
        """Tell the hooks about a task the store removed by itself (`cause`: why)."""
        for hook in self.events.on_removed:
            hook(task, cause)
        self._publish(task, EventType.REMOVED, None)

    def _publish(self, task: Task, kind: EventType, previous: TaskStatus | None) -> None:
        if self.events.listeners:
            self.events.publish(TaskEvent.of(task, kind, previous))

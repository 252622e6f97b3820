"""The task-store seam: what the engine needs from wherever tasks are kept.

The store is the authority on a task's status and progress. Every method is a
coroutine so that a store on another machine (Redis) fits the same shape as the
in-memory one; each method is one atomic step (a Lua script or MULTI/EXEC on Redis),
so no caller ever reads, decides and writes in two steps.

- `create` checks the Idempotency-Key and the quotas and inserts, atomically;
  `replay` only looks the key up.
- `get`, `query`, `counts` and `totals` read; a page of `query` costs O(page), counts
  come from counters kept as transitions happen (never a scan).
- `transition` is a compare-and-set: it applies only if the task is still in one of
  the `expect`-ed statuses and (when given) still on `attempt`; otherwise it raises
  `InvalidTransition` and changes nothing. It stamps times and appends history (an
  entry into ``failed`` carries the attempt's `error`).
- `report_progress` applies an executor's report and says whether it was accepted:
  a report for an attempt that is over (cancelled, timed out, superseded) is refused.
- `remove` forgets a task that is not running; `trim` enforces retention.
- `take_token` draws from a token bucket (the per-session create rate), so the rate
  holds across every process that shares the store.
- `events` is the in-process event source: every change made through this store is
  published there (push streams and metrics listen).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from async_tasks.task import TaskStatus

if TYPE_CHECKING:
    from async_tasks.clock import Clock
    from async_tasks.events import EventHub
    from async_tasks.task import Task


class TaskFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which of a session's tasks `query` returns (every given field must match)."""

    status: TaskStatus | None = None
    executor: str | None = None
    tag: str | None = None
    dead_letter: bool | None = None

    @property
    def is_empty(self) -> bool:
        return self.status is None and self.executor is None and self.tag is None and self.dead_letter is None


class TaskPage(NamedTuple):
    """One page of a query, newest first, and how many tasks match in all."""

    tasks: list[Task]
    total: int


class SessionCounts(msgspec.Struct, kw_only=True):
    """A session's tasks by status, and the mean run time of its completed ones."""

    by_status: dict[TaskStatus, int]
    average_duration_ms: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def active(self) -> int:
        return self.by_status[TaskStatus.PENDING] + self.by_status[TaskStatus.RUNNING]


class StoreTotals(msgspec.Struct, kw_only=True):
    """Every session's tasks by status, and how many sessions hold tasks."""

    by_status: dict[TaskStatus, int]
    sessions: int


class CreateLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Quotas `create` checks atomically with the insert."""

    #: Pending + running tasks one session may hold.
    max_active_per_session: int


class Idempotency(NamedTuple):
    """An Idempotency-Key and the fingerprint of the request that first used it."""

    key: str
    fingerprint: bytes


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """How many finished tasks of each status a session keeps (the newest finished)."""

    max_completed: int
    max_failed: int
    max_cancelled: int

    def limit(self, status: TaskStatus) -> int | None:
        if status is TaskStatus.COMPLETED:
            return self.max_completed
        if status is TaskStatus.FAILED:
            return self.max_failed
        if status is TaskStatus.CANCELLED:
            return self.max_cancelled
        return None


class TrimResult(msgspec.Struct, kw_only=True):
    """What one retention pass removed, by status."""

    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.completed + self.failed + self.cancelled


class TaskStore(Protocol):
    """Where tasks live. See the module docstring for the contract of each method."""

    clock: Clock
    events: EventHub

    async def create(
        self, task: Task, *, limits: CreateLimits, idempotency: Idempotency | None = None
    ) -> tuple[Task, bool]:
        """Insert `task` (pending, history "created"), or return the task an earlier
        create with the same Idempotency-Key made in the session: ``(task, replayed)``.

        Raises `IdempotencyConflict` when the key was used with another fingerprint and
        `QuotaExceeded` when a limit is reached; both leave the store unchanged."""
        ...

    async def replay(self, session_key: str, idempotency: Idempotency) -> Task | None:
        """The task an earlier create with this Idempotency-Key made in the session, or
        None; `IdempotencyConflict` when the key was used with another fingerprint.
        (A cheap look before validating a request; `create` checks again atomically.)"""
        ...

    async def get(self, session_key: str, task_id: str) -> Task:
        """The task, if it belongs to `session_key`; any other case is `TaskNotFound`."""
        ...

    async def query(
        self, session_key: str, where: TaskFilter, *, limit: int | None = None, offset: int = 0
    ) -> TaskPage:
        """The session's tasks matching `where`, newest first, one page of them."""
        ...

    async def counts(self, session_key: str) -> SessionCounts: ...

    async def totals(self) -> StoreTotals: ...

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
    ) -> Task:
        """Move the task to `target` if the state machine allows it, it is in one of
        `expect` (default: any source the machine allows) and, when `attempt` is given,
        still on that attempt. Raises `InvalidTransition` (its message names `action`,
        what was tried) and changes nothing otherwise.

        A retry (to pending) with `automatic` is the retry policy's: it counts in
        `auto_retries`, while a manual retry resets that count. `dead_letter` marks a
        final failure whose retries are spent."""
        ...

    async def report_progress(
        self,
        session_key: str,
        task_id: str,
        attempt: int,
        percent: float,
        step: str | None,
        description: str | None,
    ) -> bool:
        """Apply a progress report of `attempt`; False (and nothing changes) when the
        task is no longer running that attempt."""
        ...

    async def remove(self, session_key: str, task_id: str) -> Task:
        """Forget a task that is not running (`InvalidTransition` if it is)."""
        ...

    async def trim(self, retention: Retention, session_key: str | None = None) -> TrimResult:
        """Remove the oldest-finished tasks beyond `retention`, in one session or all.
        Never touches pending or running tasks; yields to the event loop in batches."""
        ...

    async def take_token(self, bucket: str, rate: float, burst: int) -> float:
        """Take one token from `bucket` (refilled at `rate` per second, holding at most
        `burst`): 0 when granted, else the seconds until one is available (none taken)."""
        ...

"""The task-store seam: what the engine needs from wherever tasks are kept.

The store is the authority on a task's status and progress. Every method is a
coroutine so that a store on another machine (Redis) fits the same shape as the
in-memory one; each method is one atomic step (a Lua script or MULTI/EXEC on Redis),
so no caller ever reads, decides and writes in two steps.

- `create` checks the Idempotency-Key and the quotas (`CreateLimits`: active tasks
  per session, the budgets of the client it counts against, and the server-wide caps on
  stored tasks and on sessions holding tasks) and inserts, atomically; `replay` only
  looks the key up. A session belongs to the client that created it (`CreateLimits.client`;
  `async_tasks.clients`). Where a budget or a full pool would refuse, the same step makes
  room instead when it can, by the rules of `CreateLimits`: what goes is removed with
  cause ``evicted``, and a session removed whole is announced on
  `EventHub.on_session_ended` (its open streams end).
- `get`, `query`, `counts` and `totals` read; a page of `query` costs O(page), counts
  come from counters kept as transitions happen (never a scan).
- `transition` is a compare-and-set: it applies only if the task is still in one of
  the `expect`-ed statuses and (when given) still on `attempt`; otherwise it raises
  `InvalidTransition` and changes nothing. It stamps times and appends history (an
  entry into ``failed`` carries the attempt's `error`).
- `report_progress` applies an executor's report and says whether it was accepted:
  a report for an attempt that is over (cancelled, timed out, superseded) is refused.
  `add_logs` does the same for its log lines: it numbers them, keeps the task's log
  within `policy.logs` (the oldest dropped and counted) and publishes them as one
  ``log`` event.
- `recent_durations` reads the run times of each executor's last completed attempts
  (kept as they complete, in every process's view): what a wait is estimated from.
- `finish` records how a running attempt ended (`Finish`), in one step: completed,
  failed, or failed and pending again for an automatic retry (never seen as failed by
  retention or expiry), or handed back by a worker that shut down.
- `remove` forgets a task that is not running; `trim` enforces retention; `expire`
  applies the time limits (`Expiry`: finished tasks' TTL, the lifetime of tasks never
  started, idle sessions), on the store's `clock`.
- `policy` (`StorePolicy`) holds the rules the store applies by itself as tasks
  change: retention the moment a task finishes (`transition`, O(1) per task removed,
  from the per-session finished-order index), the cap on each task's history (the
  first entries and the latest are kept; one entry counts those left out), and how
  long an Idempotency-Key outlives its task.
- `take_token` draws from a token bucket (the per-session create rate), so the rate
  holds across every process that shares the store.
- `events` is the in-process event source: every change made through this store is
  published there (push streams and metrics listen); its `on_removed` hooks learn
  why a task went (``retention``, ``expired``, or None for `remove`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import msgspec

from async_tasks.errors import CapacityExceeded, IdempotencyConflict, InvalidTransition, QuotaExceeded
from async_tasks.task import Task, TaskStatus
from async_tasks.task_log import LogLimits, LogLine

if TYPE_CHECKING:
    from async_tasks.clock import Clock
    from async_tasks.events import EventHub


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
    """One page of a query, newest first, how many tasks match in all, and where the
    next page starts (pass it back as `cursor`; None: this was the last page)."""

    tasks: list[Task]
    total: int
    next_cursor: str | None = None


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
    """Quotas `create` checks atomically with the insert, and who the create counts against.

    A session belongs to the client that created it (`client`; None: the session is its
    own client); a client's budgets count what its sessions hold. At its own budget, a
    client's least recently changed idle session (no pending or running task) makes way
    for a new one, and its oldest finished task for a new task; with none, `create`
    raises `QuotaExceeded` (429).

    The server-wide caps bound memory however many clients ask. When one is reached,
    room is taken from a client holding more than the one asking
    (`async_tasks.clients.fair_victims`), never from the newcomer: for a task, that
    client's oldest never-started task, else its oldest finished one; for a session, its
    least recently changed session in which nothing runs or ever started; failing that,
    for a session, the least recently changed idle session of a client holding more
    sessions than the one asking. When nothing can go, `create` raises
    `CapacityExceeded` (503). A refused create changes nothing.
    """

    #: Pending + running tasks one session may hold.
    max_active_per_session: int
    #: Tasks held in all sessions together (None: no cap).
    max_tasks: int | None = None
    #: Sessions holding at least one task (None: no cap); a create that would add a
    #: session beyond it is refused, creates in existing sessions are not.
    max_sessions: int | None = None
    #: The client (a keyed hash of its address) a new session belongs to.
    client: str | None = None
    #: Tasks one client's sessions may hold together (None: no budget).
    max_tasks_per_client: int | None = None
    #: Sessions holding tasks one client may have (None: no budget).
    max_sessions_per_client: int | None = None


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


#: Entries kept from the start of a capped history (the rest of the cap is the latest).
HISTORY_HEAD = 10


class Finish(msgspec.Struct, frozen=True, kw_only=True):
    """How a running attempt ended, as the store records it in one step (`TaskStore.finish`).

    - ``completed``: with `result`.
    - ``failed``: for good (`dead_letter` when its retries were spent).
    - ``retry``: failed (history: `reason`, `error`), then pending again (history:
      `retry_reason`) and delayed by `retry_delay_ms`; it counts in `Task.auto_retries`.
    - ``handback``: its worker shut down: failed, then pending again at once, the retry
      budget untouched.
    """

    kind: Literal["completed", "failed", "retry", "handback"]
    reason: str
    result: Any = None
    error: str | None = None
    dead_letter: bool = False
    retry_delay_ms: int = 0
    retry_reason: str | None = None


#: A running attempt's last progress report, stored with its outcome: (percent, step, description).
Report = tuple[float, "str | None", "str | None"]


class StorePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Rules the store applies by itself as tasks change (the engine sets them at start).

    - `retention`: when a task enters a terminal status, the session's oldest-finished
      tasks of that status beyond the limit are removed at once (the task finishing
      is always kept, so with a limit of 0 it stays until the next `trim`).
    - `max_history`: a task keeps at most this many history entries: the first
      `HISTORY_HEAD` (or half the cap if smaller) and the latest; the entry after the
      head stands for the ones left out (`HistoryEntry.omitted` counts them).
    """

    retention: Retention | None = None
    max_history: int | None = None
    #: How long an Idempotency-Key is remembered after its create, even once its task is
    #: gone (None: as long as its task). A session keeps at most `idempotency_keys` of them.
    idempotency_window_ms: int | None = None
    idempotency_keys: int = 10_000
    #: How much of its log a task keeps (lines, bytes; `add_logs` drops the oldest beyond).
    logs: LogLimits = LogLimits()


#: Run times of an executor's completed attempts a store keeps (the newest), for estimates.
RECENT_DURATIONS = 20


class Expiry(msgspec.Struct, frozen=True, kw_only=True):
    """Time limits `expire` applies, in milliseconds of the store's clock (None: none).

    - `finished_ttl_ms`: a completed, failed or cancelled task is removed this long
      after it finished (`completed_at`).
    - `pending_ttl_ms`: a task still pending this long after it was created, never
      started (no attempt yet), is cancelled with reason ``expired``.
    - `session_idle_ms`: a session with no pending or running task in which nothing
      was created or changed for this long is forgotten with all its tasks (its
      slot under `CreateLimits.max_sessions` is free again).
    """

    finished_ttl_ms: int | None = None
    pending_ttl_ms: int | None = None
    session_idle_ms: int | None = None


class ExpiryResult(msgspec.Struct, kw_only=True):
    """What one `expire` pass did."""

    #: Finished tasks removed because their TTL ran out.
    finished: int = 0
    #: Never-started tasks cancelled (the engine stops any queued wait for them).
    pending: list[Task] = msgspec.field(default_factory=list)
    #: Sessions forgotten for being idle, and the tasks they held.
    sessions: int = 0
    session_tasks: int = 0


class TrimResult(msgspec.Struct, kw_only=True):
    """What one retention pass removed, by status."""

    completed: int = 0
    failed: int = 0
    cancelled: int = 0

    @property
    def total(self) -> int:
        return self.completed + self.failed + self.cancelled


# -- the errors every store raises, worded once ---------------------------------------

#: What a transition into each status is called in a refusal.
ACTIONS: dict[TaskStatus, str] = {
    TaskStatus.RUNNING: "start",
    TaskStatus.CANCELLED: "cancel",
    TaskStatus.PENDING: "retry",
    TaskStatus.COMPLETED: "complete",
    TaskStatus.FAILED: "fail",
}
_RETRY_HINT = "Only failed or cancelled tasks can be retried."
_HINTS = {
    ("cancel", TaskStatus.COMPLETED): "A completed task cannot be cancelled.",
    ("retry", TaskStatus.PENDING): _RETRY_HINT,
    ("retry", TaskStatus.RUNNING): _RETRY_HINT,
    ("retry", TaskStatus.COMPLETED): _RETRY_HINT,
    ("start", TaskStatus.FAILED): "Use retry to run it again.",
    ("start", TaskStatus.CANCELLED): "Use retry to run it again.",
    ("delete", TaskStatus.RUNNING): "Cancel it first.",
}


def refusal(task_id: str, status: TaskStatus, action: str) -> InvalidTransition:
    """The contract's error for `action` on a task in `status`."""
    return InvalidTransition(task_id, status.value, action, _HINTS.get((action, status)))


def idempotency_conflict(key: str, task_id: str) -> IdempotencyConflict:
    return IdempotencyConflict(
        "This Idempotency-Key was already used with a different request in this session.",
        details={"idempotencyKey": key, "taskId": task_id},
    )


def quota_exceeded(limit: int, active: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"This session already has {active} active tasks (the limit is {limit}). "
        "Wait for some to finish or cancel them.",
        retry_after=1,
        details={"limit": limit, "active": active},
    )


def too_many_sessions(limit: int, held: int) -> CapacityExceeded:
    return CapacityExceeded(
        f"The server already holds tasks of {held} sessions (the limit is {limit}, MAX_SESSIONS). "
        "Try again later, or reuse an existing session.",
        retry_after=60,
        details={"limit": limit, "setting": "MAX_SESSIONS"},
    )


def client_has_too_many_sessions(limit: int, held: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"Your address already holds {held} sessions with tasks (the limit is {limit}, MAX_SESSIONS_PER_CLIENT), "
        "and none of them is idle. Reuse a session, or wait for its tasks to finish.",
        retry_after=60,
        details={"limit": limit, "held": held, "setting": "MAX_SESSIONS_PER_CLIENT"},
    )


def client_has_too_many_tasks(limit: int, held: int) -> QuotaExceeded:
    return QuotaExceeded(
        f"Your address already holds {held} tasks across its sessions (the limit is {limit}, MAX_TASKS_PER_CLIENT), "
        "and none of them has finished. Cancel or delete some first.",
        retry_after=60,
        details={"limit": limit, "held": held, "setting": "MAX_TASKS_PER_CLIENT"},
    )


def too_many_tasks(limit: int, held: int) -> CapacityExceeded:
    return CapacityExceeded(
        f"The server already holds {held} tasks (the limit is {limit}, MAX_TASKS). "
        "Try again later, or delete finished tasks.",
        retry_after=60,
        details={"limit": limit, "setting": "MAX_TASKS"},
    )


class Poll(NamedTuple):
    """What a `/status` poll reads of a task (`TaskStore.poll`).

    A store that reads what the task's outlook needs in the same step says so with
    `placed`: `position` is then its place in its session's line (None: not waiting in
    line), `lanes` how many of the session's tasks run now and `durations` its executor's
    recent run times (`recent_durations`). Otherwise the outlook reads them itself."""

    task: Task
    placed: bool = False
    position: int | None = None
    lanes: int = 0
    durations: Sequence[int] = ()


class TaskStore(Protocol):
    """Where tasks live. See the module docstring for the contract of each method."""

    clock: Clock
    events: EventHub
    policy: StorePolicy

    async def create(
        self, task: Task, *, limits: CreateLimits, idempotency: Idempotency | None = None
    ) -> tuple[Task, bool]:
        """Insert `task` (pending, history "created"), or return the task an earlier
        create with the same Idempotency-Key made in the session: ``(task, replayed)``.

        Raises `IdempotencyConflict` when the key was used with another fingerprint,
        `IdempotentTaskRemoved` when its task is no longer kept, `QuotaExceeded` when the
        session's limit is reached and `CapacityExceeded` when a server-wide cap is (a
        replay is never refused); all leave the store unchanged."""
        ...

    async def replay(self, session_key: str, idempotency: Idempotency) -> Task | None:
        """The task an earlier create with this Idempotency-Key made in the session, or
        None; `IdempotencyConflict` when the key was used with another fingerprint.
        (A cheap look before validating a request; `create` checks again atomically.)"""
        ...

    async def get(self, session_key: str, task_id: str) -> Task:
        """The task, if it belongs to `session_key`; any other case is `TaskNotFound`."""
        ...

    async def poll(self, session_key: str, task_id: str) -> Poll:
        """What a `/status` poll answers of the task, as `get` finds it: its status fields
        (a store may leave out params, metadata, result, history and logs), and what its
        outlook needs if the store reads that in the same step (see `Poll`)."""
        ...

    async def query(
        self,
        session_key: str,
        where: TaskFilter,
        *,
        limit: int | None = None,
        offset: int = 0,
        cursor: str | None = None,
    ) -> TaskPage:
        """The session's tasks matching `where`, newest first, one page of them (after
        `offset` more, or below `cursor`, a page's `next_cursor`). The tasks may be
        summaries: params, metadata, result and history left out (a shared store reads
        only what a list shows)."""
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
        final failure whose retries are spent.

        `policy` applies here: the history entry is added within `max_history`, and a
        task entering a terminal status makes the session's oldest-finished tasks of
        that status beyond `retention` go at once (each published as ``removed``)."""
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

    async def add_logs(self, session_key: str, task_id: str, attempt: int, lines: Sequence[LogLine]) -> bool:
        """Append log lines of `attempt` (their `n` is given here, following the task's last
        line); beyond `policy.logs` the oldest lines go, counted in `logs_dropped` (the newest
        always stays). Publishes the lines kept as one ``log`` event. False (and nothing
        changes) when the task is no longer running that attempt."""
        ...

    async def recent_durations(self, executors: Collection[str]) -> dict[str, list[int]]:
        """The run times (ms, start to completion) of each executor's last completed attempts,
        newest first, at most `RECENT_DURATIONS` of each (every session's, even of tasks
        removed since). An executor with none is absent."""
        ...

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
    ) -> Task:
        """Record how running `attempt` ended, in one step (see `Finish`), with its last
        held-back progress `report` and log `lines` (added first, as `add_logs` would);
        `InvalidTransition` when the task no longer runs that attempt (or, with `owner`, runs
        it elsewhere) and nothing changes. Retention applies as in `transition`."""
        ...

    async def remove(self, session_key: str, task_id: str) -> Task:
        """Forget a task that is not running (`InvalidTransition` if it is)."""
        ...

    async def trim(self, retention: Retention, session_key: str | None = None) -> TrimResult:
        """Remove the oldest-finished tasks beyond `retention`, in one session or all.
        Never touches pending or running tasks; yields to the event loop in batches."""
        ...

    async def expire(self, expiry: Expiry, session_key: str | None = None) -> ExpiryResult:
        """Apply `expiry` now (in one session, or all), on the store's clock: remove the
        finished tasks past their TTL, cancel (reason ``expired``) the never-started
        pending tasks past their lifetime, forget the idle sessions. Never touches a
        running task. Cost: the expired tasks plus one look per session."""
        ...

    async def take_token(self, bucket: str, rate: float, burst: int) -> float:
        """Take one token from `bucket` (refilled at `rate` per second, holding at most
        `burst`): 0 when granted, else the seconds until one is available (none taken)."""
        ...

    # -- across sessions (the admin view, `async_tasks.admin`) ------------------------

    async def list_sessions(self, *, limit: int, offset: int = 0) -> SessionPage:
        """Every session holding tasks, the most recently active first, one page of them:
        each with its tasks by status and when a task of it was last created, changed
        or removed (`SessionSummary.last_active_ms`); and how many sessions there are."""
        ...

    async def query_all(
        self, where: TaskFilter, *, limit: int | None = None, offset: int = 0, cursor: str | None = None
    ) -> TaskPage:
        """`query` across every session: the tasks matching `where`, newest first
        (creation order), one page of them (after `offset` more, or below `cursor`), how many
        match in all and where the next page starts."""
        ...

    async def find(self, task_id: str) -> Task:
        """The task with this id, whichever session holds it; `TaskNotFound` otherwise."""
        ...


class SessionSummary(msgspec.Struct, kw_only=True):
    """One session as the admin view lists it (`TaskStore.list_sessions`)."""

    key: str
    by_status: dict[TaskStatus, int]
    #: When a task of the session was last created, changed or removed (epoch ms).
    last_active_ms: int

    @property
    def total(self) -> int:
        return sum(self.by_status.values())


class SessionPage(NamedTuple):
    """One page of `TaskStore.list_sessions`, and how many sessions hold tasks in all."""

    sessions: list[SessionSummary]
    total: int

"""The execution seam: what hands tasks to delivery and runs their attempts.

The task store says what a task's status is; an execution backend makes attempts
happen. It is the producer: every change that hands a task to delivery or takes it
back goes through it (`create`, `start`, `retry`, `cancel`), so a backend whose
delivery lives in a shared store (Redis) makes each of them one atomic step with the
record, and no crash between two steps can strand a task. It owns the execution
policies: concurrency limits, queue order, timeouts, automatic retries with backoff,
and what shutdown does to tasks. Every backend shares the global slots fairly across
sessions and lets `priority` order a session's own tasks only.

- `create` stores a new task (`TaskStore.create`) and, with `start`, hands it to
  delivery; `start` hands over a pending task not yet handed over (again, if its
  delivery was lost); `retry` moves a failed or cancelled task back to pending and
  hands it over; `cancel` cancels a pending or running task and stops its attempt.
- `discard` is told of tasks the store cancelled by itself (expiry): it stops waiting
  for them.
- `run` serves until cancelled (start it with ``await tg.start(backend.run)``);
  `shutdown` refuses new work and ends what runs within a grace period.

The attempt policy is written once, here: `run_attempt` runs one attempt (deadline,
threads for blocking executors, outcome), `conclude` turns its outcome into the
`Finish` the store records (completed, or failed, retried after `backoff_delay`, dead
lettered), `lost` and `handed_back` do the same for attempts whose worker died or shut
down; `log_fields` and `describe` are what every backend writes about an attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from async_tasks.progress import AttemptEnded, ProgressReporter, ThreadProgress
from async_tasks.store.base import Finish
from async_tasks.task import StoredTask, TaskStatus, compact

if TYPE_CHECKING:
    from async_tasks.execution.deadlines import Deadlines
    from async_tasks.executor import TaskExecutor
    from async_tasks.settings import EngineSettings
    from async_tasks.store.base import CreateLimits, Idempotency
    from async_tasks.task import Task

#: How an attempt that ran to its end came out: (status, result, error).
Outcome = tuple[TaskStatus, Any, "str | None"]

#: History reasons every backend writes.
WORKER_LOST = "worker lost"
WORKER_SHUTDOWN = "worker shutdown"


class ExecutionLoad(msgspec.Struct, kw_only=True):
    """What an execution backend is doing now: attempts running here, tasks waiting for a
    slot, and (a shared backend) tasks handed to a worker that has not started them yet.

    By executor (`ExecutionBackend.load_by_executor`): `queued` also counts the tasks
    waiting for their time (a retry's backoff, a delayed start), and `workers` says how
    many live processes run the executor (0: its tasks wait for a worker that runs it)."""

    running: int
    queued: int
    starting: int = 0
    workers: int | None = None


class ExecutionBackend(Protocol):
    #: Called with (task, seconds) when an attempt ends here, whatever its outcome.
    on_finish: list[Callable[[Task, float], None]]

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun: `create`, `start` and `retry` then raise `ShuttingDown`."""
        ...

    @property
    def alive(self) -> bool:
        """True while `run` serves."""
        ...

    def stop_accepting(self) -> None:
        """Refuse new work from now on (safe from a signal handler or another thread)."""
        ...

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...

    async def create(
        self,
        task: Task,
        *,
        limits: CreateLimits,
        idempotency: Idempotency | None,
        start: bool,
        start_at: int | None = None,
    ) -> tuple[Task, bool]:
        """`TaskStore.create`, and with `start` the task handed to delivery: either both
        happen or neither does. With `start_at` (epoch ms, later than now) it is delivered
        then: pending meanwhile, with `Task.scheduled_at` saying when. Returns ``(task, replayed)``."""
        ...

    async def start(self, session_key: str, task_id: str, *, start_at: int | None = None) -> Task:
        """Hand a pending task to delivery, now or at `start_at` (a no-op if it is on its
        way at that time; delivered afresh if its delivery was lost; a task still waiting for
        its time or its turn moves to the time asked for). `InvalidTransition` unless pending."""
        ...

    async def retry(self, session_key: str, task_id: str, *, reason: str = "retry requested") -> Task:
        """Move a failed or cancelled task back to pending (a fresh attempt; the automatic
        retry budget starts again; `reason` in its history) and hand it to delivery."""
        ...

    async def cancel(self, session_key: str, task_id: str, reason: str) -> Task:
        """Cancel a pending or running task: it is `cancelled` at once, its progress frozen,
        its delivery withdrawn, and a running attempt stopped at its next await."""
        ...

    async def discard(self, tasks: list[Task]) -> None:
        """Tasks the store cancelled by itself (expiry): stop waiting for them."""
        ...

    async def queue_position(self, task: Task) -> int | None:
        """1-based place of a waiting task among its own session's waiting tasks, or None
        (other sessions' tasks are never counted: they are not the caller's business)."""
        ...

    async def queue_positions(self, session_key: str, tasks: Sequence[Task]) -> dict[str, int]:
        """`queue_position` of several tasks of one session at once (a page of a list), by
        task id; those not waiting in line are absent. Costs one pass, not one per task."""
        ...

    async def load(self) -> ExecutionLoad: ...

    def running_tasks(self) -> list[Task]:
        """The tasks whose attempts run here now (a snapshot; callable from any thread)."""
        ...

    async def shutdown(self, grace: float) -> list[Task]:
        """Refuse new work, end (or hand back) every task running here and wait up to
        `grace` seconds; returns the tasks that did not stop."""
        ...

    # -- the admin view (`async_tasks.admin`) ------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        """The live processes that run attempts, with what they run (on one process: itself)."""
        ...

    async def load_by_executor(self) -> dict[str, ExecutionLoad]:
        """`load` by executor name, across every process of the backend: attempts
        running, tasks waiting for a slot, a worker or their time, and the live processes
        that run it. Every registered executor is present, with zeros when idle."""
        ...


# -- the attempt policy ------------------------------------------------------------------


def backoff_delay(retry: int, *, initial_ms: int, max_ms: int, jitter: float) -> float:
    """Seconds before automatic retry number `retry` (1, 2, ...): `initial_ms` doubled for
    each earlier retry, capped at `max_ms`, of which half is fixed and half scaled by
    `jitter` (a random number in [0, 1)), so retries of many tasks spread out."""
    capped = min(initial_ms / 1000 * 2.0 ** (retry - 1), max_ms / 1000)
    return capped / 2 + capped / 2 * jitter


def _retry_or_fail(task: Task, error: str, reason: str, settings: EngineSettings, rng: Callable[[], float]) -> Finish:
    used = task.auto_retries
    if used < task.max_retries:
        delay = backoff_delay(
            used + 1, initial_ms=settings.retry_backoff_ms, max_ms=settings.retry_backoff_max_ms, jitter=rng()
        )
        return Finish(
            kind="retry",
            error=error,
            reason=reason,
            retry_delay_ms=round(delay * 1000),
            retry_reason=f"automatic retry {used + 1} of {task.max_retries} in {delay * 1000:.0f} ms",
        )
    return Finish(kind="failed", error=error, reason=reason, dead_letter=task.max_retries > 0)


def conclude(task: Task, outcome: Outcome, settings: EngineSettings, rng: Callable[[], float]) -> Finish:
    """What the store records for an attempt of `task` that ran to its end: completed; or
    failed, and retried after the backoff while the task's retry budget lasts."""
    status, result, error = outcome
    if status is TaskStatus.COMPLETED and error is None:
        return Finish(kind="completed", result=result, reason="completed")
    retry = task.auto_retries < task.max_retries
    return _retry_or_fail(task, error or "failed", "attempt failed" if retry else "failed", settings, rng)


def lost(task: Task, error: str, settings: EngineSettings, rng: Callable[[], float]) -> Finish:
    """An attempt whose worker is gone: failed, and retried per the task's budget."""
    return _retry_or_fail(task, error, WORKER_LOST, settings, rng)


def handed_back() -> Finish:
    """An attempt its worker stopped because it shut down: it runs again on another worker,
    without using the retry budget."""
    return Finish(
        kind="handback",
        error="The worker running this task shut down; it runs again on another worker",
        reason=WORKER_SHUTDOWN,
        retry_reason="handed back to the queue",
    )


def log_cancelled(logger: logging.Logger, task: Task, reason: str) -> None:
    """The log line of an attempt its backend stopped (the task cancelled, or its worker leaving)."""
    logger.info(
        "Cancelled execution of task %s for session %s (%s)", task.id, task.session_key, reason,
        extra=log_fields(task, reason=reason),
    )  # fmt: skip


def log_finish(logger: logging.Logger, task: Task, attempt: int, finish: Finish) -> None:
    """The log line of an attempt's end (`task` as the store recorded it)."""
    key = task.session_key
    if finish.kind == "completed":
        if not logger.isEnabledFor(logging.INFO):  # the common case under load: no fields to build
            return
        logger.info(
            "Completed execution of task %s for session %s in %d ms", task.id, key, task.duration_ms or 0,
            extra=log_fields(task),
        )  # fmt: skip
    elif finish.kind == "failed":
        logger.error(
            "Failed execution of task %s for session %s: %s", task.id, key, finish.error,
            extra=log_fields(task, error=finish.error),
        )  # fmt: skip
    elif finish.kind == "retry":
        logger.warning(
            "Attempt %s of task %s for session %s failed: %s", attempt, task.id, key, finish.error,
            extra=log_fields(task, error=finish.error),
        )  # fmt: skip
    else:
        logger.info("Handed task %s for session %s back to the queue (%s)", task.id, key, finish.reason)


def log_fields(task: Task, **fields: Any) -> dict[str, Any]:
    """``extra=`` for a task's log line: JSON logs show these fields (see `async_tasks.logs`)."""
    return {
        "task_id": task.id,
        "session_key": task.session_key,
        "executor": task.executor,
        "status": task.status.value,
        "duration_ms": task.duration_ms,
        **fields,
    }


async def run_attempt(
    executor: TaskExecutor[Any, Any] | None,
    task: Task,
    reporter: ProgressReporter,
    *,
    scope: anyio.CancelScope,
    timeout_ms: int,
    max_result_bytes: int,
    threads: set[Any],
    attempt: Hashable,
    missing: str,
    stopped: Callable[[], bool],
    deadlines: Deadlines,
    prepare: Callable[[TaskExecutor[Any, Any]], Task] | None = None,
) -> Outcome | None:
    """Run one attempt of `task` inside `scope` (the backend cancels it there), with the
    task's deadline; a blocking executor runs in a worker thread, listed in `threads` as
    `attempt` while it runs (shutdown reports those it cannot stop as abandoned).

    The outcome: completed with the result (failed when the result cannot be stored),
    failed with the exception as ``Type: message`` (`missing` when the executor is not
    registered), failed as timed out when the deadline passed, or None when the attempt
    ended otherwise (cancelled through `scope` by the backend, which `stopped` tells, or
    its reports refused): then the store already says how it ended. `prepare` gives the task as the executor takes it (a
    failure there fails the attempt too). The deadline is kept in the process's `deadlines`,
    not in a timer of the scope's own."""
    outcome: Outcome | None = None
    with scope:
        deadline = deadlines.add(scope, timeout_ms / 1000)
        try:
            if executor is None:
                raise LookupError(missing)
            if prepare is not None:
                task = prepare(executor)
            if executor.is_blocking():
                result = await anyio.to_thread.run_sync(
                    _in_thread, executor, task, reporter, threads, attempt, abandon_on_cancel=True
                )
            else:
                result = await executor.execute(task, reporter)
            outcome = (TaskStatus.COMPLETED, *stored_result(result, max_result_bytes))
        except AttemptEnded:
            outcome = None
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            outcome = (TaskStatus.FAILED, None, describe(exc))
        finally:
            deadlines.discard(deadline)
    reporter.close()
    if scope.cancelled_caught and not stopped():
        outcome = (TaskStatus.FAILED, None, f"Task timed out after {timeout_ms} ms")
    return outcome


def executor_task(task: Task, executor: TaskExecutor[Any, Any]) -> Task:
    """`task` as `executor` takes it: a stored task's data decoded, its params as the
    executor's `Params`."""
    if isinstance(task, StoredTask):
        return task.decoded(type(executor).Params)
    return task


def _in_thread(
    executor: TaskExecutor[Any, Any], task: Task, reporter: ProgressReporter, threads: set[Any], attempt: Hashable
) -> Any:
    threads.add(attempt)
    try:
        return executor.execute(task, ThreadProgress(reporter))
    finally:
        threads.discard(attempt)


def stored_result(result: Any, max_bytes: int) -> tuple[Any, str | None]:
    """An executor's result as it is stored (its encoded JSON, `msgspec.Raw`) and None; or
    the result and why it cannot be stored (not JSON, or over `max_bytes` encoded)."""
    try:
        data = msgspec.json.encode(result)
    except (TypeError, ValueError, OverflowError) as exc:
        return result, f"The executor returned a result that is not JSON-encodable: {exc}"
    if len(data) > max_bytes:
        return result, f"The executor's result is too large: {len(data)} bytes (the limit is {max_bytes})"
    return msgspec.Raw(compact(data)), None


def describe(exc: BaseException) -> str:
    """An exception as a task's error: ``Type: message``."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class WorkerInfo(msgspec.Struct, kw_only=True):
    """A process that runs attempts, as the admin view shows it."""

    #: Unique while it lives: ``<host>:<pid>`` and, for a worker, a random suffix.
    id: str
    host: str
    pid: int
    #: The executors it runs.
    executors: list[str]
    #: Attempts running there now, and how many it may run at once.
    running: int
    concurrency: int
    #: When it started (epoch ms).
    started_at: int
    #: How long ago it last renewed its lease (ms); None for the process serving the
    #: request (the memory backend: it needs no lease).
    lease_age_ms: int | None = None

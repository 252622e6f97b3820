"""The execution seam: what runs a pending task's attempts.

The task store says what a task's status is; an execution backend makes attempts
happen and reports their outcome through the store (`transition` with the attempt
number as a compare-and-set, `report_progress` from the executor's reporter). It
owns the execution policies: concurrency limits, queue order, timeouts, automatic
retries with backoff, and what shutdown does to tasks. Every backend shares the
global slots fairly across sessions (one session, or a few, never holds them all
while others wait) and lets `priority` order a session's own tasks only.

- `submit` hands over a task that is pending in the store; it runs when the limits
  allow (or, for a retry, after `delay` seconds).
- `cancel` stops the attempt of a task the store has already marked cancelled (the
  store refuses the attempt's later reports and outcome, so this is a hint: it frees
  the slot and stops the executor's work).
- `run` serves until cancelled (start it with ``await tg.start(backend.run)``);
  `shutdown` refuses new work and ends what runs within a grace period.

`run_attempt` is how every backend runs one attempt (deadline, threads for blocking
executors, outcome); `log_fields` and `describe` are what every backend writes about
an attempt: the fields of its log lines, and an exception as the task's error.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from async_tasks.progress import AttemptEnded, ProgressReporter, ThreadProgress
from async_tasks.task import TaskStatus

if TYPE_CHECKING:
    from async_tasks.executor import TaskExecutor
    from async_tasks.task import Task

#: How an attempt that ran to its end came out: (status, result, error).
Outcome = tuple[TaskStatus, Any, "str | None"]


class ExecutionLoad(msgspec.Struct, kw_only=True):
    """What an execution backend is doing now."""

    running: int
    queued: int


class ExecutionBackend(Protocol):
    #: Called with (task, seconds) when an attempt ends, whatever its outcome.
    on_finish: list[Callable[[Task, float], None]]

    @property
    def accepting(self) -> bool:
        """False once shutdown has begun: `submit` then raises `ShuttingDown`."""
        ...

    @property
    def alive(self) -> bool:
        """True while `run` serves."""
        ...

    def stop_accepting(self) -> None:
        """Refuse new work from now on (safe from a signal handler or another thread)."""
        ...

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...

    async def submit(self, task: Task) -> None:
        """Queue a task that is pending in the store. Raises `ShuttingDown` once shutdown began."""
        ...

    async def cancel(self, task: Task, reason: str) -> None:
        """Stop the attempt (or the queued wait) of a task the store has marked cancelled."""
        ...

    async def queue_position(self, task: Task) -> int | None:
        """1-based place of a queued task among its own session's queued tasks, or None
        (other sessions' queued tasks are never counted: they are not the caller's business)."""
        ...

    async def load(self) -> ExecutionLoad: ...

    def running_tasks(self) -> list[Task]:
        """The tasks whose attempts run here now (a snapshot; callable from any thread)."""
        ...

    async def shutdown(self, grace: float) -> list[Task]:
        """Refuse new work, end every running and queued task with reason ``shutdown``
        and wait up to `grace` seconds; returns the tasks that did not stop."""
        ...

    # -- the admin view (`async_tasks.admin`) ------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        """The live processes that run attempts, with what they run (on one process: itself)."""
        ...

    async def load_by_executor(self) -> dict[str, ExecutionLoad]:
        """`load` by executor name, across every process of the backend: attempts
        running and tasks waiting for a slot (or a worker). Every registered executor is
        present, with zeros when idle."""
        ...


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
    failure there fails the attempt too)."""
    outcome: Outcome | None = None
    with scope:
        scope.deadline = anyio.current_time() + timeout_ms / 1000
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
            outcome = (TaskStatus.COMPLETED, result, result_problem(result, max_result_bytes))
        except AttemptEnded:
            outcome = None
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            outcome = (TaskStatus.FAILED, None, describe(exc))
    reporter.close()
    if scope.cancelled_caught and not stopped():
        outcome = (TaskStatus.FAILED, None, f"Task timed out after {timeout_ms} ms")
    return outcome


def _in_thread(
    executor: TaskExecutor[Any, Any], task: Task, reporter: ProgressReporter, threads: set[Any], attempt: Hashable
) -> Any:
    threads.add(attempt)
    try:
        return executor.execute(task, ThreadProgress(reporter))
    finally:
        threads.discard(attempt)


def result_problem(result: Any, max_bytes: int) -> str | None:
    """Why an executor's result cannot be stored (not JSON, or over `max_bytes` encoded), or None."""
    try:
        size = len(msgspec.json.encode(result))
    except (TypeError, ValueError, OverflowError) as exc:
        return f"The executor returned a result that is not JSON-encodable: {exc}"
    if size > max_bytes:
        return f"The executor's result is too large: {size} bytes (the limit is {max_bytes})"
    return None


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

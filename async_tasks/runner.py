"""Runs tasks: one anyio task group for the app's life, one cancel scope per attempt.

The runner owns execution policies: the global and per-session concurrency limits
(tasks over a limit wait `pending` in a priority queue: higher `priority` first,
then first come first served), timeouts, automatic retries with exponential
backoff and jitter, and shutdown. It changes task state only through the store.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.errors import ShuttingDown
from async_tasks.executor import ExecutorRegistry, TaskExecutor
from async_tasks.progress import AttemptEnded, ProgressReporter, ThreadProgress
from async_tasks.requestid import bind_task
from async_tasks.settings import Settings
from async_tasks.store import TaskStore
from async_tasks.task import Task, TaskStatus

logger = logging.getLogger("async_tasks.runner")

SHUTDOWN = "shutdown"


class _Attempt:
    """What the runner knows about one running attempt."""

    __slots__ = ("cancel_reason", "reporter", "scope", "started", "task")

    def __init__(self, task: Task, reporter: ProgressReporter) -> None:
        self.task = task
        self.reporter = reporter
        self.scope = anyio.CancelScope()
        self.cancel_reason: str | None = None
        self.started = 0.0


class Runner:
    def __init__(
        self,
        store: TaskStore,
        executors: ExecutorRegistry,
        settings: Settings,
        clock: Clock = SYSTEM_CLOCK,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.executors = executors
        self.settings = settings
        self.clock = clock
        self._rng = rng
        self._tg: anyio.abc.TaskGroup | None = None
        self.accepting = True
        self.running: dict[str, _Attempt] = {}
        self._session_running: dict[str, int] = {}
        self._queue: list[tuple[int, int, str, Task]] = []
        self._queued: dict[str, tuple[int, int, str, Task]] = {}
        self._parked: dict[str, list[tuple[int, int, str, Task]]] = {}
        self._backoff: dict[str, anyio.CancelScope] = {}
        self._auto_retries: dict[str, int] = {}
        self._seq = itertools.count()
        self._idle: anyio.Event | None = None
        #: Called with (task, duration_seconds) when an attempt ends; metrics hook in here.
        self.on_finish: list[Callable[[Task, float], None]] = []
        #: Attempts whose worker thread is still running (a blocking executor keeps going
        #: there after its attempt was cancelled); shutdown reports them as abandoned.
        self._threads: set[_Attempt] = set()

    # -- lifecycle ------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._tg is not None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Start with ``await tg.start(runner.run)``."""
        # An app's lifespan may run more than once (test clients, ASGI test harnesses):
        # a new run accepts work again after the previous run's shutdown().
        self.accepting = True
        self._idle = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None

    async def shutdown(self, grace: float) -> list[Task]:
        """Refuse new work, cancel every active task with reason `shutdown`, and wait up
        to `grace` seconds for attempts to unwind. Returns the tasks that did not
        (abandoned: they ignore cancellation or block in a thread)."""
        self.accepting = False
        for scope in list(self._backoff.values()):
            scope.cancel()
        for _, _, _, task in list(self._queued.values()):
            self._cancel_pending(task, SHUTDOWN)
        for parked in self._parked.values():
            for _, _, _, task in parked:
                self._cancel_pending(task, SHUTDOWN)
        self._queue.clear()
        self._queued.clear()
        self._parked.clear()
        for attempt in list(self.running.values()):
            if attempt.cancel_reason is None:
                self._cancel_running(attempt, SHUTDOWN)
        deadline = anyio.current_time() + grace
        if self.running:
            self._idle = anyio.Event()
            with anyio.move_on_after(grace):
                await self._idle.wait()
        # Worker threads cannot signal an event loop that is shutting down: poll them.
        while self._threads and anyio.current_time() < deadline:  # noqa: ASYNC110
            await anyio.sleep(0.02)
        abandoned = [attempt.task for attempt in self.running.values()]
        ids = {task.id for task in abandoned}
        abandoned += [attempt.task for attempt in list(self._threads) if attempt.task.id not in ids]
        for task in abandoned:
            logger.warning(
                "Abandoned task %s for session %s: it did not stop within the grace period",
                task.id,
                task.session_key,
                extra=_log_fields(task, reason=SHUTDOWN),
            )
        return abandoned

    # -- commands -------------------------------------------------------------

    def start(self, task: Task) -> None:
        """Queue a pending task; it runs as soon as the concurrency limits allow."""
        if not self.accepting:
            raise ShuttingDown()
        if task.status is not TaskStatus.PENDING or task.id in self._queued or task.id in self._backoff:
            # Let the store produce the contract's error for anything but a fresh pending task.
            if task.status is not TaskStatus.PENDING:
                self.store.transition(task, TaskStatus.RUNNING, action="start")
            return
        # No `_auto_retries` entry until a retry is used (`.get(id, 0)`): one dict entry
        # less per task held.
        self._enqueue(task)
        self._dispatch()

    def cancel(self, task: Task, reason: str = "cancelled by request") -> None:
        attempt = self.running.get(task.id)
        if attempt is not None and attempt.cancel_reason is None:
            self._cancel_running(attempt, reason)
        elif task.status is TaskStatus.PENDING:
            self._cancel_pending(task, reason)
        else:
            self.store.transition(task, TaskStatus.CANCELLED, action="cancel")

    def retry(self, task: Task) -> None:
        """failed|cancelled → pending, then queued to run (a manual retry resets the
        automatic retry budget)."""
        if not self.accepting:
            raise ShuttingDown()
        self.store.transition(task, TaskStatus.PENDING, reason="retry requested", action="retry")
        self._auto_retries[task.id] = 0
        self._enqueue(task)
        self._dispatch()

    def forget_id(self, task_id: str) -> None:
        """Drop bookkeeping of a finished task being removed (delete or cleanup)."""
        self._auto_retries.pop(task_id, None)

    def queue_position(self, task: Task) -> int | None:
        """1-based place of a queued task in start order, or None if not queued."""
        entry = self._queued.get(task.id)
        if entry is None:
            return None
        return 1 + sum(1 for other in self._queued.values() if other[:2] < entry[:2])

    @property
    def queued_count(self) -> int:
        return len(self._queued)

    # -- queue ------------------------------------------------------------------

    def _enqueue(self, task: Task) -> None:
        entry = (-task.priority, next(self._seq), task.id, task)
        self._queued[task.id] = entry
        heapq.heappush(self._queue, entry)

    def _dispatch(self) -> None:
        limit = self.settings.max_concurrent_tasks
        per_session = self.settings.max_concurrent_tasks_per_session
        while self._queue and len(self.running) < limit:
            entry = heapq.heappop(self._queue)
            task = entry[3]
            if self._queued.get(task.id) is not entry:
                continue  # cancelled or removed while queued
            if self._session_running.get(task.session_key, 0) >= per_session:
                self._parked.setdefault(task.session_key, []).append(entry)
                continue
            del self._queued[task.id]
            self._launch(task)

    def _launch(self, task: Task) -> None:
        executor = self.executors.get(task.executor)
        assert self._tg is not None, "the runner is not running (is the app's lifespan active?)"
        attempt = _Attempt(
            task,
            ProgressReporter(
                lambda percent, step, description: self._report(task, percent, step, description),
                type(executor).steps if executor is not None else (),
            ),
        )
        self.store.transition(task, TaskStatus.RUNNING, reason="started")
        self.running[task.id] = attempt
        self._session_running[task.session_key] = self._session_running.get(task.session_key, 0) + 1
        attempt.started = self.clock.monotonic()
        self._tg.start_soon(self._execute, attempt, executor, name=f"task {task.id}")

    def _report(self, task: Task, percent: float, step: str | None, description: str | None) -> None:
        self.store.report_progress(task, percent, step, description)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("Task %s progress: %s%%", task.id, percent)

    # -- one attempt ------------------------------------------------------------

    async def _execute(self, attempt: _Attempt, executor: TaskExecutor[Any] | None) -> None:
        task = attempt.task
        # Every log line of the attempt carries the task and the request that created it.
        bind_task(task.id, task.session_key, task.executor, task.request_id)
        logger.info("Starting execution of task %s for session %s", task.id, task.session_key)
        outcome: tuple[TaskStatus, Any, str | None] | None = None
        timeout_ms = task.timeout_ms or self.settings.default_task_timeout_ms
        try:
            with attempt.scope:
                attempt.scope.deadline = anyio.current_time() + timeout_ms / 1000
                try:
                    if executor is None:
                        raise LookupError(f"executor {task.executor!r} is no longer registered")
                    if executor.is_blocking():
                        result = await anyio.to_thread.run_sync(
                            self._in_thread, executor, attempt, abandon_on_cancel=True
                        )
                    else:
                        result = await executor.execute(task, attempt.reporter)
                    outcome = (TaskStatus.COMPLETED, result, self._check_result(result))
                except AttemptEnded:
                    outcome = None
                except (Exception, SystemExit, KeyboardInterrupt) as exc:
                    outcome = (TaskStatus.FAILED, None, _describe(exc))
            if attempt.scope.cancelled_caught and attempt.cancel_reason is None:
                outcome = (TaskStatus.FAILED, None, f"Task timed out after {timeout_ms} ms")
        except anyio.get_cancelled_exc_class():
            # The runner itself is being torn down without a shutdown() first.
            if task.status is TaskStatus.RUNNING:
                self._cancel_running(attempt, SHUTDOWN)
            raise
        finally:
            attempt.reporter.close()
            self._release(attempt)
        if attempt.cancel_reason is not None or outcome is None:
            return  # already recorded as cancelled when the cancel was requested
        status, result, error = outcome
        if status is TaskStatus.COMPLETED and error is None:
            self.store.transition(task, TaskStatus.COMPLETED, result=result, reason="completed")
            logger.info(
                "Completed execution of task %s for session %s in %d ms",
                task.id,
                task.session_key,
                task.duration_ms or 0,
                extra=_log_fields(task),
            )
        else:
            self._fail(task, error or "failed")
        self._notify(task, attempt)

    def _in_thread(self, executor: TaskExecutor[Any], attempt: _Attempt) -> Any:
        self._threads.add(attempt)
        try:
            return executor.execute(attempt.task, ThreadProgress(attempt.reporter))
        finally:
            self._threads.discard(attempt)

    def _check_result(self, result: Any) -> str | None:
        try:
            size = len(msgspec.json.encode(result))
        except (TypeError, ValueError, OverflowError) as exc:
            return f"The executor returned a result that is not JSON-encodable: {exc}"
        if size > self.settings.max_result_bytes:
            return f"The executor's result is too large: {size} bytes (the limit is {self.settings.max_result_bytes})"
        return None

    def _fail(self, task: Task, error: str) -> None:
        used = self._auto_retries.get(task.id, 0)
        if used < task.max_retries and self.accepting:
            self.store.transition(task, TaskStatus.FAILED, error=error, reason="attempt failed")
            logger.warning(
                "Attempt %s of task %s for session %s failed: %s",
                task.attempts,
                task.id,
                task.session_key,
                error,
                extra=_log_fields(task, error=error),
            )
            self._auto_retries[task.id] = used + 1
            delay = self.backoff_delay(used + 1)
            self.store.transition(
                task,
                TaskStatus.PENDING,
                reason=f"automatic retry {used + 1} of {task.max_retries} in {delay * 1000:.0f} ms",
            )
            assert self._tg is not None
            scope = self._backoff[task.id] = anyio.CancelScope()
            self._tg.start_soon(self._retry_after, task, delay, scope)
            return
        if task.max_retries > 0:
            task.dead_lettered = True
        self.store.transition(task, TaskStatus.FAILED, error=error, reason="failed")
        logger.error(
            "Failed execution of task %s for session %s: %s",
            task.id,
            task.session_key,
            error,
            extra=_log_fields(task, error=error),
        )

    def backoff_delay(self, retry: int) -> float:
        """Exponential backoff with jitter: half fixed, half random, capped."""
        base: float = self.settings.retry_backoff_ms / 1000 * 2.0 ** (retry - 1)
        capped: float = min(base, self.settings.retry_backoff_max_ms / 1000)
        return capped / 2 + capped / 2 * self._rng()

    async def _retry_after(self, task: Task, delay: float, scope: anyio.CancelScope) -> None:
        with scope:
            await self.clock.sleep(delay)
        self._backoff.pop(task.id, None)
        if not scope.cancelled_caught and task.status is TaskStatus.PENDING and self.accepting:
            self._enqueue(task)
            self._dispatch()

    # -- cancellation and bookkeeping ------------------------------------------------

    def _cancel_running(self, attempt: _Attempt, reason: str) -> None:
        task = attempt.task
        attempt.cancel_reason = reason
        attempt.reporter.close()  # progress frozen from this moment
        self.store.transition(task, TaskStatus.CANCELLED, reason=reason, error=None)
        attempt.scope.cancel()
        logger.info(
            "Cancelled execution of task %s for session %s (%s)",
            task.id,
            task.session_key,
            reason,
            extra=_log_fields(task, reason=reason),
        )
        self._notify(task, attempt)

    def _cancel_pending(self, task: Task, reason: str) -> None:
        self._queued.pop(task.id, None)
        scope = self._backoff.pop(task.id, None)
        if scope is not None:
            scope.cancel()
        if task.status is TaskStatus.PENDING:
            self.store.transition(task, TaskStatus.CANCELLED, reason=reason)
            logger.info(
                "Cancelled task %s for session %s before it ran (%s)",
                task.id,
                task.session_key,
                reason,
                extra=_log_fields(task, reason=reason),
            )

    def _release(self, attempt: _Attempt) -> None:
        task = attempt.task
        # A cancelled attempt may still be unwinding when a retry launches the next one;
        # only the current attempt owns the task's entry, but each attempt holds a slot.
        if self.running.get(task.id) is attempt:
            del self.running[task.id]
        key = task.session_key
        left = self._session_running[key] - 1
        if left:
            self._session_running[key] = left
        else:
            del self._session_running[key]
        parked = self._parked.pop(key, None)
        if parked:
            for entry in parked:
                heapq.heappush(self._queue, entry)
        if self._idle is None:
            self._dispatch()
        elif not self.running:
            self._idle.set()

    def _notify(self, task: Task, attempt: _Attempt) -> None:
        if self.on_finish:
            duration = self.clock.monotonic() - attempt.started
            for hook in self.on_finish:
                hook(task, duration)


def _log_fields(task: Task, **fields: Any) -> dict[str, Any]:
    """``extra=`` for a task's log line: JSON logs show these fields (see `async_tasks.logs`)."""
    return {
        "task_id": task.id,
        "session_key": task.session_key,
        "executor": task.executor,
        "status": task.status.value,
        "duration_ms": task.duration_ms,
        **fields,
    }


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name

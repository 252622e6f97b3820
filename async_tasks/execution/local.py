"""Runs tasks in this process: one anyio task group for the engine's life, one
cancel scope per attempt.

Policies: the global and per-session concurrency limits, fair sharing of the
global slots, timeouts, automatic retries with exponential backoff and jitter, and
shutdown. Task state changes only through the store, each transition a
compare-and-set on the status and attempt, so an attempt that was cancelled
meanwhile cannot overwrite it.

Fair sharing: tasks over a limit wait `pending` in their session's own queue, and a free
slot goes to the session with queued work that runs the fewest tasks, so however many
tasks one session queues, the others always find a slot (`waiting.FairQueue`).

Delayed tasks (a retry's backoff, a delayed start) wait in a heap by due time
(`waiting.Timeline`); one timer, asleep until the earliest, queues each at its time (as
precise as the event loop's timers). The running attempts' timeouts are kept the same way
(`deadlines.Deadlines`), not in a timer per attempt. Every executor runs here: there is
no routing.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.context import bind_task
from async_tasks.errors import InvalidTransition, ShuttingDown, TaskNotFound
from async_tasks.execution.base import (
    ExecutionLoad,
    WorkerInfo,
    conclude,
    executor_task,
    log_cancelled,
    log_fields,
    log_finish,
    run_attempt,
)
from async_tasks.execution.deadlines import Deadlines
from async_tasks.execution.waiting import FairQueue, Timeline
from async_tasks.executor import ExecutorRegistry, TaskExecutor
from async_tasks.progress import ProgressReporter
from async_tasks.settings import EngineSettings
from async_tasks.store.base import CreateLimits, Idempotency, refusal
from async_tasks.store.memory import MemoryTaskStore
from async_tasks.task import ACTIVE, RETRYABLE, Task, TaskStatus
from async_tasks.task_log import LogLine

logger = logging.getLogger("async_tasks.execution")

SHUTDOWN = "shutdown"
_RUNNING = frozenset({TaskStatus.RUNNING})
_PENDING = frozenset({TaskStatus.PENDING})


class _Attempt:
    """What the runner knows about one running attempt. Its reporter's sinks and what
    `run_attempt` asks of it are its own methods, not closures: a task sleeping for an hour
    holds every object its attempt made (a closure with its cells is about 400 bytes, a
    bound method 64)."""

    __slots__ = ("cancel_reason", "debug", "number", "reporter", "scope", "started", "store", "task")

    def __init__(self, task: Task, number: int, store: MemoryTaskStore) -> None:
        self.task = task
        self.number = number
        self.store = store
        self.debug = logger.isEnabledFor(logging.DEBUG)
        self.reporter: ProgressReporter | None = None
        self.scope = anyio.CancelScope()
        self.cancel_reason: str | None = None
        self.started = 0.0

    def report(self, percent: float, step: str | None, description: str | None) -> Awaitable[bool]:
        """The reporter's progress sink."""
        task = self.task
        if self.debug:
            logger.debug("Task %s progress: %s%%", task.id, percent)
        return self.store.report_progress(task.session_key, task.id, self.number, percent, step, description)

    def add_line(self, line: LogLine) -> Awaitable[bool]:
        """The reporter's log sink."""
        task = self.task
        return self.store.add_logs(task.session_key, task.id, self.number, (line,))

    def stopped(self) -> bool:
        """Whether the runner stopped it (cancelled, or shut down)."""
        return self.cancel_reason is not None

    def prepare(self, executor: TaskExecutor[Any, Any]) -> Task:
        return executor_task(self.task, executor)


class LocalExecution:
    """`ExecutionBackend` in this process's event loop."""

    def __init__(
        self,
        store: MemoryTaskStore,
        executors: ExecutorRegistry,
        settings: EngineSettings,
        clock: Clock = SYSTEM_CLOCK,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.executors = executors
        self.settings = settings
        self.clock = clock
        self._now_ms = clock.now_ms  # (one bound method for every attempt's reporter)
        self._rng = rng
        self._tg: anyio.abc.TaskGroup | None = None
        self._accepting = True
        self.running: dict[str, _Attempt] = {}
        self._session_running: dict[str, int] = {}
        #: Tasks waiting for a slot, and those waiting for their time (a retry's backoff,
        #: a delayed start) with the timer that sleeps until the earliest.
        self._queue = FairQueue(self._session_running)
        self._timeline = Timeline()
        self._timer: anyio.CancelScope | None = None
        #: The running attempts' deadlines, kept by one task instead of a timer each.
        self._deadlines = Deadlines()
        self._idle: anyio.Event | None = None
        self.on_finish: list[Callable[[Task, float], None]] = []
        #: Attempts whose worker thread is still running (a blocking executor keeps going
        #: there after its attempt was cancelled); shutdown reports them as abandoned.
        self._threads: set[_Attempt] = set()
        # A waiting task the store removed by itself (to make room for another client's)
        # waits no more.
        store.events.on_removed.append(self._on_removed)

    # -- lifecycle ------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def alive(self) -> bool:
        return self._tg is not None

    def stop_accepting(self) -> None:
        self._accepting = False

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Start with ``await tg.start(execution.run)``."""
        # An engine may be started more than once (test harnesses run an app's lifespan
        # repeatedly): a new run accepts work again after the previous run's shutdown.
        self._accepting = True
        self._idle = None
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._wake_delayed)
                tg.start_soon(self._deadlines.watch)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None

    async def shutdown(self, grace: float) -> list[Task]:
        self._accepting = False
        waiting = self._queue.tasks() + self._timeline.tasks()
        self._queue.clear()
        self._timeline.clear()
        self._wake_timer()
        for task in waiting:
            await self._cancel_pending(task, SHUTDOWN)
        for attempt in list(self.running.values()):
            if attempt.cancel_reason is None:
                await self._cancel_running(attempt, SHUTDOWN)
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
                extra=log_fields(task, reason=SHUTDOWN),
            )
        return abandoned

    # -- commands ---------------------------------------------------------------

    async def create(
        self,
        task: Task,
        *,
        limits: CreateLimits,
        idempotency: Idempotency | None,
        start: bool,
        start_at: int | None = None,
    ) -> tuple[Task, bool]:
        if start and not self._accepting:
            raise ShuttingDown()
        due = self._due(start_at) if start else None
        task.scheduled_at = due  # the store counts its lifetime from then
        # The memory store answers without yielding: nothing runs between the two steps.
        task, replayed = await self.store.create(task, limits=limits, idempotency=idempotency)
        if start and not replayed:
            if due is not None:
                self._delay(task, due)
            else:
                await self._run_or_queue(task)
        return task, replayed

    async def start(self, session_key: str, task_id: str, *, start_at: int | None = None) -> Task:
        task = await self.store.get(session_key, task_id)
        if task.status is not TaskStatus.PENDING:
            raise refusal(task.id, task.status, "start")
        if not self._accepting:
            raise ShuttingDown()
        due = self._due(start_at)
        if task.id in self._queue:
            if due is None:
                return task  # already waiting for its turn
            self._queue.remove(task)
        elif task.id in self._timeline:
            if self._timeline.due_of(task.id) == due:
                return task
            self._undelay(task.id)
        elif (running := self.running.get(task.id)) is not None and running.cancel_reason is None:
            return task  # on its way
        self.store.schedule(session_key, task_id, due)
        if due is not None:
            self._delay(task, due)
        else:
            await self._run_or_queue(task)
        return task

    def _due(self, start_at: int | None) -> int | None:
        """`start_at` if it is still ahead, else None (now)."""
        return start_at if start_at is not None and start_at > self.clock.now_ms() else None

    async def retry(self, session_key: str, task_id: str, *, reason: str = "retry requested") -> Task:
        if not self._accepting:
            raise ShuttingDown()
        task = await self.store.transition(
            session_key, task_id, TaskStatus.PENDING, expect=RETRYABLE, reason=reason, action="retry"
        )
        await self._submit(task)
        return task

    async def cancel(self, session_key: str, task_id: str, reason: str) -> Task:
        task = await self.store.transition(
            session_key, task_id, TaskStatus.CANCELLED, expect=ACTIVE, reason=reason, action="cancel"
        )
        attempt = self.running.get(task.id)
        if attempt is not None and attempt.cancel_reason is None:
            self._stop(attempt, reason)
        else:
            self._withdraw(task)
        return task

    def _on_removed(self, task: Task, cause: str | None) -> None:
        if task.status is TaskStatus.PENDING:
            self._withdraw(task)

    async def discard(self, tasks: list[Task]) -> None:
        for task in tasks:
            self._withdraw(task)

    async def _submit(self, task: Task) -> None:
        if not self._accepting:
            raise ShuttingDown()
        running = self.running.get(task.id)
        if task.id in self._queue or task.id in self._timeline or (running and running.cancel_reason is None):
            return  # already on its way
        await self._run_or_queue(task)

    def _withdraw(self, task: Task) -> None:
        """Stop waiting for a task that will not run (queued, or waiting for its time)."""
        self._queue.remove(task)
        self._undelay(task.id)

    async def queue_position(self, task: Task) -> int | None:
        """The place among the task's own session's queued tasks (other sessions'
        activity is not revealed, and does not decide the order)."""
        return self._queue.position(task)

    async def queue_positions(self, session_key: str, tasks: Sequence[Task]) -> dict[str, int]:
        """One sort of the session's queued tasks: O(q log q)."""
        return self._queue.positions(session_key, tasks)

    async def load(self) -> ExecutionLoad:
        return ExecutionLoad(running=len(self.running), queued=len(self._queue))

    def running_tasks(self) -> list[Task]:
        for _ in range(5):
            try:
                return [attempt.task for attempt in list(self.running.values())]
            except RuntimeError:  # changed size while the loop thread updated it
                continue
        return []

    # -- queue ------------------------------------------------------------------

    def _enqueue(self, task: Task) -> None:
        self._queue.put(task)

    async def _run_or_queue(self, task: Task) -> None:
        """Launch `task` now when nothing waits and the limits allow (what the queue would
        decide, without passing through it), else queue it and dispatch."""
        free = self.settings.max_concurrent_tasks - len(self.running)
        if self._queue.takes_at_once(task.session_key, free, self.settings.max_concurrent_tasks_per_session):
            await self._launch(task)
            return
        self._enqueue(task)
        await self._dispatch()

    async def _dispatch(self) -> None:
        limit = self.settings.max_concurrent_tasks
        per_session = self.settings.max_concurrent_tasks_per_session
        while len(self.running) < limit:
            task = self._queue.take(limit - len(self.running), per_session)
            if task is None:
                return
            await self._launch(task)

    async def _launch(self, task: Task) -> None:
        assert self._tg is not None, "the execution backend is not running (is the engine started?)"
        try:
            task = await self.store.transition(
                task.session_key, task.id, TaskStatus.RUNNING, expect=_PENDING, reason="started"
            )
        except (InvalidTransition, TaskNotFound):
            return  # cancelled or removed while it waited
        executor = self.executors.get(task.executor)
        attempt = _Attempt(task, task.attempts, self.store)
        attempt.reporter = ProgressReporter(
            attempt.report,
            type(executor).steps if executor is not None else (),
            log_sink=attempt.add_line,
            line_bytes=self.settings.task_log_line_bytes,
            now_ms=self._now_ms,
        )
        self.running[task.id] = attempt
        self._session_running[task.session_key] = self._session_running.get(task.session_key, 0) + 1
        attempt.started = self.clock.monotonic()
        self._tg.start_soon(self._execute, attempt, executor, name=task.id)

    # -- one attempt ------------------------------------------------------------

    async def _execute(self, attempt: _Attempt, executor: TaskExecutor[Any, Any] | None) -> None:
        task = attempt.task
        reporter = attempt.reporter
        assert reporter is not None
        # Every log line of the attempt carries the task and the request that created it.
        bind_task(task.id, task.session_key, task.executor, task.request_id)
        logger.info("Starting execution of task %s for session %s", task.id, task.session_key)
        timeout_ms = task.timeout_ms or self.settings.default_task_timeout_ms
        try:
            outcome = await run_attempt(
                executor, task, reporter,
                scope=attempt.scope, timeout_ms=timeout_ms, max_result_bytes=self.settings.max_result_bytes,
                threads=self._threads, attempt=attempt,
                missing=f"executor {task.executor!r} is no longer registered" if executor is None else "",
                stopped=attempt.stopped, prepare=attempt.prepare, deadlines=self._deadlines,
            )  # fmt: skip
            if attempt.cancel_reason is None and outcome is not None:
                await self._record(attempt, *outcome)
        except anyio.get_cancelled_exc_class():
            # The backend itself is being torn down without a shutdown() first.
            if attempt.cancel_reason is None:
                with anyio.CancelScope(shield=True):
                    await self._cancel_running(attempt, SHUTDOWN)
            raise
        finally:
            reporter.close()
            self._release(attempt)
        if self._idle is None and self._accepting:
            await self._dispatch()

    async def _record(self, attempt: _Attempt, status: TaskStatus, result: Any, error: str | None) -> None:
        """Store the outcome of an attempt that ran to its end (retried after a backoff while
        its budget lasts; never during shutdown)."""
        task = attempt.task
        finish = conclude(task, (status, result, error), self.settings, self._rng)
        if finish.kind == "retry" and not self._accepting:
            finish = msgspec.structs.replace(finish, kind="failed", reason="failed", dead_letter=task.max_retries > 0)
        try:
            done = await self.store.finish(task.session_key, task.id, attempt.number, finish)
        except (InvalidTransition, TaskNotFound):
            return  # cancelled or removed while it finished: the store already says so
        log_finish(logger, done, attempt.number, finish)
        if finish.kind == "retry":
            if finish.retry_delay_ms > 0:
                self._delay(done, self.clock.now_ms() + finish.retry_delay_ms)
            else:
                self._enqueue(done)  # launched by the dispatch that follows the attempt
        self._notify(attempt)

    # -- delayed tasks --------------------------------------------------------------

    def _delay(self, task: Task, due_ms: int) -> None:
        """Queue `task` at `due_ms` (the timer does)."""
        if self._timeline.add(task, due_ms):
            self._wake_timer()  # a new earliest

    def _undelay(self, task_id: str) -> None:
        if self._timeline.remove(task_id):
            self._wake_timer()  # it may have been the earliest

    def _wake_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    async def _wake_delayed(self) -> None:
        """The one timer of the delayed tasks: asleep until the earliest is due, then it
        queues every task that is due (launching checks each is still pending)."""
        while True:
            due_now = self._timeline.take_due(self.clock.now_ms())
            for task in due_now:
                if self._accepting and task.status is TaskStatus.PENDING:
                    try:
                        self.store.schedule(task.session_key, task.id, None)
                    except (InvalidTransition, TaskNotFound):
                        continue
                    self._enqueue(task)
            if due_now:
                await self._dispatch()
            with anyio.CancelScope() as self._timer:
                if (next_due := self._timeline.next_due()) is not None:
                    await self.clock.sleep(max(0, next_due - self.clock.now_ms()) / 1000)
                else:
                    await anyio.sleep_forever()
            self._timer = None

    # -- cancellation and bookkeeping ------------------------------------------------

    def _stop(self, attempt: _Attempt, reason: str) -> None:
        """Stop an attempt whose task the store already shows as cancelled."""
        attempt.cancel_reason = reason
        if attempt.reporter is not None:
            attempt.reporter.close()  # progress frozen from this moment
        attempt.scope.cancel()
        log_cancelled(logger, attempt.task, reason)
        self._notify(attempt)

    async def _cancel_running(self, attempt: _Attempt, reason: str) -> None:
        task = attempt.task
        try:
            await self.store.transition(
                task.session_key, task.id, TaskStatus.CANCELLED, expect=_RUNNING, attempt=attempt.number, reason=reason
            )
        except (InvalidTransition, TaskNotFound):
            pass
        self._stop(attempt, reason)

    async def _cancel_pending(self, task: Task, reason: str) -> None:
        try:
            await self.store.transition(task.session_key, task.id, TaskStatus.CANCELLED, expect=_PENDING, reason=reason)
        except (InvalidTransition, TaskNotFound):
            return
        logger.info(
            "Cancelled task %s for session %s before it ran (%s)", task.id, task.session_key, reason,
            extra=log_fields(task, reason=reason),
        )  # fmt: skip

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
        self._queue.ran_one(key)  # it runs one task fewer: an earlier turn
        if self._idle is not None and not self.running:
            self._idle.set()

    def _notify(self, attempt: _Attempt) -> None:
        if self.on_finish:
            duration = self.clock.monotonic() - attempt.started
            for hook in self.on_finish:
                hook(attempt.task, duration)

    # -- the admin view -------------------------------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        """This process: it runs every registered executor, with MAX_CONCURRENT_TASKS slots."""
        host = socket.gethostname()
        return [
            WorkerInfo(
                id=f"{host}:{os.getpid()}",
                host=host,
                pid=os.getpid(),
                executors=self.executors.names(),
                running=len(self.running),
                concurrency=self.settings.max_concurrent_tasks,
                started_at=_PROCESS_STARTED_MS,
            )
        ]

    async def load_by_executor(self) -> dict[str, ExecutionLoad]:
        """Counted from the running attempts and the queue (O(running + queued)); a task
        waiting for its time (a retry's backoff, a delayed start) counts as queued. This
        process runs every executor: one worker each."""
        loads = {name: ExecutionLoad(running=0, queued=0, workers=1) for name in self.executors.names()}
        for attempt in list(self.running.values()):
            loads.setdefault(attempt.task.executor, ExecutionLoad(running=0, queued=0, workers=0)).running += 1
        waiting = self._queue.tasks() + self._timeline.tasks()
        for task in waiting:
            loads.setdefault(task.executor, ExecutionLoad(running=0, queued=0, workers=0)).queued += 1
        return loads


#: When this process started, as far as the admin view tells (the module's import).
_PROCESS_STARTED_MS = int(time.time() * 1000)

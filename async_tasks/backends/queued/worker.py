"""A queued backend's worker: runs the attempts the store dispatches to it.

Built around its own SAQ queue, as `saq.Worker(queue, functions)` is: the store's scripts
or functions put a job (``<task id>:<attempt>:<n>``) in a worker's queue only when that
worker has a free slot and the concurrency limits allow, so the queue is never longer than
the worker's free slots and no job waits for a slot it cannot get. SAQ dequeues it and
calls `_job`, which starts the attempt with `claim` (a compare-and-set: the task is still
pending and still dispatched as this job), runs the executor in a cancel scope with the
task's timeout, and records the outcome with `finish` (another compare-and-set, fenced by
the attempt and this worker): an attempt that was cancelled, timed out, lost or taken over
elsewhere can never overwrite the task. The attempt policy (retry, backoff, dead letter)
is `async_tasks.execution.base`'s, shared with the memory backend.

- **Progress and log lines** go to the store, coalesced (`sink.py`): at most one write per
  task per `PROGRESS_WINDOW`, what is still held when the attempt ends stored with its
  outcome. A write the store refuses stops the attempt (`AttemptEnded`).
- **Cancel**: the API's step marks the task cancelled and publishes a stop message; the
  worker running the attempt stops it within milliseconds (`_stop_local`, called by the
  backend's listener). Each upkeep also checks the running attempts against the store (a
  stop message can be lost).
- **Lease**: the worker renews its lease every third of WORKER_LEASE_MS. A worker that
  could not renew it for a whole lease (partitioned, paused, the store away) stops its
  attempts itself: by then the reconciler may have given them to another worker.
- **Reconciler** (`reconciler.py` beside this module, one worker at a time): workers whose lease has expired
  lose their running attempts (failed with reason ``worker lost``, retried per budget) and
  their queued jobs go back to their sessions' lines; delayed tasks are delivered when due.
- **Delayed tasks** (a retry's backoff, a delayed start) are delivered at their time by
  every worker's timer (`_promote_when_due`), set to the earliest due time it knows of:
  from `promote`'s answer, from a retry it scheduled itself and from the store's message
  when a new task becomes the earliest (`_note_due`, called by the backend's listener).
  Should every timer miss it, the reconciler's pass delivers it.
- **Routing**: the worker runs the executors it was given (``--executors``, or every
  registered one); its description says which, and the store dispatches it tasks of those
  only.
- **Its own jobs**: a job the worker was given that SAQ lost (dequeued, then failed
  before our function ran) is found by the upkeep and delivered afresh.
- **Shutdown**: no new attempts; the running ones get most of the grace period, the rest
  are handed back (pending again at once, another worker runs them, the retry budget
  untouched); jobs queued here go back to their sessions' lines; the worker leaves the pool.

A backend's worker (`RedisWorker`, `PostgresWorker`) adds what is its own: its SAQ queue
(`_open_queue`), its lease (`_join`), the services that listen for stop messages
(`_start_services`, which also pass the store's due-time messages to `_note_due`) and how
it sees which jobs SAQ holds (`_missing_jobs`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final

import anyio
import anyio.abc
import msgspec

from async_tasks.backends.queued.reconciler import Reconciler
from async_tasks.backends.queued.sink import Coalescer, Flusher, Held
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.context import bind_task
from async_tasks.errors import InvalidTransition, StoreUnavailable, TaskNotFound
from async_tasks.execution.base import (
    conclude,
    executor_task,
    handed_back,
    log_cancelled,
    log_fields,
    log_finish,
    run_attempt,
)
from async_tasks.execution.deadlines import Deadlines
from async_tasks.executor import ExecutorRegistry, TaskExecutor
from async_tasks.faults import crash_point
from async_tasks.progress import ProgressReporter
from async_tasks.settings import BackendSettings
from async_tasks.task import Task, TaskStatus

if TYPE_CHECKING:
    from saq.queue.base import Queue
    from saq.types import Context

    from async_tasks.backends.queued.store import Availability, Dispatched, QueueStore
    from async_tasks.store.base import Finish

logger = logging.getLogger("async_tasks.execution")

#: The SAQ function every attempt job calls (the store's scripts and functions write its name).
FUNCTION: Final = "async_tasks.attempt"
#: Seconds: at most one progress write per task per window reaches the store.
PROGRESS_WINDOW: Final = 0.1
LEASE_LOST: Final = "lease lost"
#: Seconds a stopping worker tries to leave the pool (tasks queued on it go back to their lines).
LEAVE_TIMEOUT: Final = 2.0
#: Milliseconds before a worker's timer looks again at a delayed task that was not due yet
#: by the store's clock (behind this machine's).
DUE_RETRY_MS: Final = 5


class _Attempt:
    """What a worker knows about one attempt it runs."""

    __slots__ = ("finished", "number", "reporter", "scope", "sink", "started", "stop_reason", "task")

    def __init__(self, task: Task, number: int) -> None:
        self.task = task
        self.number = number
        self.reporter: ProgressReporter | None = None
        self.sink: Coalescer | None = None
        self.scope = anyio.CancelScope()
        #: Why the attempt was stopped from outside (cancelled, lease lost, shutdown); None while it runs on.
        self.stop_reason: str | None = None
        #: Set once the executor has returned: the outcome is being stored.
        self.finished = False
        self.started = 0.0


class QueuedWorker(ABC):
    """Runs attempts dispatched to it, up to `slots` at once. See the module docstring."""

    #: What its log lines call the store ("Redis", "PostgreSQL").
    store_name: ClassVar[str]
    #: Seconds a stopping worker waits for SAQ's worker to stop dequeuing (inf: as long as it takes).
    saq_stop_timeout: ClassVar[float] = math.inf
    #: Seconds an idle SAQ dequeue waits for its queue's wake-up before it looks again (0: for ever).
    dequeue_timeout: ClassVar[float] = 0.0
    store: QueueStore

    def __init__(
        self,
        store: QueueStore,
        executors: ExecutorRegistry,
        settings: BackendSettings,
        *,
        slots: int,
        clock: Clock = SYSTEM_CLOCK,
        rng: Callable[[], float] = random.random,
        progress_window: float = PROGRESS_WINDOW,
    ) -> None:
        self.executors = executors
        self.settings = settings
        self.slots = slots
        self.clock = clock
        self._rng = rng
        self.progress_window = progress_window
        self.lease_ms = settings.worker_lease_ms
        #: The last part of its id, unique: a backend names its own SAQ queue with it.
        self.suffix = uuid.uuid4().hex[:8]
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{self.suffix}"
        self.availability = self._availability(f"Worker {self.worker_id}")
        #: The earliest due time of a delayed task this worker knows of (epoch ms), and what
        #: wakes its timer when an earlier one is learnt.
        self._next_due: int | None = None
        self._due_changed = anyio.Event()
        #: The store through a client that waits out a restart of the store (requests use
        #: one that fails fast): the same data, event hub and settings.
        self.store = self._patient_store(store)
        self.reconciler = Reconciler(self.store, settings, self.worker_id, rng=rng, on_due=self._reconciled)
        self.on_finish: list[Callable[[Task, float], None]] = []
        self.running: dict[str, _Attempt] = {}
        self._claiming: set[str] = set()
        self._accepting = True
        self._tg: anyio.abc.TaskGroup | None = None
        self._queue: Queue | None = None
        self._saq: Any = None
        self._flusher: Flusher | None = None
        self._idle: anyio.Event | None = None
        self._threads: set[_Attempt] = set()
        #: The running attempts' deadlines, kept by one task instead of a timer each.
        self._deadlines = Deadlines()
        self._renewed = 0.0
        #: Jobs of this worker that looked lost at the last upkeep (lost if they still do).
        self._missing: set[str] = set()
        self.started_at = 0

    # -- what each backend brings -----------------------------------------------------

    @abstractmethod
    def _availability(self, what: str) -> Availability:
        """The backend's one-line reporter of the store going away and coming back."""

    @abstractmethod
    def _patient_store(self, store: Any) -> Any:
        """`store` through a client that waits out a restart (uses `self.availability`)."""

    @abstractmethod
    async def _open_queue(self) -> Queue:
        """The worker's own SAQ queue, connected (the schema migrated first, if any)."""

    @abstractmethod
    async def _join(self, *, retiring: bool) -> None:
        """Renew the lease (see the store's `join`)."""

    @abstractmethod
    async def _start_services(self, tg: anyio.abc.TaskGroup) -> None:
        """Start what listens for stop messages (and anything else the backend runs)."""

    @abstractmethod
    async def _missing_jobs(self, pending: Sequence[Dispatched]) -> set[str]:
        """The job keys of `pending` (dispatched here, not started) that SAQ does not hold."""

    # -- delayed tasks ------------------------------------------------------------

    def _note_due(self, due_ms: int | None) -> None:
        """A delayed task is due at `due_ms`: wake the timer if that is earlier than what it waits for."""
        if due_ms is not None and (self._next_due is None or due_ms < self._next_due):
            self._next_due = due_ms
            self._due_changed.set()

    def _reconciled(self, following: int | None) -> None:
        """The reconciler's pass delivered what was due; `following` is the next due time."""
        self._note_due(following)

    async def _promote_when_due(self) -> None:
        """Deliver the delayed tasks at their time: sleep until the earliest due time known,
        then `promote` (which tells the next one)."""
        while True:
            due = self._next_due
            wait = math.inf if due is None else max(0.0, (due - self.clock.now_ms()) / 1000)
            with anyio.move_on_after(wait):
                await self._due_changed.wait()
                self._due_changed = anyio.Event()
                continue
            self._next_due = None
            try:
                following = await self.store.promote()
            except Exception as exc:
                logger.debug("Could not deliver the delayed tasks due now (the reconciler will): %s", exc)
                following = None
            if following is not None and due is not None and following <= due:
                # Nothing was due yet by the store's clock (behind this machine's): look again soon.
                following = max(following, self.clock.now_ms() + DUE_RETRY_MS)
            self._note_due(following)

    @property
    def description(self) -> bytes:
        """What the worker says of itself (its lease holds it): host, pid, slots, executors."""
        return msgspec.json.encode(self._about())

    def _about(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slots": self.slots,
            "executors": self.executors.names(),
        }

    def running_tasks(self) -> list[Task]:
        for _ in range(5):
            try:
                return [attempt.task for attempt in list(self.running.values())]
            except RuntimeError:  # changed size while the loop thread updated it
                continue
        return []

    # -- lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join the pool and serve until cancelled (``await tg.start(worker.run)``)."""
        from saq import Worker

        self._accepting = True
        self._idle = None
        self.started_at = self.clock.now_ms()
        self._queue = queue = await self._open_queue()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._flusher = Flusher(self.store, self.progress_window)
                await self._renew()
                saq = Worker(
                    queue,
                    functions=[(FUNCTION, self._job)],
                    concurrency=self.slots,
                    dequeue_timeout=self.dequeue_timeout,
                    # Scheduling, sweeps and aborts are ours (the store's steps, the
                    # reconciler and the stop channel): SAQ only dequeues.
                    timers={"schedule": 86_400, "sweep": 86_400, "abort": 86_400, "worker_info": 86_400},
                    id=self.worker_id,
                )
                saq.SIGNALS = []  # the process's own handlers stay (see async_tasks.worker)
                self._saq = saq
                tg.start_soon(self._flusher.run)
                tg.start_soon(self._deadlines.watch)
                tg.start_soon(self._upkeep)
                await self._start_services(tg)
                self._next_due = 0  # look at once
                tg.start_soon(self._promote_when_due)
                tg.start_soon(self.reconciler.run)
                tg.start_soon(saq.start)
                logger.info(
                    "Worker %s running up to %d attempts (%s)",
                    self.worker_id, self.slots, ", ".join(self.executors.names()),
                )  # fmt: skip
                task_status.started()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self._stop_dequeuing()
                await self._leave()
                await self._quietly(queue.disconnect())
                self._queue = None
                await self._quietly(self.store.aclose())

    async def shutdown(self, grace: float) -> list[Task]:
        """Take no new attempts, wait up to `grace` for the running ones, hand the rest back
        to their sessions' lines; returns those that did not stop."""
        self._accepting = False
        deadline = anyio.current_time() + grace
        try:
            await self._renew()  # out of the pool: nothing more is dispatched here
        except Exception as exc:
            self.availability.failed(exc)
        # No more dequeuing: the attempts running here go on in our own task group.
        await self._stop_dequeuing()
        if self.running:
            self._idle = anyio.Event()
            with anyio.move_on_after(grace):
                await self._idle.wait()
        for attempt in list(self.running.values()):
            if attempt.stop_reason is None:
                await self._hand_back(attempt)
        if self.running:
            self._idle = anyio.Event()
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time()) + 0.5):
                await self._idle.wait()
        # Worker threads cannot signal an event loop that is shutting down: poll them.
        while self._threads and anyio.current_time() < deadline:  # noqa: ASYNC110
            await anyio.sleep(0.02)
        await self._leave()
        abandoned = [attempt.task for attempt in self.running.values()]
        for task in abandoned:
            logger.warning(
                "Abandoned task %s for session %s: it did not stop within the grace period",
                task.id, task.session_key, extra=log_fields(task, reason="shutdown"),
            )  # fmt: skip
        return abandoned

    async def _stop_dequeuing(self) -> None:
        """Stop the SAQ worker: it takes no more jobs (those it holds are ours to hand back)."""
        saq, self._saq = self._saq, None
        if saq is None:
            return
        try:
            # Bounded where the backend says so: SAQ's stop waits for its dequeuing tasks to
            # finish cancelling, and one stuck in a dequeue (a connection it waits for) would
            # hold the shutdown forever; what it holds is handed back all the same.
            with anyio.move_on_after(self.saq_stop_timeout) as waited:
                saq.event.set()
                await saq.stop()
            if waited.cancelled_caught:
                logger.warning("The SAQ worker did not stop within %.0f s; going on", self.saq_stop_timeout)
        except Exception:
            logger.warning("The SAQ worker did not stop cleanly", exc_info=True)

    async def _leave(self) -> None:
        """Leave the pool: tasks queued here and not started go back to their sessions'
        lines, the lease and the queue go (a worker killed instead is the reconciler's)."""
        if self._left:
            return
        try:
            # Bounded: with the store away, a stopping worker leaves it to the reconciler.
            with anyio.fail_after(LEAVE_TIMEOUT):
                await self.store.retire(self.worker_id)
                for item in await self.store.dispatched_to(self.worker_id):
                    if item.status == TaskStatus.PENDING.value:
                        await self.store.redeliver(item.session_key, item.task_id, item.job_key)
                if await self.store.forget_worker(self.worker_id, leaving=True) == 1:
                    self._left = True
        except Exception as exc:
            logger.warning(
                "Worker %s could not leave the pool cleanly (%s): the reconciler will",
                self.worker_id, str(exc) or type(exc).__name__,
            )  # fmt: skip

    _left = False

    # -- upkeep ---------------------------------------------------------------------

    async def _renew(self) -> None:
        await self._join(retiring=not self._accepting)
        self._renewed = time.monotonic()

    async def _upkeep(self) -> None:
        """Keep the lease; stop every attempt once it could not be kept for a whole lease;
        check the running attempts against the store and this worker's jobs against SAQ."""
        interval = self.lease_ms / 3000
        while True:
            await anyio.sleep(interval)
            try:
                with anyio.fail_after(interval * 2):
                    await self._renew()
                    await self._check_attempts()
                    await self._check_jobs()
            except Exception as exc:
                self.availability.failed(exc)
            if time.monotonic() - self._renewed > self.lease_ms / 1000:
                for attempt in list(self.running.values()):
                    self._stop_local(attempt.task.id, attempt.number, LEASE_LOST)

    async def _check_attempts(self) -> None:
        """Stop the attempts the store no longer has running here (a stop message can be lost)."""
        attempts = [a for a in list(self.running.values()) if a.stop_reason is None and not a.finished]
        if not attempts:
            return
        states = await self.store.running_states([a.task.id for a in attempts])
        for attempt, (status, number) in zip(attempts, states, strict=True):
            if status != TaskStatus.RUNNING.value or number != attempt.number:
                self._stop_local(attempt.task.id, attempt.number, "no longer running in the store")

    async def _check_jobs(self) -> None:
        """Deliver afresh the tasks dispatched here whose job SAQ no longer holds (it failed
        before our function ran): seen so at two upkeeps in a row, not being started."""
        pending = [
            item
            for item in await self.store.dispatched_to(self.worker_id)
            if item.status == TaskStatus.PENDING.value and item.task_id not in self._claiming
        ]
        missing = await self._missing_jobs(pending)
        for item in pending:
            if item.job_key in missing and item.job_key in self._missing:
                logger.warning("Task %s: its job %s was lost on this worker; delivering it again", item.task_id,
                               item.job_key)  # fmt: skip
                await self.store.redeliver(item.session_key, item.task_id, item.job_key)
        self._missing = missing

    # -- one attempt ----------------------------------------------------------------

    async def _job(self, ctx: Context, *, s: str, t: str, a: int, k: str) -> None:
        """The SAQ function: run attempt `a` of task `t` of session `s`, dispatched as job `k`."""
        tg = self._tg
        if not self._accepting or tg is None:
            # Shutting down: hold the job; leaving the pool delivers its task afresh.
            await anyio.sleep_forever()
            return
        done = anyio.Event()
        tg.start_soon(self._attempt, s, t, a, k, done, name=t)
        # The attempt runs in our task group, not in SAQ's job task: SAQ's worker stopping
        # (shutdown) ends this wait only. It ends when the executor is done.
        await done.wait()

    async def _attempt(self, session_key: str, task_id: str, number: int, job_key: str, done: anyio.Event) -> None:
        self._claiming.add(task_id)
        try:
            crash_point("attempt.dequeued")
            try:
                task = await self.store.claim(session_key, task_id, number, self.worker_id, job_key)
            except (InvalidTransition, TaskNotFound):
                return  # cancelled, delivered afresh elsewhere, or already run: nothing to do
            crash_point("attempt.claimed")
            self._claiming.discard(task_id)
            await self._run_attempt(task, done)
        except Exception as exc:
            # Never into the task group: one attempt's trouble must not stop the worker.
            if isinstance(exc, StoreUnavailable):
                self.availability.failed(exc)
            else:
                logger.exception("Attempt %s of task %s could not run", number, task_id)
        finally:
            self._claiming.discard(task_id)
            done.set()

    async def _run_attempt(self, task: Task, ran: anyio.Event) -> None:
        """Run the attempt; set `ran` once the executor is done."""
        executor = self.executors.get(task.executor)
        attempt = _Attempt(task, task.attempts)
        assert self._flusher is not None
        sink = Coalescer(self._flusher, task, attempt.number, self.settings.task_log_lines)
        attempt.sink = sink
        attempt.reporter = reporter = ProgressReporter(
            sink,
            type(executor).steps if executor is not None else (),
            log_sink=sink.log,
            line_bytes=self.settings.task_log_line_bytes,
            now_ms=self.clock.now_ms,
        )
        self.running[task.id] = attempt
        attempt.started = self.clock.monotonic()
        bind_task(task.id, task.session_key, task.executor, task.request_id)
        logger.info("Starting execution of task %s for session %s", task.id, task.session_key)
        timeout_ms = task.timeout_ms or self.settings.default_task_timeout_ms
        try:
            outcome = await run_attempt(
                executor, task, reporter,
                scope=attempt.scope, timeout_ms=timeout_ms, max_result_bytes=self.settings.max_result_bytes,
                threads=self._threads, attempt=attempt, deadlines=self._deadlines,
                missing=f"executor {task.executor!r} is not registered on this worker",
                stopped=lambda: attempt.stop_reason is not None,
                prepare=lambda executor: self._with_params(attempt, executor),
            )  # fmt: skip
            attempt.finished = True
            ran.set()
            if attempt.stop_reason is None and outcome is not None:
                crash_point("attempt.before_finish")
                await self._record(attempt, conclude(task, outcome, self.settings, self._rng), sink.take())
                crash_point("attempt.finished")
        except anyio.get_cancelled_exc_class():
            # The worker itself is torn down without a shutdown() first.
            if attempt.stop_reason is None:
                with anyio.CancelScope(shield=True):
                    await self._hand_back(attempt)
            raise
        finally:
            reporter.close()
            sink.closed = True
            self._release(attempt)

    def _with_params(self, attempt: _Attempt, executor: TaskExecutor[Any, Any]) -> Task:
        """The attempt's task as the executor takes it (the store keeps encoded JSON)."""
        attempt.task = executor_task(attempt.task, executor)
        return attempt.task

    async def _record(self, attempt: _Attempt, finish: Finish, held: Held) -> None:
        """Store how an attempt that ran to its end came out (with its last held-back report
        and log lines)."""
        task = attempt.task
        try:
            done = await self.store.finish(
                task.session_key, task.id, attempt.number, finish, owner=self.worker_id,
                report=held.report, lines=held.lines, skipped=held.skipped,
            )  # fmt: skip
        except (InvalidTransition, TaskNotFound):
            return  # cancelled, lost or removed while it finished: the store already says so
        except StoreUnavailable as exc:
            self.availability.failed(exc)
            logger.error("Could not store the outcome of task %s: the task store is unreachable", task.id)
            return
        log_finish(logger, done, attempt.number, finish)
        if done.scheduled_at is not None:
            self._note_due(done.scheduled_at)
        self._notify(attempt)

    async def _hand_back(self, attempt: _Attempt) -> None:
        """Stop an attempt this worker cannot finish (shutdown): it runs again elsewhere,
        without using its retry budget."""
        task = attempt.task
        attempt.stop_reason = "worker shutdown"
        if attempt.reporter is not None:
            attempt.reporter.close()
        attempt.scope.cancel()
        finish = handed_back()
        crash_point("handback.before")
        try:
            done = await self.store.finish(task.session_key, task.id, attempt.number, finish, owner=self.worker_id)
        except (InvalidTransition, TaskNotFound):
            return
        except Exception:
            logger.exception("Could not hand task %s back to the queue", task.id)
            return
        log_finish(logger, done, attempt.number, finish)

    # -- bookkeeping --------------------------------------------------------------

    def _stop_local(self, task_id: str, number: int, reason: str) -> None:
        attempt = self.running.get(task_id)
        if attempt is None or attempt.number != number or attempt.stop_reason is not None or attempt.finished:
            return
        attempt.stop_reason = reason
        if attempt.reporter is not None:
            attempt.reporter.close()  # progress frozen from this moment
        attempt.scope.cancel()
        log_cancelled(logger, attempt.task, reason)
        self._notify(attempt)

    def _release(self, attempt: _Attempt) -> None:
        if self.running.get(attempt.task.id) is attempt:
            del self.running[attempt.task.id]
        if self._idle is not None and not self.running:
            self._idle.set()

    def _notify(self, attempt: _Attempt) -> None:
        if self.on_finish:
            duration = self.clock.monotonic() - attempt.started
            for hook in self.on_finish:
                hook(attempt.task, duration)

    async def _quietly(self, closing: Awaitable[Any]) -> None:
        """Close a connection; a store that is already gone is not an error here."""
        try:
            await closing
        except Exception as exc:
            logger.debug("Closing a %s connection failed: %s", self.store_name, exc)

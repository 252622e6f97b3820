"""The PostgreSQL backend's worker: runs the attempts the store dispatches to it.

Built around its own SAQ Postgres queue, as `saq.Worker(queue, functions)` is: the store's
functions insert a job (``<task id>:<attempt>:<n>``) in a worker's queue only when that
worker has a free slot and the concurrency limits allow (see `store.py`), so the queue is
never longer than the worker's free slots and no job waits for a slot it cannot get. SAQ
dequeues it (woken by the NOTIFY the same transaction sent) and calls `_job`, which
starts the attempt with `claim` (a compare-and-set: the task is still pending and still
dispatched as this job), runs the executor in a cancel scope with the task's timeout, and
records the outcome with `finish` (another compare-and-set, fenced by the attempt and this
worker): an attempt that was cancelled, timed out, lost or taken over elsewhere can never
overwrite the task. The attempt policy (retry, backoff, dead letter) is
`async_tasks.execution.base`'s, shared with the memory backend.

- **Progress and log lines** go to the store, coalesced: at most one write per task per
  `PROGRESS_WINDOW` (the latest report wins; the lines written meanwhile go together, at
  most TASK_LOG_LINES of them), what is still held when the attempt ends stored with its
  outcome. A write the store refuses stops the attempt (`AttemptEnded`).
- **Cancel**: the API's transaction marks the task cancelled and NOTIFYs
  ``<schema>_stop``; the worker running the attempt stops it within milliseconds. Each upkeep also checks the
  running attempts against the store (a stop message can be lost).
- **Lease**: the worker renews its row of ``workers`` every third of WORKER_LEASE_MS. A
  worker that could not renew it for a whole lease (partitioned, paused, PostgreSQL away) stops its attempts
  itself: by then the reconciler may have given them to another worker.
- **Reconciler** (`reconciler.py`, one worker at a time): workers whose lease has expired
  lose their running attempts (failed with reason ``worker lost``, retried per budget) and
  their queued jobs go back to their sessions' lines; delayed tasks are delivered when due.
- **Its own jobs**: a job the worker was given that SAQ lost (dequeued, then failed
  before our function ran) is found by the upkeep and delivered afresh; a job still
  queued at two upkeeps in a row (its NOTIFY was lost while SAQ's listening connection
  reconnected) makes the upkeep wake SAQ again.
- **Shutdown**: no new attempts; the running ones get most of the grace period, the rest
  are handed back (pending again at once, another worker runs them, the retry budget
  untouched); jobs queued here go back to their sessions' lines; the worker leaves the pool.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import anyio
import anyio.abc
import msgspec

from async_tasks.backends.postgres.connection import Availability, Listener, connection_kwargs, reachable
from async_tasks.backends.postgres.reconciler import Reconciler
from async_tasks.backends.postgres.schema import migrate, saq_lock_keyspace, stop_channel
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.context import bind_task
from async_tasks.errors import InvalidTransition, StoreUnavailable, TaskNotFound
from async_tasks.execution.base import conclude, executor_task, handed_back, log_fields, log_finish, run_attempt
from async_tasks.executor import ExecutorRegistry, TaskExecutor
from async_tasks.faults import crash_point
from async_tasks.progress import ProgressReporter
from async_tasks.settings import BackendSettings
from async_tasks.task import Task, TaskStatus
from async_tasks.task_log import LogLine

if TYPE_CHECKING:
    from saq.queue.postgres import PostgresQueue
    from saq.types import Context

    from async_tasks.backends.postgres.store import PostgresTaskStore
    from async_tasks.store.base import Finish, Report

logger = logging.getLogger("async_tasks.execution")

#: The SAQ function every attempt job calls (the store's scripts write its name).
FUNCTION: Final = "async_tasks.attempt"
#: Seconds: at most one progress write per task per window reaches PostgreSQL.
PROGRESS_WINDOW: Final = 0.1
LEASE_LOST: Final = "lease lost"
#: Seconds a stopping worker waits for SAQ's worker to stop dequeuing.
SAQ_STOP_TIMEOUT: Final = 3.0
#: Seconds a stopping worker tries to leave the pool (tasks queued on it go back to their lines).
LEAVE_TIMEOUT: Final = 2.0
#: Seconds an idle dequeue waits for SAQ's NOTIFY before it looks at the queue's table again.
#: SAQ starts LISTENing only once its first look found nothing: a job queued in between is
#: announced to nobody, and without this it waited for the next job queued there.
DEQUEUE_TIMEOUT: Final = 1.0


class _Attempt:
    """What a worker knows about one attempt it runs."""

    __slots__ = ("finished", "number", "reporter", "scope", "sink", "started", "stop_reason", "task")

    def __init__(self, task: Task, number: int) -> None:
        self.task = task
        self.number = number
        self.reporter: ProgressReporter | None = None
        self.sink: _Coalescer | None = None
        self.scope = anyio.CancelScope()
        #: Why the attempt was stopped from outside (cancelled, lease lost, shutdown); None while it runs on.
        self.stop_reason: str | None = None
        #: Set once the executor has returned: the outcome is being stored.
        self.finished = False
        self.started = 0.0


def _merge(earlier: Report | None, later: Report) -> Report:
    """Two reports as one, as the store would apply them one after the other."""
    percent, step, description = later
    if earlier is None or step is not None:
        return later
    return percent, earlier[1], description if description is not None else earlier[2]


class Held(NamedTuple):
    """What an attempt's sink holds back: its latest progress report, and the log lines
    written since the last write (`skipped`: older ones it dropped, beyond the task's bound)."""

    report: Report | None = None
    lines: Sequence[LogLine] = ()
    skipped: int = 0


class _Coalescer:
    """The progress and log sink of one attempt: at most one store write per window (the
    first a window after the start) carrying the latest report (latest wins) and the lines
    written meanwhile (at most the task's bound of them: older ones are dropped and
    counted, as the store would); what is still held when the attempt ends is stored with
    its outcome. Once the store refuses a write, every later report and line is refused.
    The writes themselves are made by `_Flusher`."""

    __slots__ = ("_flusher", "_lines", "_pending", "_skipped", "closed", "due", "key", "last", "max_lines", "refused")

    def __init__(self, flusher: _Flusher, task: Task, number: int, max_lines: int) -> None:
        self._flusher = flusher
        self.key = (task.session_key, task.id, number)
        self.last = time.monotonic()
        self._pending: Report | None = None
        self._lines: list[LogLine] = []
        self._skipped = 0
        self.max_lines = max_lines
        self.due = 0.0
        self.refused = False
        self.closed = False

    def _hold(self) -> None:
        if self._pending is None and not self._lines and not self._skipped:
            self.due = self.last + self._flusher.window
            self._flusher.hold(self)

    async def __call__(self, percent: float, step: str | None, description: str | None) -> bool:
        if self.refused:
            return False
        self._hold()
        self._pending = _merge(self._pending, (percent, step, description))
        return True

    async def log(self, line: LogLine) -> bool:
        if self.refused:
            return False
        self._hold()
        self._lines.append(line)
        if len(self._lines) > self.max_lines:  # a flood: the store would drop them anyway
            del self._lines[0]
            self._skipped += 1
        return True

    def pop(self) -> Held:
        held = Held(self._pending, self._lines, self._skipped)
        self._pending, self._lines, self._skipped = None, [], 0
        return held

    def take(self) -> Held:
        """End the sink; what it still holds back, to be stored with the outcome."""
        self.closed = True
        held = self.pop()
        return Held() if self.refused else held


class _Flusher:
    """Writes the held-back reports of every attempt of a worker when their window ends
    (one task for all of them, not one per attempt)."""

    def __init__(self, store: PostgresTaskStore, window: float) -> None:
        self.store = store
        self.window = window
        self._held: dict[_Coalescer, None] = {}
        self._wakeup = anyio.Event()

    def hold(self, sink: _Coalescer) -> None:
        self._held[sink] = None
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            while self._held:
                now = time.monotonic()
                due = [sink for sink in self._held if sink.due <= now]
                if not due:
                    with anyio.move_on_after(min(sink.due for sink in self._held) - now):
                        await self._wakeup.wait()
                        self._wakeup = anyio.Event()
                    continue
                for sink in due:
                    del self._held[sink]
                    await self._write(sink)

    async def _write(self, sink: _Coalescer) -> None:
        held = sink.pop()
        if (held.report is None and not held.lines and not held.skipped) or sink.closed or sink.refused:
            return
        sink.last = time.monotonic()
        try:
            sink.refused = not await self.store.report(*sink.key, held.report, held.lines, skipped=held.skipped)
        except StoreUnavailable:
            pass  # said once by the store's availability; the next report tries again
        except Exception:
            logger.exception("Could not store the progress of task %s", sink.key[1])


class PostgresWorker:
    """Runs attempts dispatched to it, up to `slots` at once. See the module docstring."""

    def __init__(
        self,
        store: PostgresTaskStore,
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
        self.url = store.db.url
        self.slots = slots
        self.clock = clock
        self._rng = rng
        self.progress_window = progress_window
        self.lease_ms = settings.worker_lease_ms
        suffix = uuid.uuid4().hex[:8]
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{suffix}"
        #: The name of its own SAQ queue (``saq:<queue>`` is a channel: at most 63 bytes).
        self.queue_name = f"{store.schema}.{suffix}"
        self.availability = Availability(f"Worker {self.worker_id}")
        #: The store through a pool that waits out a PostgreSQL restart (requests use one
        #: that fails fast); the same schema, event hub and settings.
        self.store = store.sibling(store.db.sibling(patient=True, availability=self.availability))
        self.reconciler = Reconciler(self.store, settings, self.worker_id, rng=rng)
        self.on_finish: list[Callable[[Task, float], None]] = []
        self.running: dict[str, _Attempt] = {}
        self._claiming: set[str] = set()
        self._accepting = True
        self._tg: anyio.abc.TaskGroup | None = None
        self._queue: PostgresQueue | None = None
        self._saq: Any = None
        self._flusher: _Flusher | None = None
        self._idle: anyio.Event | None = None
        self._threads: set[_Attempt] = set()
        self._stops = Listener(
            self.url, store.schema, [stop_channel(store.schema)], self._stop_message,
            availability=self.availability, timeout_ms=settings.postgres_timeout_ms,
        )  # fmt: skip
        self._renewed = 0.0
        #: Jobs of this worker that looked lost at the last upkeep (lost if they still do),
        #: and those still queued then (SAQ is woken if they still are).
        self._missing: set[str] = set()
        self._waiting: set[str] = set()

    @property
    def description(self) -> bytes:
        """What the worker says of itself (its lease holds it): host, pid, slots, executors."""
        return msgspec.json.encode(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "slots": self.slots,
                "executors": self.executors.names(),
            }
        )

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
        from psycopg_pool import AsyncConnectionPool
        from saq import Worker
        from saq.queue.postgres import PostgresQueue

        self._accepting = True
        self._idle = None
        schema = self.store.schema
        timeout_ms = self.settings.postgres_timeout_ms
        with reachable(self.availability):
            await migrate(self.url, schema, timeout_ms)
        # SAQ's own pool: its listening connection, its dequeues and its job updates.
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url, kwargs=connection_kwargs(schema, timeout_ms), min_size=1, max_size=min(self.slots + 2, 10),
            open=False, check=AsyncConnectionPool.check_connection, name=f"saq {self.queue_name}",
        )  # fmt: skip
        self._queue = PostgresQueue(
            pool,
            name=self.queue_name,
            saq_lock_keyspace=saq_lock_keyspace(schema),
            min_size=1,
            max_size=min(self.slots + 2, 10),
            manage_pool_lifecycle=True,
        )
        await self._queue.connect()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                self._flusher = _Flusher(self.store, self.progress_window)
                await self._renew()
                saq = Worker(
                    self._queue,
                    functions=[(FUNCTION, self._job)],
                    concurrency=self.slots,
                    dequeue_timeout=DEQUEUE_TIMEOUT,
                    # Scheduling, sweeps and aborts are ours (the store's functions, the
                    # reconciler and the stop channel): SAQ only dequeues.
                    timers={"schedule": 86_400, "sweep": 86_400, "abort": 86_400, "worker_info": 86_400},
                    id=self.worker_id,
                )
                saq.SIGNALS = []  # the process's own handlers stay (see async_tasks.worker)
                self._saq = saq
                tg.start_soon(self._flusher.run)
                tg.start_soon(self._upkeep)
                await tg.start(self._stops.run)
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
                await _quietly(self._queue.disconnect())
                self._queue = None
                await _quietly(self.store.aclose())

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
            # Bounded: SAQ's stop waits for its dequeuing tasks to finish cancelling, and one
            # stuck in its Postgres queue's dequeue (a connection it waits for) would hold the
            # shutdown forever; what it holds is handed back below all the same.
            with anyio.move_on_after(SAQ_STOP_TIMEOUT) as waited:
                saq.event.set()
                await saq.stop()
            if waited.cancelled_caught:
                logger.warning("The SAQ worker did not stop within %.0f s; going on", SAQ_STOP_TIMEOUT)
        except Exception:
            logger.warning("The SAQ worker did not stop cleanly", exc_info=True)

    async def _leave(self) -> None:
        """Leave the pool: tasks queued here and not started go back to their sessions'
        lines, the lease and the queue go (a worker killed instead is the reconciler's)."""
        if self._left:
            return
        try:
            # Bounded: with PostgreSQL away, a stopping worker leaves it to the reconciler.
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
        await self.store.join(
            self.worker_id, self.queue_name, self.slots, self.lease_ms, self.description, retiring=not self._accepting
        )
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
        before our function ran), seen so at two upkeeps in a row, not being started; wake
        SAQ when a job is still queued at two upkeeps in a row (its NOTIFY was lost)."""
        pending = [
            item
            for item in await self.store.dispatched_to(self.worker_id)
            if item.status == TaskStatus.PENDING.value and item.task_id not in self._claiming
        ]
        if not pending:
            self._missing = set()
            self._waiting = set()
            return
        jobs = await self.store.queued_jobs(self.queue_name)
        missing = {item.job_key for item in pending if item.job_key not in jobs}
        for item in pending:
            if item.job_key in missing and item.job_key in self._missing:
                logger.warning("Task %s: its job %s was lost on this worker; delivering it again", item.task_id,
                               item.job_key)  # fmt: skip
                await self.store.redeliver(item.session_key, item.task_id, item.job_key)
        waiting = {key for key, status in jobs.items() if status == "queued"}
        if waiting & self._waiting:
            await self.store.db.call("SELECT pg_notify(%s, 'saq:enqueue')", ("saq:" + self.queue_name,))
        self._missing = missing
        self._waiting = waiting

    def _stop_message(self, channel: str, payload: str) -> None:
        """``<task id>:<attempt>``: a running attempt was cancelled."""
        task_id, _, number = payload.rpartition(":")
        if number.isdigit():
            self._stop_local(task_id, int(number), "cancelled")

    # -- one attempt ----------------------------------------------------------------

    async def _job(self, ctx: Context, *, s: str, t: str, a: int, k: str) -> None:
        """The SAQ function: run attempt `a` of task `t` of session `s`, dispatched as job `k`."""
        tg = self._tg
        if not self._accepting or tg is None:
            # Shutting down: hold the job; leaving the pool delivers its task afresh.
            await anyio.sleep_forever()
            return
        done = anyio.Event()
        tg.start_soon(self._attempt, s, t, a, k, done, name=f"task {t}")
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
        sink = _Coalescer(self._flusher, task, attempt.number, self.settings.task_log_lines)
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
                threads=self._threads, attempt=attempt,
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
        if done.scheduled_at is not None and self._tg is not None:
            self._tg.start_soon(self._promote_at, done.scheduled_at)
        self._notify(attempt)

    async def _promote_at(self, due_ms: int) -> None:
        """Deliver a retry when its backoff ends (the reconciler would, up to a tick later)."""
        await anyio.sleep(max(0.0, (due_ms - self.clock.now_ms()) / 1000))
        try:
            await self.store.promote()
        except Exception as exc:
            logger.debug("Could not deliver the retries due now (the reconciler will): %s", exc)

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
        task = attempt.task
        logger.info(
            "Cancelled execution of task %s for session %s (%s)", task.id, task.session_key, reason,
            extra=log_fields(task, reason=reason),
        )  # fmt: skip
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


async def _quietly(closing: Awaitable[Any]) -> None:
    """Close a connection; a PostgreSQL that is already gone is not an error here."""
    try:
        await closing
    except Exception as exc:
        logger.debug("Closing a PostgreSQL connection failed: %s", exc)

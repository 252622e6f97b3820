"""Runs tasks on SAQ workers: any number of processes, on any number of machines.

The Redis task store (`async_tasks.store.redis`) is the authority on status and
progress; SAQ only delivers attempts. `submit` enqueues one SAQ job per attempt,
keyed ``<task id>:<attempt>`` (a second submit of the same attempt is a no-op). A
worker that dequeues it starts the attempt with a compare-and-set (pending, still on
the previous attempt, the concurrency limits not reached → running, owned by this
worker), runs the executor in a cancel scope with the task's timeout, and stores the
outcome with another compare-and-set: an attempt that was cancelled, timed out or
taken over elsewhere can never overwrite the task. So SAQ may deliver a job twice (it
does, rarely: tobymao/saq#277) and still at most one attempt runs to its end.

- **Progress** goes to the store, coalesced in the worker: at most one write per task
  per `PROGRESS_WINDOW` (latest wins), the report still held when the attempt ends
  stored with its outcome (transitions are never coalesced). A report the store
  refuses stops the attempt (`AttemptEnded`). Never through SAQ's `job.update`.
- **Cancel**: the API's store transition first (the task is cancelled at once and
  refuses later reports), then a message on ``P stop`` that the worker running the
  attempt gets in milliseconds; a job still queued is taken out of SAQ's queue.
- **Leases**: each worker keeps a key ``P wk:<worker id>`` alive every third of
  WORKER_LEASE_MS and checks its attempts against the store (a missed stop message is
  caught there). A reconciler (one worker at a time, every third of the lease, at
  most every second) finds running tasks whose worker's lease has expired: the
  attempt is failed with reason ``worker lost`` and runs again per the retry budget.
  SAQ's own job heartbeats stay off: its sweep can mistake a just-dequeued job for a
  dead one (saq#277) and kill a healthy task.
- **Retries** after a failure are SAQ jobs scheduled after the backoff delay; the
  worker that schedules one also queues it at its time (SAQ's scheduler only looks
  once a second, and does it if that worker is gone).
- **Limits**: MAX_CONCURRENT_TASKS and MAX_CONCURRENT_TASKS_PER_SESSION hold across
  every worker (checked by the start's compare-and-set; a task over a limit goes back
  to the queue with a growing delay). Each worker runs at most WORKER_CONCURRENCY.
- **Fair share** (an approximation of the in-process rule): while other sessions have
  pending tasks, a session starts a task only while it runs fewer than the free slots
  (the live workers' concurrency, at most MAX_CONCURRENT_TASKS, minus what runs); its
  jobs over that go back to the queue, so a freed slot goes to a waiting session, not
  to the next job of the session holding the most. A session alone uses every slot.
- **Order**: the queue is first come, first served; priority orders a session's own
  tasks only (a task with priority above 0 takes the place of its session's first
  queued job of lower priority, within the last `PRIORITY_SCAN` queued jobs).
- **Shutdown** of a worker: it takes no new attempts, waits up to the grace period for
  its running ones, then hands the rest back to the queue (history ``worker
  shutdown``; the retry budget is not used) so another worker runs them. An API
  process's shutdown leaves every task where it is.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.context import bind_task
from async_tasks.errors import InvalidTransition, SettingsError, ShuttingDown, StoreUnavailable, TaskNotFound
from async_tasks.execution.base import ExecutionLoad, WorkerInfo, log_fields, run_attempt
from async_tasks.executor import ExecutorRegistry, TaskExecutor
from async_tasks.progress import ProgressReporter
from async_tasks.settings import Settings
from async_tasks.store.redis import RedisTaskStore, SessionBusy, reachable
from async_tasks.task import Task, TaskStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from saq.queue.redis import RedisQueue
    from saq.types import Context

logger = logging.getLogger("async_tasks.execution")

#: The SAQ function every attempt job calls.
FUNCTION: Final = "async_tasks.attempt"
#: Seconds: at most one progress write per task per window reaches Redis.
PROGRESS_WINDOW: Final = 0.1
#: Seconds between two runs of the reconciler (across all workers).
RECONCILE_INTERVAL: Final = 1.0
#: Queued tasks the placement of a prioritised task looks at.
PRIORITY_SCAN: Final = 1000
WORKER_LOST: Final = "worker lost"
WORKER_SHUTDOWN: Final = "worker shutdown"

_RUNNING = frozenset({TaskStatus.RUNNING})
_PENDING = frozenset({TaskStatus.PENDING})
_DEFER: Final = "async_tasks.defer"

# Moves a just-enqueued job (near the tail of SAQ's queued list) ahead of its own
# session's queued jobs of lower priority, never ahead of another session's: it takes the
# place of the first of them and each of them moves to the next place the session holds.
# KEYS: queued list. ARGV: job id, its priority, key prefix, scan limit, session key.
_PLACE = r"""
local queued, id, priority, P, scan, S = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5]
local first = math.max(0, redis.call('LLEN', queued) - scan)
local ids = redis.call('LRANGE', queued, first, -1)
local mine, lower, me = {}, nil, nil
for i, other in ipairs(ids) do
  local task = string.match(other, ':([^:]+):%d+$')
  if task then
    local f = redis.call('HMGET', P .. 't:' .. task, '_s', 'priority')
    if f[1] == S then
      mine[#mine + 1] = i
      if other == id then me = #mine; break end
      if not lower and (tonumber(f[2]) or 0) < priority then lower = #mine end
    end
  end
end
if not me or not lower then return 0 end
for j = me, lower + 1, -1 do redis.call('LSET', queued, first + mine[j] - 1, ids[mine[j - 1]]) end
redis.call('LSET', queued, first + mine[lower] - 1, id)
return 1
"""


# Queues a scheduled job now, as SAQ's scheduler does when its time comes (whichever
# runs first moves it; the other finds it queued). KEYS: incomplete zset, queued list.
# ARGV: job id.
_DUE = r"""
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > 0 then
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


def redis_client(url: str, *, retries: int, cap: float = 1.0) -> Redis:
    """A redis-py client for `url` that reconnects with backoff up to `cap` seconds
    (``from_url`` alone never retries)."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.driver_info import DriverInfo

    return Redis.from_url(
        url,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=cap), retries),
        socket_connect_timeout=2,
        # By default redis-py 7 reads its own package metadata for every new connection
        # (8 ms here) and sends CLIENT SETINFO twice on each connect.
        driver_info=DriverInfo(name=None, lib_version=None),
    )


def check_redis(url: str, timeout: float = 2.0) -> None:
    """Raise `SettingsError` with one line when Redis at `url` does not answer a PING."""
    from redis import Redis as SyncRedis

    client = SyncRedis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except Exception as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise SettingsError(f"Cannot reach Redis at {redact(url)} (TASK_BACKEND): {detail}") from None
    finally:
        client.close()


def redact(url: str) -> str:
    """`url` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def redis_backend(
    settings: Settings,
    executors: ExecutorRegistry,
    clock: Clock = SYSTEM_CLOCK,
    *,
    worker_concurrency: int = 0,
) -> tuple[RedisTaskStore, SaqExecution]:
    """The store and execution backend of TASK_BACKEND=redis://...; with
    `worker_concurrency`, this process also runs attempts (a worker)."""
    url = settings.task_backend
    # A request fails fast (503) when Redis is away; the worker's own client waits longer.
    store = RedisTaskStore(
        factory=lambda: redis_client(url, retries=2, cap=0.25), prefix=settings.redis_key_prefix, clock=clock
    )
    execution = SaqExecution(store, executors, settings, url=url, clock=clock, worker_concurrency=worker_concurrency)
    return store, execution


class _Attempt:
    """What a worker knows about one attempt it runs."""

    __slots__ = ("finished", "number", "reporter", "scope", "sink", "started", "stop_reason", "task")

    def __init__(self, task: Task, number: int) -> None:
        self.task = task
        self.number = number
        self.reporter: ProgressReporter | None = None
        self.sink: _Coalescer | None = None
        self.scope = anyio.CancelScope()
        #: Why the attempt was stopped from outside (cancelled, lost, shutdown); None while it runs on.
        self.stop_reason: str | None = None
        #: Set once the executor has returned: the outcome is being stored.
        self.finished = False
        self.started = 0.0


_Report = tuple[float, str | None, str | None]


def _merge(earlier: _Report | None, later: _Report) -> _Report:
    """Two reports as one, as the store would apply them one after the other."""
    percent, step, description = later
    if earlier is None or step is not None:
        return later
    return percent, earlier[1], description if description is not None else earlier[2]


class _Coalescer:
    """The progress sink of one attempt: at most one store write per window (the first
    a window after the start), latest wins; what is still held when the attempt ends
    is stored with its outcome. Once the store refuses a report, every later one is
    refused. The writes themselves are made by `_Flusher`."""

    __slots__ = ("_flusher", "_pending", "closed", "due", "key", "last", "refused")

    def __init__(self, flusher: _Flusher, task: Task, number: int) -> None:
        self._flusher = flusher
        self.key = (task.session_key, task.id, number)
        self.last = time.monotonic()
        self._pending: _Report | None = None
        self.due = 0.0
        self.refused = False
        self.closed = False

    async def __call__(self, percent: float, step: str | None, description: str | None) -> bool:
        if self.refused:
            return False
        if self._pending is None:
            self.due = self.last + self._flusher.window
            self._flusher.hold(self)
        self._pending = _merge(self._pending, (percent, step, description))
        return True

    def pop(self) -> _Report | None:
        pending, self._pending = self._pending, None
        return pending

    def take(self) -> _Report | None:
        """End the sink; the report still held back, to be stored with the outcome."""
        self.closed = True
        pending = self.pop()
        return None if self.refused else pending


class _Flusher:
    """Writes the held-back reports of every attempt of a worker when their window ends
    (one task for all of them, not one per attempt)."""

    def __init__(self, store: RedisTaskStore, window: float) -> None:
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
        report = sink.pop()
        if report is None or sink.closed or sink.refused:
            return
        sink.last = time.monotonic()
        try:
            sink.refused = not await self.store.report_progress(*sink.key, *report)
        except Exception:
            logger.exception("Could not store the progress of task %s", sink.key[1])


class SaqExecution:
    """`ExecutionBackend` on SAQ: an API process enqueues; a worker (with
    `worker_concurrency` > 0) also runs attempts. See the module docstring."""

    def __init__(
        self,
        store: RedisTaskStore,
        executors: ExecutorRegistry,
        settings: Settings,
        *,
        url: str,
        clock: Clock = SYSTEM_CLOCK,
        rng: Callable[[], float] = random.random,
        worker_concurrency: int = 0,
        queue_name: str | None = None,
        progress_window: float = PROGRESS_WINDOW,
        reconcile_interval: float = RECONCILE_INTERVAL,
    ) -> None:
        self.store = store
        self.executors = executors
        self.settings = settings
        self.url = url
        self.clock = clock
        self._rng = rng
        self.worker_concurrency = worker_concurrency
        self.queue_name = queue_name or store.prefix.rstrip(":") or "async-tasks"
        self.progress_window = progress_window
        self.lease_ms = settings.worker_lease_ms
        # A lost worker is found within its lease plus a third of it (at most a second).
        self.reconcile_interval = min(reconcile_interval, self.lease_ms / 3000)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stop_channel = store.prefix + "stop"
        #: The store as the worker side uses it: a client that waits out a Redis restart
        #: (requests use `store`, which fails fast); the same event hub.
        self.wstore = store.sibling(lambda: redis_client(url, retries=30))
        self.on_finish: list[Callable[[Task, float], None]] = []
        self.running: dict[str, _Attempt] = {}
        self._claiming: set[str] = set()
        self._accepting = True
        self._alive = False
        self._tg: anyio.abc.TaskGroup | None = None
        self._queue: RedisQueue | None = None
        self._worker_queue: RedisQueue | None = None
        self._worker: Any = None
        self._flusher: _Flusher | None = None
        self._idle: anyio.Event | None = None
        self._threads: set[_Attempt] = set()

    # -- lifecycle ------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def alive(self) -> bool:
        return self._alive

    def stop_accepting(self) -> None:
        self._accepting = False

    @property
    def queue(self) -> RedisQueue:
        if self._queue is None:
            raise RuntimeError("the execution backend is not running (is the engine started?)")
        return self._queue

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Start with ``await tg.start(execution.run)``."""
        from saq.queue.redis import RedisQueue

        self._accepting = True
        self._idle = None
        self._queue = RedisQueue(redis_client(self.url, retries=2, cap=0.25), name=self.queue_name)
        await self._queue.connect()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self.worker_concurrency > 0:
                    await self._start_worker(tg)
                self._alive = True
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._alive = False
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self._stop_worker()
                await _quietly(self._queue.disconnect())
                self._queue = None
                await _quietly(self.store.aclose())
                await _quietly(self.wstore.aclose())

    async def shutdown(self, grace: float) -> list[Task]:
        """An API process: nothing to do (tasks live in Redis). A worker: wait up to
        `grace` for running attempts, hand the rest back to the queue."""
        self._accepting = False
        if self._worker_queue is None:
            return []
        deadline = anyio.current_time() + grace
        # No more dequeuing: jobs taken but not started go back to the queue now, for
        # the other workers; the attempts running here go on in our own task group.
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
        abandoned = [attempt.task for attempt in self.running.values()]
        for task in abandoned:
            logger.warning(
                "Abandoned task %s for session %s: it did not stop within the grace period",
                task.id,
                task.session_key,
                extra=log_fields(task, reason="shutdown"),
            )
        return abandoned

    # -- API side -------------------------------------------------------------

    async def submit(self, task: Task) -> None:
        if not self._accepting:
            raise ShuttingDown()
        await self._enqueue(task)

    async def cancel(self, task: Task, reason: str) -> None:
        previous = task.history[-1].previous if task.history else None
        if previous is TaskStatus.RUNNING:
            # The store already refuses the attempt's reports and outcome; this stops the
            # executor on whichever worker runs it.
            self._stop_local(task.id, task.attempts, reason)
            try:
                await self.queue.redis.publish(self.stop_channel, f"{task.id}:{task.attempts}")
            except Exception:
                logger.warning("Could not notify the workers that task %s was cancelled", task.id, exc_info=True)
            return
        await self._drop_queued(f"{task.id}:{task.attempts + 1}", reason)

    async def _drop_queued(self, key: str, reason: str) -> None:
        """Take a job that has not started out of SAQ's queue (a started one no-ops)."""
        from saq.job import Status

        try:
            job = await self.queue.job(key)
            if job is None or job.status not in (Status.QUEUED, Status.NEW):
                return
            await self.queue.abort(job, reason)
            job = await self.queue.job(key)
            if job is not None and job.status is Status.ABORTING:
                # It was scheduled for later, so in no list: SAQ would keep it forever.
                await self.queue.finish(job, Status.ABORTED, error=reason)
                await cast(Any, self.queue.redis).delete(job.abort_id)
        except Exception:
            logger.warning("Could not take job %s out of the queue", key, exc_info=True)

    async def queue_position(self, task: Task) -> int | None:
        """The place among the session's own queued tasks: higher priority first, then
        oldest first (other sessions' tasks are neither counted nor revealed)."""
        return await self.store.queue_position(task.session_key, task.id, self.queue.job_id(""))

    async def load(self) -> ExecutionLoad:
        """The attempts running in this process, and the jobs waiting in the shared queue
        (0 when Redis cannot be reached)."""
        queue = self.queue
        try:
            with reachable():
                queued = await cast(Any, queue.redis.llen(queue.namespace("queued")))
        except StoreUnavailable:
            queued = 0
        return ExecutionLoad(running=len(self.running), queued=int(queued))

    def running_tasks(self) -> list[Task]:
        for _ in range(5):
            try:
                return [attempt.task for attempt in list(self.running.values())]
            except RuntimeError:  # changed size while the loop thread updated it
                continue
        return []

    async def _enqueue(self, task: Task, delay: float = 0.0, *, deferrals: int = 0, worker: bool = False) -> None:
        """Enqueue the task's next attempt (a no-op if that attempt's job is queued already);
        from the worker side (`worker`) through the client that waits out Redis restarts."""
        queue = (self._worker_queue if worker else None) or self._queue
        if queue is None:
            raise RuntimeError("the execution backend is not running (is the engine started?)")
        number = task.attempts + 1
        kwargs: dict[str, Any] = {"s": task.session_key, "t": task.id, "a": number}
        if deferrals:
            kwargs["d"] = deferrals
        key = f"{task.id}:{number}"
        options: dict[str, Any] = {
            "key": key,
            "timeout": 0,
            "heartbeat": 0,
            "retries": 1,
            "ttl": -1,
            # A float 0.0 would never run (SAQ compares the string '0').
            "scheduled": time.time() + delay if delay > 0 else 0,
        }
        with reachable():
            job = await queue.enqueue(FUNCTION, **options, **kwargs)
            if job is None and await queue.job(key) is None:
                # Not a duplicate: an abort left its marker, which blocks the key for a few
                # seconds (a task cancelled while its job was being dequeued, then retried).
                from saq.job import ABORT_ID_PREFIX

                await cast(Any, queue.redis).delete(ABORT_ID_PREFIX + key)
                job = await queue.enqueue(FUNCTION, **options, **kwargs)
            if job is not None and task.priority > 0 and delay <= 0:
                await cast(Any, queue.redis).eval(
                    _PLACE,
                    1,
                    queue.namespace("queued"),
                    job.id,
                    task.priority,
                    self.store.prefix,
                    PRIORITY_SCAN,
                    task.session_key,
                )
        if job is not None and delay > 0 and worker and self._tg is not None:
            self._tg.start_soon(self._due, queue, job.id, delay)

    async def _due(self, queue: RedisQueue, job_id: str, delay: float) -> None:
        """Queue a scheduled job at its time: SAQ's own scheduler looks only once a second
        (it still does, if this worker is gone by then)."""
        await anyio.sleep(delay)
        try:
            await cast(Any, queue.redis).eval(_DUE, 2, queue.namespace("incomplete"), queue.namespace("queued"), job_id)
        except Exception as exc:
            logger.debug("Could not queue job %s at its time (SAQ's scheduler will): %s", job_id, exc)

    # -- worker side: the SAQ worker, leases, the reconciler and stop messages ----------

    async def _start_worker(self, tg: anyio.abc.TaskGroup) -> None:
        from saq import Worker
        from saq.queue.redis import RedisQueue

        class Queue(RedisQueue):
            """SAQ's queue with a sweep that cannot kill a live job.

            SAQ's sweep aborts any job it finds in the active list that is not marked
            active yet, which is also every job a live worker has just dequeued
            (tobymao/saq#277): under load it killed healthy jobs and ran others twice.
            Ours re-queues a job only when two sweeps in a row find it so (a live worker
            marks its job active within milliseconds): the jobs a worker took just
            before it died. Attempts themselves are watched by our leases."""

            suspects: AbstractSet[bytes] = frozenset()

            async def sweep(self, lock: int = 60, abort: float = 5.0) -> list[str]:
                from saq.job import Status

                redis = cast(Any, self.redis)
                active = self.namespace("active")
                ids = await redis.lrange(active, 0, -1)
                records = await redis.mget(ids) if ids else []
                seen = {
                    job_id
                    for job_id, raw in zip(ids, records, strict=True)
                    if raw is None or self._load(raw).get("status") != Status.ACTIVE
                }
                orphans, self.suspects = seen & self.suspects, seen - self.suspects
                for job_id in orphans:
                    job = await self._get_job_by_id(job_id)
                    if job is None:
                        await redis.lrem(active, 0, job_id)
                    elif job.status not in (Status.ACTIVE, Status.COMPLETE, Status.FAILED, Status.ABORTED):
                        logger.info("Re-queueing job %s: its worker took it and stopped", job.key)
                        await self.retry(job, error="orphaned")
                return [job_id.decode() for job_id in orphans]

        self._worker_queue = Queue(redis_client(self.url, retries=30), name=self.queue_name)
        await self._worker_queue.connect()
        worker = Worker(
            self._worker_queue,
            functions=[(FUNCTION, self._job)],
            concurrency=self.worker_concurrency,
            timers={"schedule": 1, "sweep": 1, "abort": 1, "worker_info": 10},
            after_process=self._after_process,
            id=self.worker_id,
        )
        worker.SIGNALS = []  # the process's own handlers stay (see async_tasks.worker)
        self._worker = worker
        self._flusher = _Flusher(self.wstore, self.progress_window)
        await self._renew_lease()
        tg.start_soon(self._flusher.run)
        tg.start_soon(self._upkeep)
        tg.start_soon(self._listen_for_stops)
        tg.start_soon(worker.start)
        logger.info(
            "Worker %s running up to %d attempts on queue %s", self.worker_id, self.worker_concurrency, self.queue_name
        )

    async def _stop_dequeuing(self) -> None:
        """Stop the SAQ worker: it takes no more jobs, and puts back those it holds."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            worker.event.set()
            await worker.stop()
        except Exception:
            logger.warning("The SAQ worker did not stop cleanly", exc_info=True)

    async def _stop_worker(self) -> None:
        await self._stop_dequeuing()
        queue, self._worker_queue = self._worker_queue, None
        if queue is not None:
            try:
                await cast(Any, queue.redis).delete(self._lease_key)
                await cast(Any, queue.redis).hdel(self.store.key("workers"), self.worker_id)
            except Exception:
                pass
            await _quietly(queue.disconnect())

    @property
    def _lease_key(self) -> str:
        return self.store.key("wk", self.worker_id)

    async def _renew_lease(self) -> None:
        assert self._worker_queue is not None
        info = msgspec.json.encode({"pid": os.getpid(), "concurrency": self.worker_concurrency})
        async with cast(Any, self._worker_queue.redis).pipeline(transaction=False) as pipe:
            pipe.set(self._lease_key, info, px=self.lease_ms)
            # The deployment's slots (what fair sharing divides); the reconciler forgets
            # the workers whose lease expired.
            pipe.hset(self.store.key("workers"), self.worker_id, self.worker_concurrency)
            await pipe.execute()

    async def _upkeep(self) -> None:
        """Keep the lease alive, check the running attempts against the store, reconcile."""
        interval = self.lease_ms / 3000
        next_reconcile = 0.0
        while True:
            try:
                await self._renew_lease()
                await self._check_attempts()
                now = anyio.current_time()
                if now >= next_reconcile:
                    next_reconcile = now + self.reconcile_interval
                    await self.reconcile()
            except Exception:
                logger.warning("Worker upkeep failed; retrying", exc_info=True)
            await anyio.sleep(interval)

    async def _check_attempts(self) -> None:
        """Stop the attempts the store no longer has running here (a stop message can be lost)."""
        attempts = [a for a in list(self.running.values()) if a.stop_reason is None and not a.finished]
        if not attempts:
            return
        assert self._worker_queue is not None
        async with cast(Any, self._worker_queue.redis).pipeline(transaction=False) as pipe:
            for attempt in attempts:
                pipe.hmget(self.store.key("t", attempt.task.id), ["status", "attempts"])
            rows = await pipe.execute()
        for attempt, (status, number) in zip(attempts, rows, strict=True):
            if status != b'"running"' or number is None or int(number) != attempt.number:
                self._stop_local(attempt.task.id, attempt.number, "no longer running in the store")

    async def reconcile(self) -> int:
        """Fail (and re-run, per the retry budget) the running tasks whose worker is
        gone, and those the store says run here while they do not. Returns how many."""
        assert self._worker_queue is not None
        got = await cast(Any, self._worker_queue.redis).set(
            self.store.key("reconcile"), self.worker_id, nx=True, px=max(50, int(self.reconcile_interval * 1000) - 50)
        )
        found = 0
        for task_id, session_key, number, worker in await self.wstore.lost_attempts(self.worker_id):
            if worker == self.worker_id:
                if task_id in self.running or task_id in self._claiming:
                    continue
                error = "The attempt was lost on its worker (its outcome could not be stored)"
            elif got:
                error = f"The worker running this task was lost ({worker} stopped renewing its lease)"
            else:
                continue  # another worker reconciles now
            found += 1
            await self._lose(session_key, task_id, number, reason=WORKER_LOST, error=error)
        return found

    async def _listen_for_stops(self) -> None:
        assert self._worker_queue is not None
        pubsub = cast(Any, self._worker_queue.redis).pubsub()
        try:
            while True:
                try:
                    if not pubsub.subscribed:
                        await pubsub.subscribe(self.stop_channel)
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except Exception:
                    logger.warning("Lost the stop channel; reconnecting", exc_info=True)
                    await anyio.sleep(1)
                    continue
                if message is not None and message.get("type") == "message":
                    task_id, _, number = message["data"].decode().rpartition(":")
                    if number.isdigit():
                        self._stop_local(task_id, int(number), "cancelled")
        finally:
            with anyio.CancelScope(shield=True):
                await pubsub.aclose()

    # -- worker side: one attempt -------------------------------------------------

    async def _job(self, ctx: Context, *, s: str, t: str, a: int, d: int = 0) -> None:
        """The SAQ function: run attempt `a` of task `t` of session `s`."""
        tg = self._tg
        if not self._accepting or tg is None:
            # Shutting down: hold the job; stopping the SAQ worker puts it back in the queue.
            await anyio.sleep_forever()
            return
        done = anyio.Event()
        tg.start_soon(self._attempt, cast("dict[str, Any]", ctx), s, t, a, d, done, name=f"task {t}")
        # The attempt runs in our task group, not in SAQ's job task: a cancellation SAQ
        # sends to its job (a sweep mistaking it for a dead one) ends this wait only. It
        # ends when the executor is done: SAQ finishes its job while the outcome is stored.
        await done.wait()

    async def _after_process(self, ctx: Context) -> None:
        """After SAQ has finished a job: re-enqueue it if its attempt had to wait."""
        defer = cast("dict[str, Any]", ctx).get(_DEFER)
        if defer is None:
            return
        delay, deferrals, task = defer
        try:
            await self._enqueue(task, delay, deferrals=deferrals, worker=True)
        except Exception:
            logger.exception("Could not put task %s back in the queue", task.id)

    async def _attempt(self, ctx: dict[str, Any], session_key: str, task_id: str, number: int, deferrals: int,
                       done: anyio.Event) -> None:  # fmt: skip
        self._claiming.add(task_id)
        try:
            try:
                task = await self.wstore.transition(
                    session_key, task_id, TaskStatus.RUNNING, expect=_PENDING, attempt=number - 1, reason="started",
                    owner=self.worker_id, session_limit=self.settings.max_concurrent_tasks_per_session,
                    global_limit=self.settings.max_concurrent_tasks, fair=True,
                )  # fmt: skip
            except SessionBusy:
                # Over a concurrency limit: back to the queue, later each time (up to 2 s).
                try:
                    waiting = await self.wstore.get(session_key, task_id)
                except TaskNotFound:
                    return  # removed meanwhile
                ctx[_DEFER] = (min(2.0, 0.05 * 2**deferrals), deferrals + 1, waiting)
                return
            except (InvalidTransition, TaskNotFound):
                return  # cancelled, removed, or this attempt already ran: nothing to do
            self._claiming.discard(task_id)
            await self._run_attempt(task, done)
        except Exception:
            # Never into the task group: one attempt's trouble must not stop the worker.
            logger.exception("Attempt %s of task %s could not run", number, task_id)
        finally:
            self._claiming.discard(task_id)
            done.set()

    async def _run_attempt(self, task: Task, ran: anyio.Event) -> None:
        """Run the attempt; set `ran` once the executor is done (SAQ may finish its job
        while the outcome is stored: a worker lost meanwhile is the reconciler's case)."""
        assert self._tg is not None
        executor = self.executors.get(task.executor)
        attempt = _Attempt(task, task.attempts)
        assert self._flusher is not None
        sink = _Coalescer(self._flusher, task, attempt.number)
        attempt.sink = sink
        attempt.reporter = reporter = ProgressReporter(sink, type(executor).steps if executor is not None else ())
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
                await self._record(attempt, *outcome, report=sink.take())
        except anyio.get_cancelled_exc_class():
            # The backend itself is torn down without a shutdown() first.
            if attempt.stop_reason is None:
                with anyio.CancelScope(shield=True):
                    await self._hand_back(attempt)
            raise
        finally:
            reporter.close()
            sink.closed = True
            self._release(attempt)

    def _with_params(self, attempt: _Attempt, executor: TaskExecutor[Any, Any]) -> Task:
        """The attempt's task with its params as the executor's `Params` (the store keeps
        plain JSON)."""
        task = attempt.task
        params = msgspec.convert(task.params if task.params is not None else {}, type(executor).Params)
        attempt.task = msgspec.structs.replace(task, params=params)
        return attempt.task

    async def _record(
        self, attempt: _Attempt, status: TaskStatus, result: Any, error: str | None, *, report: _Report | None
    ) -> None:
        """Store the outcome of an attempt that ran to its end (with its last held-back report)."""
        task = attempt.task
        try:
            if status is TaskStatus.COMPLETED and error is None:
                done = await self.wstore.transition(
                    task.session_key, task.id, TaskStatus.COMPLETED,
                    expect=_RUNNING, attempt=attempt.number, result=result, reason="completed", report=report,
                )  # fmt: skip
                logger.info(
                    "Completed execution of task %s for session %s in %d ms",
                    task.id, task.session_key, done.duration_ms or 0, extra=log_fields(done),
                )  # fmt: skip
            else:
                await self._fail(task, attempt.number, error or "failed", report=report)
        except (InvalidTransition, TaskNotFound):
            return  # cancelled or removed while it finished: the store already says so
        except StoreUnavailable:
            logger.error("Could not store the outcome of task %s: the task store is unreachable", task.id)
            return
        self._notify(attempt)

    async def _fail(self, task: Task, number: int, error: str, *, report: _Report | None = None) -> None:
        key = task.session_key
        used = task.auto_retries
        if used < task.max_retries:
            await self.wstore.transition(
                key, task.id, TaskStatus.FAILED, expect=_RUNNING, attempt=number, error=error, reason="attempt failed",
                report=report,
            )  # fmt: skip
            logger.warning(
                "Attempt %s of task %s for session %s failed: %s", number, task.id, key, error,
                extra=log_fields(task, error=error),
            )  # fmt: skip
            await self._retry_later(task, number)
            return
        await self.wstore.transition(
            key, task.id, TaskStatus.FAILED, expect=_RUNNING, attempt=number, error=error, reason="failed",
            dead_letter=task.max_retries > 0, report=report,
        )  # fmt: skip
        logger.error(
            "Failed execution of task %s for session %s: %s", task.id, key, error, extra=log_fields(task, error=error)
        )

    async def _retry_later(self, task: Task, number: int) -> None:
        """Queue the next attempt of a task that just failed, after the backoff delay."""
        used = task.auto_retries
        delay = self.backoff_delay(used + 1)
        retried = await self.wstore.transition(
            task.session_key, task.id, TaskStatus.PENDING, attempt=number, automatic=True,
            reason=f"automatic retry {used + 1} of {task.max_retries} in {delay * 1000:.0f} ms",
        )  # fmt: skip
        await self._enqueue(retried, delay, worker=True)

    def backoff_delay(self, retry: int) -> float:
        """Exponential backoff with jitter: half fixed, half random, capped (as in memory mode)."""
        base: float = self.settings.retry_backoff_ms / 1000 * 2.0 ** (retry - 1)
        capped: float = min(base, self.settings.retry_backoff_max_ms / 1000)
        return capped / 2 + capped / 2 * self._rng()

    async def _lose(self, session_key: str, task_id: str, number: int, *, reason: str, error: str) -> None:
        """Fail an attempt whose worker is gone; run the task again if its budget allows."""
        try:
            task = await self.wstore.get(session_key, task_id)
            retry = task.auto_retries < task.max_retries
            await self.wstore.transition(
                session_key, task_id, TaskStatus.FAILED, expect=_RUNNING, attempt=number, error=error, reason=reason,
                dead_letter=not retry and task.max_retries > 0,
            )  # fmt: skip
        except (InvalidTransition, TaskNotFound):
            return  # it moved on meanwhile
        logger.warning(
            "Task %s for session %s: attempt %s was lost (%s)", task_id, session_key, number, reason,
            extra=log_fields(task, reason=reason),
        )  # fmt: skip
        self._drop_job_later(f"{task_id}:{number}", reason)
        if retry:
            await self._retry_later(task, number)

    def _drop_job_later(self, key: str, reason: str) -> None:
        """Finish the SAQ job of a lost attempt, so it leaves SAQ's active list."""
        queue, tg = self._worker_queue, self._tg
        if queue is None or tg is None:
            return

        async def drop() -> None:
            from saq.job import Status

            try:
                job = await queue.job(key)
                if job is not None and job.status not in (Status.COMPLETE, Status.FAILED, Status.ABORTED):
                    await queue.finish(job, Status.ABORTED, error=reason)
            except Exception:
                logger.warning("Could not finish the SAQ job %s", key, exc_info=True)

        tg.start_soon(drop)

    async def _hand_back(self, attempt: _Attempt) -> None:
        """Stop an attempt this worker cannot finish (shutdown) and queue it again,
        without using its retry budget."""
        task = attempt.task
        attempt.stop_reason = WORKER_SHUTDOWN
        if attempt.reporter is not None:
            attempt.reporter.close()
        attempt.scope.cancel()
        try:
            await self.wstore.transition(
                task.session_key, task.id, TaskStatus.FAILED, expect=_RUNNING, attempt=attempt.number,
                error="The worker running this task shut down; it runs again on another worker",
                reason=WORKER_SHUTDOWN,
            )  # fmt: skip
            again = await self.wstore.transition(
                task.session_key, task.id, TaskStatus.PENDING, attempt=attempt.number, keep_auto_retries=True,
                reason="handed back to the queue",
            )  # fmt: skip
            await self._enqueue(again, worker=True)
        except (InvalidTransition, TaskNotFound):
            return
        except Exception:
            logger.exception("Could not hand task %s back to the queue", task.id)
            return
        logger.info("Handed task %s for session %s back to the queue (worker shutdown)", task.id, task.session_key)

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

    # -- the admin view: not written for Redis yet ------------------------------------------

    async def workers(self) -> list[WorkerInfo]:
        raise NotImplementedError(
            "The list of workers (the admin view) is not available on the Redis backend yet; "
            "it works with TASK_BACKEND=memory"
        )

    async def load_by_executor(self) -> dict[str, ExecutionLoad]:
        raise NotImplementedError(
            "Queue depth by executor (the admin view) is not available on the Redis backend yet; "
            "it works with TASK_BACKEND=memory"
        )


async def _quietly(closing: Awaitable[Any]) -> None:
    """Close a connection; a Redis that is already gone is not an error here."""
    try:
        await closing
    except Exception as exc:
        logger.debug("Closing a Redis connection failed: %s", exc)

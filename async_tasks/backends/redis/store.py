"""The Redis task store: tasks shared by every API and worker process.

Each method is one Lua script (`async_tasks.backends.redis.scripts`), so every
multi-key change is atomic and time comes from Redis (``TIME``), never from a machine's
clock (a test clock, `FakeClock`, is passed in instead). The store also keeps where each
task's delivery is (parked in its session's line, delayed, or dispatched to a worker's
SAQ queue) and changes it in the same script as the task, so every hand-off between
processes is one step; the producer (`RedisExecution`) and the worker (`RedisWorker`)
call those scripts through the methods under "delivery" below. Keys: `keys.py`.

Every write is safe to run twice: redis-py re-sends a command whose reply was lost (a
reset connection, a failover), so each write carries an operation id, and a script that
finds it on its task answers as the first run did; a create finds its own task; a token
taken is not taken again.

Every change is also published, from inside its script, on the session's channel
(`Keys.channel_prefix` + session) as the envelope the push streams read, so a browser
connected to any API process sees changes made by any process, in the order Redis
applied them. Changes made through this object are published on `events` too, and its
`on_removed` hooks learn what the scripts removed by themselves and why: what another
process does reaches its own hub only.

Tasks come back as `StoredTask`s: params, metadata and result as their encoded JSON,
sliced from the script's reply without being decoded (the worker decodes them for
`execute`, `TaskSystem` for its callers). `query` returns summaries. Needs a standalone
Redis 7 (scripts compute key names; no Cluster).
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec
from redis.exceptions import ReadOnlyError

from async_tasks.backends.queued.store import Dispatched, RunLimits
from async_tasks.backends.redis import scripts
from async_tasks.backends.redis.connection import Availability, reachable
from async_tasks.backends.redis.keys import DEFAULT_PREFIX, Keys
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.errors import IdempotentTaskRemoved, TaskNotFound
from async_tasks.events import EventHub, EventType, LogEvent, TaskEvent
from async_tasks.execution.base import ExecutionLoad, WorkerInfo
from async_tasks.store.base import (
    ACTIONS,
    RECENT_DURATIONS,
    CreateLimits,
    Expiry,
    ExpiryResult,
    Finish,
    Idempotency,
    Report,
    Retention,
    SessionCounts,
    SessionPage,
    SessionSummary,
    StorePolicy,
    StoreTotals,
    TaskFilter,
    TaskPage,
    TrimResult,
    client_has_too_many_sessions,
    client_has_too_many_tasks,
    idempotency_conflict,
    quota_exceeded,
    refusal,
    too_many_sessions,
    too_many_tasks,
)
from async_tasks.task import StoredTask, Task, TaskStatus
from async_tasks.task_log import LogLine

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

#: Tasks `trim` and `expire` change per script call (a script blocks Redis while it runs).
TRIM_BATCH: Final = 1000
#: Sessions `trim` and `expire` of every session look at per script call.
TRIM_SESSIONS: Final = 200
#: Tasks one query script reads at most (a longer page is several scripts).
QUERY_CHUNK: Final = 250
#: Tasks a session stream's snapshot shows (the newest), and the largest result it carries.
SNAPSHOT_TASKS: Final = 200
SNAPSHOT_RESULT_BYTES: Final = 16_384

_STATUSES: Final = tuple(status.value for status in TaskStatus)
_encode = msgspec.json.Encoder().encode
_decode_task = msgspec.json.Decoder(StoredTask).decode
_decode_tasks = msgspec.json.Decoder(list[StoredTask]).decode


def _task(raw: bytes) -> StoredTask:
    task = _decode_task(raw)
    _whole(task)
    return task


def _tasks(raw: bytes) -> list[Task]:
    tasks = _decode_tasks(raw)
    for task in tasks:
        _whole(task)
    return cast("list[Task]", tasks)


def _whole(task: Task) -> None:
    # JSON has one kind of number: a whole percent decodes as 45.0, while the reporter
    # keeps it 45 (clients see `45`, as in memory mode).
    progress = task.progress
    if progress.is_integer():
        task.progress = int(progress)


def _json_or_empty(value: Any) -> bytes:
    return b"" if value is None else _encode(value)


def new_op() -> str:
    """A fresh operation id: what makes a re-sent write answer "done"."""
    return os.urandom(9).hex()


class _Shared:
    """What a store and its siblings (other clients on the same keys) share."""

    __slots__ = ("config", "limits", "policy")

    def __init__(self, policy: StorePolicy, limits: RunLimits) -> None:
        self.policy = policy
        self.limits = limits
        self.config = _config(policy, limits)


def _config(policy: StorePolicy, limits: RunLimits) -> str:
    """The scripts' settings argument (see `prelude.lua`)."""
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


class RedisTaskStore:
    """`TaskStore` in Redis, shared by every process of a deployment.

    Build it with a client (`redis.asyncio.Redis`, ``decode_responses=False``) or a
    factory of one: with a factory the client is made when first used and `aclose`
    forgets it, so the same store can serve one event loop after another.
    """

    def __init__(
        self,
        redis: Redis | None = None,
        *,
        factory: Callable[[], Redis] | None = None,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock = SYSTEM_CLOCK,
        events: EventHub | None = None,
        policy: StorePolicy | None = None,
        limits: RunLimits | None = None,
        availability: Availability | None = None,
    ) -> None:
        self.clock = clock
        self.events = events or EventHub()
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.channel_prefix = self.keys.channel_prefix
        if (redis is None) == (factory is None):
            raise TypeError("give RedisTaskStore either a client or a factory of clients")
        self._factory = factory
        self._redis = redis
        self._scripts: dict[str, AsyncScript] = {}
        self._shared = _Shared(policy or StorePolicy(), limits or RunLimits())
        #: Says once when Redis goes away and once when it is back.
        self.availability = availability or Availability("The task store")
        # Time from Redis (TIME), unless a test clock is given: then its time is passed in.
        self._clock_time = type(clock) is not Clock

    def sibling(self, factory: Callable[[], Redis], availability: Availability | None = None) -> RedisTaskStore:
        """The same store through another client: the same keys, events, policy and limits."""
        twin = RedisTaskStore(
            factory=factory,
            prefix=self.prefix,
            clock=self.clock,
            events=self.events,
            availability=availability or self.availability,
        )
        twin._shared = self._shared
        return twin

    @property
    def policy(self) -> StorePolicy:
        return self._shared.policy

    @policy.setter
    def policy(self, policy: StorePolicy) -> None:
        self._shared.policy = policy
        self._shared.config = _config(policy, self._shared.limits)

    @property
    def limits(self) -> RunLimits:
        return self._shared.limits

    @limits.setter
    def limits(self, limits: RunLimits) -> None:
        self._shared.limits = limits
        self._shared.config = _config(self._shared.policy, limits)

    # -- connection ------------------------------------------------------------------

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            assert self._factory is not None
            self._redis = self._factory()
            self._scripts.clear()
        return self._redis

    async def aclose(self) -> None:
        """Close the client; with a factory, the next use makes a new one."""
        if self._redis is not None:
            client, self._redis = self._redis, None
            self._scripts.clear()
            await client.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers now."""
        try:
            with reachable(self.availability):
                await cast("Awaitable[bool]", self.redis.ping())
        except Exception:
            return False
        return True

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.redis.register_script(scripts.source(name))
        return script

    def _common(self, op: str = "") -> tuple[str, ...]:
        """The arguments every script gets first (see `scripts`)."""
        now = str(self.clock.now_ms()) if self._clock_time else ""
        want = "1" if self.events.on_removed or self.events.listeners else ""
        return (self.prefix, self.channel_prefix, now, self._shared.config, want, op)

    async def _run(self, name: str, *args: Any, op: str = "") -> Any:
        """Run script `name`: the common arguments (see `scripts`), then `args`."""
        base = self._common(op)
        script = self._script(name)
        with reachable(self.availability):
            try:
                return await script(args=[*base, *args])
            except ReadOnlyError:
                # A demoted primary after a failover: drop the connections, so the next
                # request connects afresh (and finds the new primary behind the address).
                await self.redis.connection_pool.disconnect()
                raise

    async def _now_ms(self) -> int:
        """The store's time: the test clock's, or Redis's."""
        if self._clock_time:
            return self.clock.now_ms()
        with reachable(self.availability):
            seconds, micros = await cast("Awaitable[tuple[int, int]]", self.redis.time())
        return int(seconds) * 1000 + int(micros) // 1000

    # -- reads ---------------------------------------------------------------------

    async def get(self, session_key: str, task_id: str) -> StoredTask:
        raw = await self._run("get", session_key, task_id)
        if raw is None:
            raise TaskNotFound(task_id)
        return _task(raw)

    async def query(
        self,
        session_key: str,
        where: TaskFilter,
        *,
        limit: int | None = None,
        offset: int = 0,
        cursor: str | None = None,
    ) -> TaskPage:
        return await self._query(session_key, where, limit=limit, offset=offset, cursor=cursor)

    async def _query(
        self,
        session_key: str | None,
        where: TaskFilter,
        *,
        limit: int | None,
        offset: int,
        cursor: str | None,
    ) -> TaskPage:
        """A page of one session's tasks, or (None) of every session's (see `query.lua`).

        A long page is read in chunks, one script each, continuing below the last task of
        the chunk before: no single script holds Redis for a whole page of a thousand."""
        filters = (
            where.status.value if where.status is not None else "",
            where.executor or "",
            where.tag or "",
            "" if where.dead_letter is None else ("true" if where.dead_letter else "false"),
        )
        every = "1" if session_key is None else ""
        tasks: list[Task] = []
        total: int | None = None
        below = _cursor(cursor)
        while True:
            wanted = QUERY_CHUNK if limit is None else min(QUERY_CHUNK, limit - len(tasks))
            chunk_total, raw, next_cursor = await self._run(
                "query", session_key or "", *filters, offset if total is None else 0, wanted, below, every
            )
            if total is None:
                total = int(chunk_total)
            tasks += _tasks(raw)
            below = next_cursor.decode()
            if not below or (limit is not None and len(tasks) >= limit):
                return TaskPage(tasks, total, below or None)

    async def snapshot(self, session_key: str, task_id: str | None = None) -> tuple[int, list[bytes]]:
        """The snapshot events (JSON) of the session's newest tasks (at most
        `SNAPSHOT_TASKS`, results over `SNAPSHOT_RESULT_BYTES` left out) or of one task,
        newest first, and the event sequence number they reflect, read at one moment:
        every change with a higher number happened after this read."""
        seq, events = await self._run("snapshot", session_key, task_id or "", SNAPSHOT_TASKS, SNAPSHOT_RESULT_BYTES)
        return int(seq), events

    async def counts(self, session_key: str) -> SessionCounts:
        with reachable(self.availability):
            values = await cast(
                "Awaitable[list[Any]]", self.redis.hmget(self.keys.counts(session_key), [*_STATUSES, "dur"])
            )
        by_status = {status: int(value or 0) for status, value in zip(TaskStatus, values, strict=False)}
        completed = by_status[TaskStatus.COMPLETED]
        duration = int(values[-1] or 0)
        return SessionCounts(by_status=by_status, average_duration_ms=duration / completed if completed else 0.0)

    async def totals(self) -> StoreTotals:
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hmget(self.keys.totals, list(_STATUSES))
                pipe.scard(self.keys.sessions)
                values, sessions = await pipe.execute()
        by_status = {status: int(value or 0) for status, value in zip(TaskStatus, values, strict=False)}
        return StoreTotals(by_status=by_status, sessions=int(sessions))

    async def waiting(self) -> tuple[int, int]:
        """Tasks waiting for a slot in every session (parked), and tasks dispatched to a
        worker that has not started them yet."""
        with reachable(self.availability):
            parked, dispatched, running = await cast(
                "Awaitable[list[bytes | None]]", self.redis.hmget(self.keys.totals, ["p", "d", "running"])
            )
        return int(parked or 0), max(0, int(dispatched or 0) - int(running or 0))

    async def queue_position(self, session_key: str, task_id: str) -> int | None:
        """A waiting task's place in its session's line (see `position.lua`); O(log n)."""
        position = await self._run("position", session_key, task_id)
        return None if position is None else int(position)

    async def queue_positions(self, session_key: str, task_ids: Sequence[str]) -> dict[str, int]:
        """`queue_position` of several tasks in one round trip (those not waiting are absent)."""
        if len(task_ids) <= 1:  # one: no pipeline to set up
            places = [await self.queue_position(session_key, task_id) for task_id in task_ids]
            return {task_id: place for task_id, place in zip(task_ids, places, strict=True) if place is not None}
        script = self._script("position")
        base = self._common()
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    await script(args=[*base, session_key, task_id], client=pipe)
                found = await pipe.execute()
        return {task_id: int(place) for task_id, place in zip(task_ids, found, strict=True) if place is not None}

    # -- changes -------------------------------------------------------------------

    async def create(
        self,
        task: Task,
        *,
        limits: CreateLimits,
        idempotency: Idempotency | None = None,
        deliver: bool = False,
        due_ms: int | None = None,
    ) -> tuple[StoredTask, bool]:
        """`TaskStore.create`; with `deliver`, the task is handed to delivery in the same
        step (parked in its session's line, or delayed until `due_ms`)."""
        response = await self._run(
            "create",
            task.session_key,
            task.id,
            limits.max_active_per_session,
            idempotency.key if idempotency is not None else "",
            idempotency.fingerprint.hex() if idempotency is not None else "",
            "" if limits.max_tasks is None else limits.max_tasks,
            "" if limits.max_sessions is None else limits.max_sessions,
            "1" if deliver else "",
            "" if due_ms is None else due_ms,
            limits.client or "",
            "" if limits.max_tasks_per_client is None else limits.max_tasks_per_client,
            "" if limits.max_sessions_per_client is None else limits.max_sessions_per_client,
            "id",
            _encode(task.id),
            "sessionKey",
            _encode(task.session_key),
            "executor",
            _encode(task.executor),
            "name",
            _encode(task.name),
            "params",
            _encode(task.params),
            "description",
            _encode(task.description),
            "metadata",
            _encode(task.metadata),
            "tags",
            _encode(task.tags),
            "priority",
            _encode(task.priority),
            "timeoutMs",
            _encode(task.timeout_ms),
            "maxRetries",
            _encode(task.max_retries),
            "requestId",
            _encode(task.request_id),
            op=new_op(),
        )
        kind, payload = response[0], response[1]
        if kind == b"conflict":
            assert idempotency is not None
            raise idempotency_conflict(idempotency.key, payload.decode())
        if kind == b"gone":
            assert idempotency is not None
            raise IdempotentTaskRemoved(idempotency.key, payload.decode())
        if kind == b"quota":
            raise quota_exceeded(limits.max_active_per_session, int(payload))
        if kind == b"sessions":
            assert limits.max_sessions is not None
            raise too_many_sessions(limits.max_sessions, int(payload))
        if kind == b"tasks":
            assert limits.max_tasks is not None
            raise too_many_tasks(limits.max_tasks, int(payload))
        if kind == b"client_sessions":
            assert limits.max_sessions_per_client is not None
            raise client_has_too_many_sessions(limits.max_sessions_per_client, int(payload))
        if kind == b"client_tasks":
            assert limits.max_tasks_per_client is not None
            raise client_has_too_many_tasks(limits.max_tasks_per_client, int(payload))
        created = _task(payload)
        if kind == b"replay":
            return created, True
        if len(response) > 2:  # what was removed to make room (a re-sent create has no news)
            self._removed(response[2])
        for hook in self.events.on_transition:
            hook(created, None)
        self._publish(created, EventType.TRANSITION, None)
        return created, False

    async def replay(self, session_key: str, idempotency: Idempotency) -> Task | None:
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hget(self.keys.idempotency(session_key), idempotency.key)
                pipe.zscore(self.keys.idempotency_times(session_key), idempotency.key)
                seen, used_at = await pipe.execute()
        if seen is None:
            return None
        task_id, _, fingerprint = seen.decode().partition("|")
        try:
            task: Task | None = await self.get(session_key, task_id)
        except TaskNotFound:
            task = None
        window = self.policy.idempotency_window_ms
        if task is None and (window is None or (used_at or 0) <= await self._now_ms() - window):
            return None  # its task is gone and its window over (or there is none): the key is free
        if fingerprint != idempotency.fingerprint.hex():
            raise idempotency_conflict(idempotency.key, task_id)
        if task is None:
            raise IdempotentTaskRemoved(idempotency.key, task_id)
        return task

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
    ) -> StoredTask:
        """`TaskStore.transition`; leaving pending or running withdraws the task's delivery
        (a running attempt is told to stop), and with `deliver` a task entering pending is
        handed to delivery, in the same step."""
        response = await self._run(
            "transition",
            session_key,
            task_id,
            target.value,
            "" if expect is None else "," + ",".join(status.value for status in expect) + ",",
            "" if attempt is None else attempt,
            _json_or_empty(reason),
            _json_or_empty(error),
            _json_or_empty(result) if target is TaskStatus.COMPLETED else b"",
            "1" if automatic else "",
            "1" if dead_letter else "",
            "1" if deliver else "",
            "",
            op=new_op(),
        )
        return self._changed(response, task_id, action or ACTIONS[target])

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
        """A progress `report` and log `lines` of running `attempt`, in one script (what a
        worker's flush writes; `skipped`: lines it dropped before sending, counted as dropped).
        False (nothing changes) when the task no longer runs that attempt."""
        want = bool(self.events.listeners)
        response = await self._run(
            "progress",
            session_key,
            task_id,
            attempt,
            b"" if report is None else _encode(report[0]),
            b"" if report is None else _json_or_empty(report[1]),
            b"" if report is None else _json_or_empty(report[2]),
            "1" if want else "0",
            skipped or "",
            *[_encode(line) for line in lines],
            op=new_op() if lines else "",
        )
        if response == 0:
            return False
        if want and isinstance(response, bytes):
            task = _task(response)
            if report is not None:
                self.events.publish(TaskEvent.of(task, EventType.PROGRESS))
            self._logged(task, len(lines))
        return True

    def _logged(self, task: Task, added: int) -> None:
        """Tell the hub of the last `added` lines `task` got (those still kept are its tail)."""
        if added and task.logs and self.events.listeners:
            self.events.publish(LogEvent.of(task, task.logs[-added:]))

    async def recent_durations(self, executors: Collection[str]) -> dict[str, list[int]]:
        names = list(executors)
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.lrange(self.keys.durations(name), 0, RECENT_DURATIONS - 1)
                found = await pipe.execute()
        return {name: [int(value) for value in values] for name, values in zip(names, found, strict=True) if values}

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
    ) -> StoredTask:
        """`TaskStore.finish`; `skipped`: log lines the worker dropped before sending (counted)."""
        response = await self._run(
            "finish",
            session_key,
            task_id,
            attempt,
            owner or "",
            finish.kind,
            _json_or_empty(finish.result) if finish.kind == "completed" else b"",
            _json_or_empty(finish.error),
            _encode(finish.reason),
            "1" if finish.dead_letter else "",
            finish.retry_delay_ms,
            _json_or_empty(finish.retry_reason),
            b"" if report is None else _encode(report[0]),
            b"" if report is None else _json_or_empty(report[1]),
            b"" if report is None else _json_or_empty(report[2]),
            RECENT_DURATIONS,
            skipped or "",
            *[_encode(line) for line in lines],
            op=new_op(),
        )
        action = "complete" if finish.kind == "completed" else "fail"
        if lines and response[0] == b"ok":
            self._logged(_task(response[1]), len(lines))
        if finish.kind in ("completed", "failed"):
            return self._changed(response, task_id, action)
        # Failed, then pending again in the same step: the hooks see both changes.
        task = self._changed(response, task_id, action, hooks=False)
        used = task.auto_retries - 1 if finish.kind == "retry" else task.auto_retries
        failed = msgspec.structs.replace(task, status=TaskStatus.FAILED, error=finish.error, auto_retries=used)
        self._transitioned(failed, TaskStatus.RUNNING)
        self._transitioned(task, TaskStatus.FAILED)
        return task

    async def remove(self, session_key: str, task_id: str) -> StoredTask:
        response = await self._run("remove", session_key, task_id, op=new_op())
        kind = response[0]
        if kind == b"notfound":
            raise TaskNotFound(task_id)
        if kind == b"refused":
            raise refusal(task_id, TaskStatus.RUNNING, "delete")
        task = _task(response[1])
        for hook in self.events.on_removed:
            hook(task, None)
        self._publish(task, EventType.REMOVED, None)
        return task

    async def trim(self, retention: Retention, session_key: str | None = None) -> TrimResult:
        result = TrimResult()
        limits = (retention.max_completed, retention.max_failed, retention.max_cancelled)

        async def run(sessions: list[str]) -> bool:
            """Trim `sessions`; True when the budget ran out (call again)."""
            completed, failed, cancelled, left, removed = await self._run("trim", *limits, TRIM_BATCH, *sessions)
            result.completed += completed
            result.failed += failed
            result.cancelled += cancelled
            self._removed(removed)
            return int(left) <= 0

        await self._each_batch(run, session_key)
        return result

    async def expire(self, expiry: Expiry, session_key: str | None = None) -> ExpiryResult:
        result = ExpiryResult()
        reason = b""
        if expiry.pending_ttl_ms is not None:
            minutes = expiry.pending_ttl_ms / 60_000
            reason = _encode(f"expired: not started within {minutes:g} min (PENDING_TASK_TTL_MS)")
        limits = [
            "" if limit is None else limit
            for limit in (expiry.finished_ttl_ms, expiry.pending_ttl_ms, expiry.session_idle_ms)
        ]

        async def run(sessions: list[str]) -> bool:
            """Expire in `sessions`; True when the budget ran out (call again)."""
            finished, forgotten, held, left, cancelled, removed = await self._run(
                "expire", *limits, TRIM_BATCH, reason, *sessions
            )
            result.finished += finished
            result.sessions += forgotten
            result.session_tasks += held
            for raw in cancelled:
                task = _task(raw)
                self._transitioned(task, TaskStatus.PENDING)
                result.pending.append(task)
            self._removed(removed)
            return int(left) <= 0

        await self._each_batch(run, session_key)
        return result

    async def _each_batch(self, run: Callable[[list[str]], Awaitable[bool]], session_key: str | None) -> None:
        """Call `run` on one session, or on every session a batch at a time, again while
        it says its budget ran out."""
        if session_key is not None:
            while await run([session_key]):
                pass
            return
        for sessions in await self._session_batches():
            while await run(sessions):
                pass

    async def _session_batches(self) -> list[list[str]]:
        batches: list[list[str]] = []
        cursor = 0
        while True:
            with reachable(self.availability):
                cursor, members = await self.redis.sscan(self.keys.sessions, cursor, count=TRIM_SESSIONS)
            sessions = [member.decode() for member in members]
            batches += [sessions[i : i + TRIM_SESSIONS] for i in range(0, len(sessions), TRIM_SESSIONS)]
            if cursor == 0:
                return batches

    async def take_token(self, bucket: str, rate: float, burst: int) -> float:
        wait = await self._run("token", bucket, repr(float(rate)), burst, op=new_op())
        return float(wait)

    # -- delivery: the producer's and the worker's steps ---------------------------------

    async def deliver(self, session_key: str, task_id: str, due_ms: int | None = None) -> StoredTask:
        """Hand a pending task to delivery (see `deliver.lua`); `InvalidTransition` unless pending."""
        response = await self._run("deliver", session_key, task_id, "" if due_ms is None else due_ms, op=new_op())
        return self._changed(response, task_id, "start", hooks=False)  # no status changed

    async def claim(self, session_key: str, task_id: str, attempt: int, worker: str, job_key: str) -> StoredTask:
        """Start attempt `attempt`, dispatched to `worker` as SAQ job `job_key`: the task is
        running, owned by the worker. `InvalidTransition` when that dispatch is no longer the
        task's (cancelled, delivered afresh elsewhere, already run)."""
        response = await self._run("claim", session_key, task_id, attempt, worker, job_key, op=new_op())
        return self._changed(response, task_id, "start")

    async def redeliver(self, session_key: str, task_id: str, job_key: str) -> bool:
        """Deliver afresh a task dispatched as `job_key` that never started (a no-op once it moved on)."""
        return bool(await self._run("redeliver", session_key, task_id, job_key))

    async def join(self, worker: str, slots: int, lease_ms: int, description: bytes, *, retiring: bool = False) -> bool:
        """Renew the worker's lease; True when its slots (re)joined the pool. `retiring`:
        keep the lease but leave the pool (nothing more is dispatched to it)."""
        return bool(await self._run("worker", worker, slots, lease_ms, description, "1" if retiring else ""))

    async def retire(self, worker: str) -> None:
        """Dispatch nothing more to a worker (a lost or leaving one, before its tasks go
        elsewhere); it stays known until it is forgotten."""
        await self._run("retire", worker)

    async def forget_worker(self, worker: str, *, leaving: bool = False) -> int:
        """Forget a worker (see `forget_worker.lua`): 1 done, 0 its lease lives, -1 tasks left."""
        forgotten = int(await self._run("forget_worker", worker, "1" if leaving else ""))
        if forgotten == 1 and not leaving:  # a lost worker: no longer a suspect
            await cast("Awaitable[int]", self.redis.hdel(self.keys.suspects, worker))
        return forgotten

    async def promote(self, most: int = 500) -> int | None:
        """Deliver the delayed tasks whose time has come; the next due time (ms), or None."""
        _, next_due = await self._run("promote", most)
        return int(float(next_due)) if next_due else None

    async def workers(self) -> dict[str, int]:
        """The workers in the pool and their slots."""
        with reachable(self.availability):
            flat = await cast("Awaitable[dict[bytes, bytes]]", self.redis.hgetall(self.keys.workers))
        return {worker.decode(): int(slots) for worker, slots in flat.items()}

    async def leases(self, workers: Sequence[str]) -> list[bool]:
        """Whether each worker's lease is alive."""
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=False) as pipe:
                for worker in workers:
                    pipe.exists(self.keys.lease(worker))
                found = await pipe.execute()
        return [bool(n) for n in found]

    async def lost_workers(self, me: str, lease_ms: int) -> list[str]:
        """The workers other than `me` without a lease for half a lease or more: a worker
        without one is first a suspect (``P suspects``, when it was first seen so, by Redis's
        clock), lost half a lease later."""
        workers = [worker for worker in await self.workers() if worker != me]
        if not workers:
            return []
        alive = await self.leases(workers)
        redis = cast(Any, self.redis)
        suspects = self.keys.suspects
        seconds, micros = await redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        async with redis.pipeline(transaction=False) as pipe:
            for worker, ok in zip(workers, alive, strict=True):
                if ok:
                    pipe.hdel(suspects, worker)
                else:
                    pipe.hsetnx(suspects, worker, now_ms)
                    pipe.hget(suspects, worker)
            replies = await pipe.execute()
        gone: list[str] = []
        i = 0
        for worker, ok in zip(workers, alive, strict=True):
            if ok:
                i += 1
                continue
            since = int(replies[i + 1] or now_ms)
            i += 2
            if now_ms - since >= lease_ms / 2:
                gone.append(worker)
        return gone

    async def take_lock(self, name: str, holder: str, ms: int) -> bool:
        """Take the lock of a one-at-a-time duty for `ms` ms (``P <name>``), unless another holds it."""
        return bool(await cast(Any, self.redis).set(self.keys.lock(name), holder, nx=True, px=ms))

    async def dispatched_to(self, worker: str) -> list[Dispatched]:
        """The tasks dispatched to `worker` (queued on it or running there)."""
        with reachable(self.availability):
            members = await cast("Awaitable[set[bytes]]", self.redis.smembers(self.keys.dispatched_to(worker)))
            ids = [raw.decode() for raw in members]
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hmget(
                        self.keys.task(task_id), ["_s", "status", "attempts", "autoRetries", "maxRetries", "_jk", "_wk"]
                    )
                rows = await pipe.execute()
        found = []
        for task_id, (session, status, attempts, auto, most, job, runner) in zip(ids, rows, strict=True):
            if session is None:
                with reachable(self.availability):
                    await cast("Awaitable[int]", self.redis.srem(self.keys.dispatched_to(worker), task_id))
                continue
            found.append(
                Dispatched(
                    task_id, session.decode(), msgspec.json.decode(status), int(attempts), int(auto or 0),
                    int(most or 0), (job or b"").decode(), (runner or b"").decode(),
                )
            )  # fmt: skip
        return found

    async def running_states(self, task_ids: Sequence[str]) -> list[tuple[str | None, int | None]]:
        """The status and attempt of each task (what a worker checks its attempts against)."""
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    pipe.hmget(self.keys.task(task_id), ["status", "attempts"])
                rows = await pipe.execute()
        return [
            (msgspec.json.decode(status) if status else None, int(number) if number is not None else None)
            for status, number in rows
        ]

    async def verify(self, session_key: str | None = None) -> list[tuple[str, str, int, int]]:
        """Check the counters against the indexes and repair any that drifted, in one
        session or (None) every session and then the totals and what each client holds;
        returns each repair as ``(session, field, was, is)`` (``session`` is ``""`` for the
        totals, ``"executor <name>"`` for the counts by executor, ``"client <key>"`` for a
        client)."""
        repairs: list[tuple[str, str, int, int]] = []
        batches = [[session_key]] if session_key is not None else await self._session_batches()
        for sessions in batches:
            flat = await self._run("verify", *sessions)
            repairs += [(flat[i].decode(), flat[i + 1].decode(), int(flat[i + 2]), int(flat[i + 3]))
                        for i in range(0, len(flat), 4)]  # fmt: skip
        if session_key is None:
            flat = await self._run("verify")
            repairs += [(flat[i].decode(), flat[i + 1].decode(), int(flat[i + 2]), int(flat[i + 3]))
                        for i in range(0, len(flat), 4)]  # fmt: skip
        return repairs

    # -- across sessions (the admin view) ----------------------------------------------

    async def list_sessions(self, *, limit: int, offset: int = 0) -> SessionPage:
        """From `P changed` (sessions by their last change): O(log sessions + page)."""
        total, flat = await self._run("sessions", offset, limit)
        page = [
            SessionSummary(
                key=flat[i].decode(),
                by_status={status: int(flat[i + 2 + j]) for j, status in enumerate(TaskStatus)},
                last_active_ms=int(float(flat[i + 1])),
            )
            for i in range(0, len(flat), 7)
        ]
        return SessionPage(page, int(total))

    async def query_all(
        self, where: TaskFilter, *, limit: int | None = None, offset: int = 0, cursor: str | None = None
    ) -> TaskPage:
        """`query` on the indexes of every task (`P all`, `P as:`...): the work is the page's."""
        return await self._query(None, where, limit=limit, offset=offset, cursor=cursor)

    async def find(self, task_id: str) -> Task:
        with reachable(self.availability):
            session = await cast("Awaitable[bytes | None]", self.redis.hget(self.keys.task(task_id), "_s"))
        if session is None:
            raise TaskNotFound(task_id)
        return await self.get(session.decode(), task_id)

    async def live_workers(self) -> list[WorkerInfo]:
        """The workers in the pool with a lease (a retired one, leaving, is listed until it is
        gone), as their leases describe them, oldest first; the lease age is Redis's time
        since the last renewal (see `workers.lua`)."""
        now, rows = await self._run("workers")
        found = []
        for worker, lease, slots, running, _retired in rows:
            about = msgspec.json.decode(lease)
            found.append(
                WorkerInfo(
                    id=worker.decode(),
                    host=str(about.get("host", "")),
                    pid=int(about.get("pid", 0)),
                    executors=[str(name) for name in about.get("executors", ())],
                    running=int(running),
                    concurrency=int(slots),
                    started_at=int(about.get("startedAt", 0)),
                    lease_age_ms=max(0, int(now) - int(about.get("renewedAt", now))),
                )
            )
        return sorted(found, key=lambda w: (w.started_at, w.id))

    async def executor_loads(self, executors: Sequence[str]) -> dict[str, ExecutionLoad]:
        """By executor (`executors`, and any other with tasks in delivery or workers): tasks
        running, waiting (in delivery, not running) and the workers that run it, from the
        counts kept by the scripts (`P xq`, `P offered`) and the index of running tasks:
        O(executors + running tasks) (see `queues.lua`)."""
        flat = await self._run("queues", *executors)
        loads = {}
        for i in range(0, len(flat), 4):
            in_delivery, running, workers = int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3])
            loads[flat[i].decode()] = ExecutionLoad(running=running, queued=max(0, in_delivery - running),
                                                    workers=workers)  # fmt: skip
        return loads

    # -- events -------------------------------------------------------------------------

    def _changed(self, response: list[Any], task_id: str, action: str, *, hooks: bool = True) -> StoredTask:
        """The task a script changed (its refusal raised); the hooks told of the change."""
        kind = response[0]
        if kind == b"notfound":
            raise TaskNotFound(task_id)
        if kind == b"refused":
            raise refusal(task_id, TaskStatus(response[1].decode()), action)
        task = _task(response[1])
        if hooks:
            self._transitioned(task, task.history[-1].previous if task.history else None)
        self._removed(response[2])
        return task

    def _transitioned(self, task: Task, previous: TaskStatus | None) -> None:
        for hook in self.events.on_transition:
            hook(task, previous)
        self._publish(task, EventType.TRANSITION, previous)

    def _removed(self, flat: list[bytes]) -> None:
        """Tell the hooks about the tasks a script removed by itself: ``[cause, JSON, ...]``."""
        for i in range(0, len(flat), 2):
            task = _task(flat[i + 1])
            cause = flat[i].decode()
            for hook in self.events.on_removed:
                hook(task, cause)
            self._publish(task, EventType.REMOVED, None)

    def _publish(self, task: Task, kind: EventType, previous: TaskStatus | None) -> None:
        if self.events.listeners:
            self.events.publish(TaskEvent.of(task, kind, previous))


def _cursor(cursor: str | None) -> str:
    if cursor is None:
        return ""
    if not cursor.isdigit():
        from async_tasks.errors import InvalidParams

        raise InvalidParams(f"cursor {cursor!r} is not one a page gave.", field="cursor")
    return cursor

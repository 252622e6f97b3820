"""The Redis task store: tasks shared by every API and worker process.

Each method is one Lua script (`async_tasks.backends.redis.scripts`), so every
multi-key change is atomic and time comes from Redis (``TIME``), never from a machine's
clock (a test clock, `FakeClock`, is passed in instead). The store also keeps where each
task's delivery is (parked in its session's line, delayed, or dispatched to a worker's
SAQ queue) and changes it in the same script as the task, so every hand-off between
processes is one step; the producer (`RedisExecution`) and the worker (`RedisWorker`)
call those scripts through the methods of `delivery.py`. Keys: `keys.py`.

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

The store is one class built of parts, one concept a module: `store_base.py` (the client,
the script runner, replies), `reads.py`, `delivery.py` (the producer's, worker's and
reconciler's steps), `upkeep.py` (retention, expiry, the counters' check) and here the
changes a request makes (create, transition, progress, finish, remove, tokens).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from async_tasks.backends.queued.store import new_op
from async_tasks.backends.redis.connection import Availability, reachable
from async_tasks.backends.redis.delivery import RedisDelivery
from async_tasks.backends.redis.reads import RedisReads
from async_tasks.backends.redis.store_base import decode_task, encode, json_or_empty
from async_tasks.backends.redis.upkeep import RedisUpkeep
from async_tasks.errors import IdempotentTaskRemoved, TaskNotFound
from async_tasks.events import EventType, TaskEvent
from async_tasks.store.base import (
    ACTIONS,
    RECENT_DURATIONS,
    CreateLimits,
    Finish,
    Idempotency,
    Report,
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


class RedisTaskStore(RedisReads, RedisDelivery, RedisUpkeep):
    """`TaskStore` in Redis, shared by every process of a deployment.

    Build it with a client (`redis.asyncio.Redis`, ``decode_responses=False``) or a
    factory of one: with a factory the client is made when first used and `aclose`
    forgets it, so the same store can serve one event loop after another.
    """

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
            encode(task.id),
            "sessionKey",
            encode(task.session_key),
            "executor",
            encode(task.executor),
            "name",
            encode(task.name),
            "params",
            encode(task.params),
            "description",
            encode(task.description),
            "metadata",
            encode(task.metadata),
            "tags",
            encode(task.tags),
            "priority",
            encode(task.priority),
            "timeoutMs",
            encode(task.timeout_ms),
            "maxRetries",
            encode(task.max_retries),
            "requestId",
            encode(task.request_id),
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
        created = decode_task(payload)
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
            json_or_empty(reason),
            json_or_empty(error),
            json_or_empty(result) if target is TaskStatus.COMPLETED else b"",
            "1" if automatic else "",
            "1" if dead_letter else "",
            "1" if deliver else "",
            "",
            op=new_op(),
        )
        return self._changed(response, task_id, action or ACTIONS[target])

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
            b"" if report is None else encode(report[0]),
            b"" if report is None else json_or_empty(report[1]),
            b"" if report is None else json_or_empty(report[2]),
            "1" if want else "0",
            skipped or "",
            *[encode(line) for line in lines],
            op=new_op() if lines else "",
        )
        if response == 0:
            return False
        if want and isinstance(response, bytes):
            task = decode_task(response)
            if report is not None:
                self.events.publish(TaskEvent.of(task, EventType.PROGRESS))
            self._logged(task, len(lines))
        return True

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
            json_or_empty(finish.result) if finish.kind == "completed" else b"",
            json_or_empty(finish.error),
            encode(finish.reason),
            "1" if finish.dead_letter else "",
            finish.retry_delay_ms,
            json_or_empty(finish.retry_reason),
            b"" if report is None else encode(report[0]),
            b"" if report is None else json_or_empty(report[1]),
            b"" if report is None else json_or_empty(report[2]),
            RECENT_DURATIONS,
            skipped or "",
            *[encode(line) for line in lines],
            op=new_op(),
        )
        action = "complete" if finish.kind == "completed" else "fail"
        if lines and response[0] == b"ok":
            self._logged(decode_task(response[1]), len(lines))
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
        task = decode_task(response[1])
        for hook in self.events.on_removed:
            hook(task, None)
        self._publish(task, EventType.REMOVED, None)
        return task

    async def take_token(self, bucket: str, rate: float, burst: int) -> float:
        wait = await self._run("token", bucket, repr(float(rate)), burst, op=new_op())
        return float(wait)

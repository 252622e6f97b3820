"""The PostgreSQL task store: tasks shared by every API and worker process, in tables a
person can read and query (`schema.py`).

Each change is one call of a function of `sql/` (``op_<name>``), one transaction: the
task's row, its history, the session's and the deployment's counts, retention, the
task's delivery (its session's line, the delayed tasks, the SAQ job of its worker) and the
events all change together, every status change a compare-and-set on status and attempt
(`move` in `sql/prelude_changes.sql`), time from the database (``clock_timestamp()``; a test
clock, `FakeClock`, passes its own). Changes take the deployment's advisory lock, so they
apply one at a time as Redis scripts do; reads take none. The producer
(`PostgresExecution`) and the worker (`PostgresWorker`) call the delivery functions
through the methods of `delivery.py`.

Every write is safe to run twice: a call whose connection broke (its reply lost, perhaps
after the COMMIT) is sent again on another connection (`Database.call`), with the same
operation id, and a function that finds it on its task answers as the first run did; a
create finds its own task; a token taken is not taken again; a removal finds its answer.

Every change is published, from inside its transaction, with NOTIFY on the deployment's
channel (``<schema>_events``) as the envelope the push streams read, after the session's
key: a browser connected to any API process sees changes made by any process, in the
order they committed. Changes made through this object are published on `events` too, and
its `on_removed` hooks learn what the functions removed by themselves and why.

Params, metadata and results are stored as ``json`` (kept as sent) and come back as
`StoredTask`s, their JSON undecoded (the worker decodes them for `execute`, `TaskSystem`
for its callers); `query` returns summaries. A session belongs to the client that created
it (`CreateLimits.client`): what each client holds is kept in the same transactions, and
`create` makes room from the largest holder as the other stores do (``room_for`` in
`sql/create.sql`). A session forgotten whole (idle, or to make room) is announced on its
channel (an ``ended`` envelope), so its push streams end on every API process.
PostgreSQL's text cannot hold the NUL character: one in a task's texts is stored as U+FFFD.

The store is one class built of parts, one concept a module: `store_base.py` (the pool,
the function calls, replies), `reads.py`, `delivery.py` (the producer's, worker's and
reconciler's steps), `upkeep.py` (retention, expiry, the counters' check) and here the
changes a request makes (create, transition, progress, finish, remove, tokens).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import msgspec

from async_tasks.backends.postgres.connection import Database
from async_tasks.backends.postgres.delivery import PostgresDelivery
from async_tasks.backends.postgres.reads import PostgresReads
from async_tasks.backends.postgres.store_base import (
    decode_reply,
    decode_task,
    json_or_none,
    json_text,
    lines_json,
    pg_text,
)
from async_tasks.backends.postgres.upkeep import PostgresUpkeep
from async_tasks.backends.queued.store import new_op
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
from async_tasks.task import Task, TaskStatus
from async_tasks.task_log import LogLine


class PostgresTaskStore(PostgresReads, PostgresDelivery, PostgresUpkeep):
    """`TaskStore` in PostgreSQL, shared by every process of a deployment."""

    def sibling(self, database: Database) -> PostgresTaskStore:
        """The same store through another pool: the same schema, events, policy and limits."""
        twin = PostgresTaskStore(database, clock=self.clock, events=self.events)
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
    ) -> tuple[Task, bool]:
        """`TaskStore.create`; with `deliver`, the task is handed to delivery in the same
        transaction (parked in its session's line, or delayed until `due_ms`)."""
        reply = decode_reply(
            await self._run(
                "create",
                task.session_key,
                task.id,
                limits.max_active_per_session,
                pg_text(idempotency.key) if idempotency is not None else None,
                idempotency.fingerprint.hex() if idempotency is not None else None,
                limits.max_tasks,
                limits.max_sessions,
                deliver,
                due_ms,
                limits.client,
                limits.max_tasks_per_client,
                limits.max_sessions_per_client,
                pg_text(task.executor),
                pg_text(task.name),
                pg_text(task.description),
                json_text(task.params),
                json_text(task.metadata),
                [pg_text(tag) for tag in task.tags],
                task.priority,
                task.timeout_ms,
                task.max_retries,
                pg_text(task.request_id),
                op=new_op(),
            )
        )
        kind, payload = reply.kind, reply.payload
        if kind == "conflict":
            assert idempotency is not None
            raise idempotency_conflict(idempotency.key, msgspec.json.decode(payload))
        if kind == "gone":
            assert idempotency is not None
            raise IdempotentTaskRemoved(idempotency.key, msgspec.json.decode(payload))
        if kind == "quota":
            raise quota_exceeded(limits.max_active_per_session, msgspec.json.decode(payload))
        if kind == "sessions":
            assert limits.max_sessions is not None
            raise too_many_sessions(limits.max_sessions, msgspec.json.decode(payload))
        if kind == "tasks":
            assert limits.max_tasks is not None
            raise too_many_tasks(limits.max_tasks, msgspec.json.decode(payload))
        if kind == "client_sessions":
            assert limits.max_sessions_per_client is not None
            raise client_has_too_many_sessions(limits.max_sessions_per_client, msgspec.json.decode(payload))
        if kind == "client_tasks":
            assert limits.max_tasks_per_client is not None
            raise client_has_too_many_tasks(limits.max_tasks_per_client, msgspec.json.decode(payload))
        created = decode_task(payload)
        if kind == "replay":
            return created, True
        self._removed(reply.removed)  # what made room for it
        for hook in self.events.on_transition:
            hook(created, None)
        self._publish(created, EventType.TRANSITION, None)
        return created, False

    async def replay(self, session_key: str, idempotency: Idempotency) -> Task | None:
        reply = decode_reply(
            await self._call(
                "replay",
                self._now(),
                self._shared.config,
                session_key,
                pg_text(idempotency.key),
                idempotency.fingerprint.hex(),
            )
        )
        if reply.kind == "none":
            return None
        if reply.kind == "conflict":
            raise idempotency_conflict(idempotency.key, msgspec.json.decode(reply.payload))
        if reply.kind == "gone":
            raise IdempotentTaskRemoved(idempotency.key, msgspec.json.decode(reply.payload))
        return decode_task(reply.payload)

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
    ) -> Task:
        """`TaskStore.transition`; leaving pending or running withdraws the task's delivery
        (a running attempt is told to stop), and with `deliver` a task entering pending is
        handed to delivery, in the same transaction."""
        raw = await self._run(
            "transition",
            session_key,
            task_id,
            target.value,
            None if expect is None else [status.value for status in expect],
            attempt,
            pg_text(reason),
            pg_text(error),
            json_or_none(result) if target is TaskStatus.COMPLETED else None,
            automatic,
            dead_letter,
            deliver,
            None,
            op=new_op(),
        )
        return self._changed(raw, task_id, action or ACTIONS[target])

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
        """A progress `report` and log `lines` of running `attempt`, in one transaction (what a
        worker's flush writes; `skipped`: lines it dropped before sending, counted as dropped).
        False (nothing changes) when the task no longer runs that attempt."""
        want = bool(self.events.listeners)
        raw = await self.db.call(
            "SELECT op_progress(%s::bigint, %s, %s, %s, %s, %s::integer, %s::double precision, %s, %s, %s::boolean, "
            "%s::integer, %s::json)",
            (
                self._now(),
                self._shared.config,
                new_op() if lines else None,
                session_key,
                task_id,
                attempt,
                None if report is None else report[0],
                None if report is None else pg_text(report[1]),
                None if report is None else pg_text(report[2]),
                want,
                skipped,
                lines_json(lines),
            ),
        )
        if raw == "0":
            return False
        if want and raw != "1":
            task = decode_task(raw)
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
    ) -> Task:
        """`TaskStore.finish`; `skipped`: log lines the worker dropped before sending (counted)."""
        raw = await self._run(
            "finish",
            session_key,
            task_id,
            attempt,
            owner,
            finish.kind,
            json_or_none(finish.result) if finish.kind == "completed" else None,
            pg_text(finish.error),
            pg_text(finish.reason),
            finish.dead_letter,
            finish.retry_delay_ms,
            pg_text(finish.retry_reason),
            None if report is None else report[0],
            None if report is None else pg_text(report[1]),
            None if report is None else pg_text(report[2]),
            RECENT_DURATIONS,
            skipped,
            lines_json(lines),
            op=new_op(),
        )
        action = "complete" if finish.kind == "completed" else "fail"
        if lines and raw.startswith('["ok"'):
            self._logged(decode_task(decode_reply(raw).payload), len(lines))
        if finish.kind in ("completed", "failed"):
            return self._changed(raw, task_id, action)
        # Failed, then pending again in the same transaction: the hooks see both changes.
        task = self._changed(raw, task_id, action, hooks=False)
        used = task.auto_retries - 1 if finish.kind == "retry" else task.auto_retries
        failed = msgspec.structs.replace(task, status=TaskStatus.FAILED, error=finish.error, auto_retries=used)
        self._transitioned(failed, TaskStatus.RUNNING)
        self._transitioned(task, TaskStatus.FAILED)
        return task

    async def remove(self, session_key: str, task_id: str) -> Task:
        reply = decode_reply(await self._run("remove", session_key, task_id, op=new_op()))
        if reply.kind == "notfound":
            raise TaskNotFound(task_id)
        if reply.kind == "refused":
            raise refusal(task_id, TaskStatus.RUNNING, "delete")
        task = decode_task(reply.payload)
        for hook in self.events.on_removed:
            hook(task, None)
        self._publish(task, EventType.REMOVED, None)
        return task

    async def take_token(self, bucket: str, rate: float, burst: int) -> float:
        wait = await self.db.call(
            "SELECT op_token(%s::bigint, %s, %s, %s::double precision, %s::integer)",
            (self._now(), new_op(), pg_text(bucket), float(rate), burst),
        )
        return float(wait)

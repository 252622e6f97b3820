"""The PostgreSQL task store: tasks shared by every API and worker process, in tables a
person can read and query (`schema.py`).

Each change is one call of a function of `sql/` (``op_<name>``), one transaction: the
task's row, its history, the session's and the deployment's counts, retention, the
task's delivery (its session's line, the delayed tasks, the SAQ job of its worker) and the
events all change together, every status change a compare-and-set on status and attempt
(`move` in `sql/prelude.sql`), time from the database (``clock_timestamp()``; a test
clock, `FakeClock`, passes its own). Changes take the deployment's advisory lock, so they
apply one at a time as Redis scripts do; reads take none. The producer
(`PostgresExecution`) and the worker (`PostgresWorker`) call the delivery functions
through the methods under "delivery" below.

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
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Final, cast

import msgspec

from async_tasks.backends.postgres.connection import Database
from async_tasks.backends.queued.store import Dispatched, RunLimits
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.errors import IdempotentTaskRemoved, InvalidParams, TaskNotFound
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

#: Tasks `trim` and `expire` change per call (a call holds the deployment's lock).
TRIM_BATCH: Final = 1000
#: Sessions `trim` and `expire` of every session look at per call.
TRIM_SESSIONS: Final = 200
#: Tasks a session stream's snapshot shows (the newest), and the largest result it carries.
SNAPSHOT_TASKS: Final = 200
SNAPSHOT_RESULT_BYTES: Final = 16_384

#: Each change function's arguments, as SQL types (`_run` casts each placeholder).
_COMMON: Final = ("bigint", "text", "boolean", "text")
SIGNATURES: Final[dict[str, tuple[str, ...]]] = {
    "create": (*_COMMON, "text", "text", "integer", "text", "text", "integer", "integer", "boolean", "bigint",
               "text", "integer", "integer", "text", "text", "text", "json", "json", "text[]", "integer", "integer",
               "integer", "text"),
    "transition": (*_COMMON, "text", "text", "text", "text[]", "integer", "text", "text", "json", "boolean",
                   "boolean", "boolean", "bigint"),
    "start": (*_COMMON, "text", "text", "bigint"),
    "claim": (*_COMMON, "text", "text", "integer", "text", "text"),
    "finish": (*_COMMON, "text", "text", "integer", "text", "text", "json", "text", "text", "boolean", "bigint",
               "text", "double precision", "text", "text", "integer", "integer", "json"),
    "remove": (*_COMMON, "text", "text"),
    "trim": (*_COMMON, "integer", "integer", "integer", "integer", "text[]"),
    "expire": (*_COMMON, "bigint", "bigint", "bigint", "integer", "text", "text[]"),
}  # fmt: skip

_STATUSES: Final = tuple(status.value for status in TaskStatus)
_encode = msgspec.json.Encoder().encode
_decode_task = msgspec.json.Decoder(StoredTask).decode
_encode_lines = msgspec.json.Encoder().encode


class _Reply(msgspec.Struct, array_like=True):
    """What a change function answers: ["ok", task, [[cause, task], ...]], ["notfound"],
    ["refused", status], or its own kinds (create's)."""

    kind: str
    payload: msgspec.Raw = msgspec.Raw(b"null")
    removed: list[tuple[str, msgspec.Raw]] = msgspec.field(default_factory=list)


_decode_reply = msgspec.json.Decoder(_Reply).decode


class _Page(msgspec.Struct):
    total: int
    tasks: list[StoredTask]
    next: str | None = None


_decode_page = msgspec.json.Decoder(_Page).decode


class _AllPage(msgspec.Struct):
    total: int
    tasks: list[StoredTask]
    seqs: list[int]


_decode_removed = msgspec.json.Decoder(list[tuple[str, msgspec.Raw]]).decode


class _Description(msgspec.Struct):
    """What a worker says of itself (`QueuedWorker.description`)."""

    host: str = ""
    pid: int = 0
    slots: int = 0
    executors: list[str] = msgspec.field(default_factory=list)


def _task(raw: bytes | str) -> StoredTask:
    task = _decode_task(raw)
    _whole(task)
    return task


def _whole(task: Task) -> None:
    # JSON has one kind of number: a whole percent decodes as 45.0, while the reporter
    # keeps it 45 (clients see `45`, as in memory mode).
    progress = task.progress
    if progress.is_integer():
        task.progress = int(progress)


def _text(value: str | None) -> str | None:
    """A text PostgreSQL can store: NUL (which its text type cannot hold) as U+FFFD."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def _json(value: Any) -> str:
    return _encode(value).decode()


def _lines(lines: Sequence[LogLine]) -> str | None:
    """Log lines as the functions take them: a JSON array (their texts storable), or None."""
    if not lines:
        return None
    clean = [line if "\x00" not in line.message else msgspec.structs.replace(line, message=_text(line.message) or "")
             for line in lines]  # fmt: skip
    return _encode_lines(clean).decode()


def _json_or_none(value: Any) -> str | None:
    return None if value is None else _json(value)


def new_op() -> str:
    """A fresh operation id: what makes a re-sent write answer "done"."""
    return os.urandom(9).hex()


class _Shared:
    """What a store and its siblings (other pools on the same schema) share."""

    __slots__ = ("config", "limits", "policy")

    def __init__(self, policy: StorePolicy, limits: RunLimits) -> None:
        self.policy = policy
        self.limits = limits
        self.config = _config(policy, limits)


def _config(policy: StorePolicy, limits: RunLimits) -> str:
    """The functions' settings argument (see `sql/prelude.sql`)."""
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


class PostgresTaskStore:
    """`TaskStore` in PostgreSQL, shared by every process of a deployment."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock = SYSTEM_CLOCK,
        events: EventHub | None = None,
        policy: StorePolicy | None = None,
        limits: RunLimits | None = None,
    ) -> None:
        self.db = database
        self.schema = database.schema
        self.clock = clock
        self.events = events or EventHub()
        self._shared = _Shared(policy or StorePolicy(), limits or RunLimits())
        # Time from PostgreSQL, unless a test clock is given: then its time is passed in.
        self._clock_time = type(clock) is not Clock

    def sibling(self, database: Database) -> PostgresTaskStore:
        """The same store through another pool: the same schema, events, policy and limits."""
        twin = PostgresTaskStore(database, clock=self.clock, events=self.events)
        twin._shared = self._shared
        return twin

    @property
    def availability(self) -> Any:
        return self.db.availability

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

    async def aclose(self) -> None:
        """Close the pool; the next call opens a new one."""
        await self.db.aclose()

    async def ping(self) -> bool:
        """Whether PostgreSQL answers now."""
        try:
            await self.db.call("SELECT 1")
        except Exception:
            return False
        return True

    def _now(self) -> int | None:
        return self.clock.now_ms() if self._clock_time else None

    async def _run(self, name: str, *args: Any, op: str | None = None) -> Any:
        """Call change function ``op_<name>``: the common arguments, then `args`."""
        want = bool(self.events.on_removed or self.events.listeners)
        return await self._call(name, self._now(), self._shared.config, want, op, *args)

    async def _call(self, name: str, *args: Any) -> Any:
        types = SIGNATURES.get(name)
        if types is None:
            placeholders = ", ".join(["%s"] * len(args))
        else:
            placeholders = ", ".join(f"%s::{kind}" for kind in types)
        return await self.db.call(f"SELECT op_{name}({placeholders})", args)

    async def _now_ms(self) -> int:
        """The store's time: the test clock's, or PostgreSQL's."""
        if self._clock_time:
            return self.clock.now_ms()
        return int(await self.db.call("SELECT db_now()"))

    # -- reads ---------------------------------------------------------------------

    async def get(self, session_key: str, task_id: str) -> Task:
        raw = await self.db.call(
            "SELECT task_json(t, true) FROM tasks t WHERE t.id = %s AND t.session_key = %s", (task_id, session_key)
        )
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
        page = _decode_page(
            await self.db.call(
                "SELECT op_query(%s, %s, %s, %s, %s::boolean, %s::integer, %s::integer, %s::bigint)",
                (
                    session_key,
                    where.status.value if where.status is not None else None,
                    where.executor,
                    where.tag,
                    where.dead_letter,
                    offset,
                    -1 if limit is None else limit,
                    _cursor(cursor),
                ),
            )
        )
        for task in page.tasks:
            _whole(task)
        return TaskPage(cast("list[Task]", page.tasks), page.total, page.next)

    async def snapshot(self, session_key: str, task_id: str | None = None) -> tuple[int, list[bytes]]:
        """The snapshot events (JSON) of the session's newest tasks (at most
        `SNAPSHOT_TASKS`, results over `SNAPSHOT_RESULT_BYTES` left out) or of one task,
        newest first, and the event sequence number they reflect, read at one moment:
        every change with a higher number happened after this read."""
        raw = await self.db.call(
            "SELECT op_snapshot(%s, %s, %s::integer, %s::integer)",
            (session_key, task_id, SNAPSHOT_TASKS, SNAPSHOT_RESULT_BYTES),
        )
        seq, events = msgspec.json.decode(raw, type=tuple[int, list[msgspec.Raw]])
        return seq, [bytes(event) for event in events]

    async def counts(self, session_key: str) -> SessionCounts:
        rows = await self.db.rows(
            "SELECT pending, running, completed, failed, cancelled, duration_ms FROM sessions WHERE key = %s",
            (session_key,),
        )
        values = rows[0] if rows else (0,) * 6
        by_status = {status: int(value) for status, value in zip(TaskStatus, values, strict=False)}
        completed = by_status[TaskStatus.COMPLETED]
        duration = int(values[-1])
        return SessionCounts(by_status=by_status, average_duration_ms=duration / completed if completed else 0.0)

    async def totals(self) -> StoreTotals:
        rows = await self.db.rows("SELECT pending, running, completed, failed, cancelled, sessions FROM totals")
        values = rows[0]
        by_status = {status: int(value) for status, value in zip(TaskStatus, values, strict=False)}
        return StoreTotals(by_status=by_status, sessions=int(values[-1]))

    async def waiting(self) -> tuple[int, int]:
        """Tasks waiting for a slot in every session (parked), and tasks dispatched to a
        worker that has not started them yet."""
        rows = await self.db.rows("SELECT parked, dispatched, running FROM totals")
        parked, dispatched, running = rows[0]
        return int(parked), max(0, int(dispatched) - int(running))

    async def queue_position(self, session_key: str, task_id: str) -> int | None:
        """A waiting task's place in its session's line (see `op_position`)."""
        position = await self.db.call("SELECT op_position(%s, %s)", (session_key, task_id))
        return None if position is None else int(position)

    async def queue_positions(self, session_key: str, task_ids: Sequence[str]) -> dict[str, int]:
        """`queue_position` of several tasks in one round trip (those not waiting are absent)."""
        if not task_ids:
            return {}
        rows = await self.db.rows(
            "SELECT id, op_position(%s, id) FROM unnest(%s::text[]) AS id", (session_key, list(task_ids))
        )
        return {task_id: int(place) for task_id, place in rows if place is not None}

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
        reply = _decode_reply(
            await self._run(
                "create",
                task.session_key,
                task.id,
                limits.max_active_per_session,
                _text(idempotency.key) if idempotency is not None else None,
                idempotency.fingerprint.hex() if idempotency is not None else None,
                limits.max_tasks,
                limits.max_sessions,
                deliver,
                due_ms,
                limits.client,
                limits.max_tasks_per_client,
                limits.max_sessions_per_client,
                _text(task.executor),
                _text(task.name),
                _text(task.description),
                _json(task.params),
                _json(task.metadata),
                [_text(tag) for tag in task.tags],
                task.priority,
                task.timeout_ms,
                task.max_retries,
                _text(task.request_id),
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
        created = _task(payload)
        if kind == "replay":
            return created, True
        self._removed(reply.removed)  # what made room for it
        for hook in self.events.on_transition:
            hook(created, None)
        self._publish(created, EventType.TRANSITION, None)
        return created, False

    async def replay(self, session_key: str, idempotency: Idempotency) -> Task | None:
        reply = _decode_reply(
            await self._call(
                "replay",
                self._now(),
                self._shared.config,
                session_key,
                _text(idempotency.key),
                idempotency.fingerprint.hex(),
            )
        )
        if reply.kind == "none":
            return None
        if reply.kind == "conflict":
            raise idempotency_conflict(idempotency.key, msgspec.json.decode(reply.payload))
        if reply.kind == "gone":
            raise IdempotentTaskRemoved(idempotency.key, msgspec.json.decode(reply.payload))
        return _task(reply.payload)

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
            _text(reason),
            _text(error),
            _json_or_none(result) if target is TaskStatus.COMPLETED else None,
            automatic,
            dead_letter,
            deliver,
            None,
            op=new_op(),
        )
        return self._changed(raw, task_id, action or ACTIONS[target])

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
                None if report is None else _text(report[1]),
                None if report is None else _text(report[2]),
                want,
                skipped,
                _lines(lines),
            ),
        )
        if raw == "0":
            return False
        if want and raw != "1":
            task = _task(raw)
            if report is not None:
                self.events.publish(TaskEvent.of(task, EventType.PROGRESS))
            self._logged(task, len(lines))
        return True

    def _logged(self, task: Task, added: int) -> None:
        """Tell the hub of the last `added` lines `task` got (those still kept are its tail)."""
        if added and task.logs and self.events.listeners:
            self.events.publish(LogEvent.of(task, task.logs[-added:]))

    async def recent_durations(self, executors: Collection[str]) -> dict[str, list[int]]:
        rows = await self.db.rows(
            "SELECT executor, runs[1:%s] FROM durations WHERE executor = ANY(%s)", (RECENT_DURATIONS, list(executors))
        )
        return {executor: [int(value) for value in runs] for executor, runs in rows if runs}

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
            _json_or_none(finish.result) if finish.kind == "completed" else None,
            _text(finish.error),
            _text(finish.reason),
            finish.dead_letter,
            finish.retry_delay_ms,
            _text(finish.retry_reason),
            None if report is None else report[0],
            None if report is None else _text(report[1]),
            None if report is None else _text(report[2]),
            RECENT_DURATIONS,
            skipped,
            _lines(lines),
            op=new_op(),
        )
        action = "complete" if finish.kind == "completed" else "fail"
        if lines and raw.startswith('["ok"'):
            self._logged(_task(_decode_reply(raw).payload), len(lines))
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
        reply = _decode_reply(await self._run("remove", session_key, task_id, op=new_op()))
        if reply.kind == "notfound":
            raise TaskNotFound(task_id)
        if reply.kind == "refused":
            raise refusal(task_id, TaskStatus.RUNNING, "delete")
        task = _task(reply.payload)
        for hook in self.events.on_removed:
            hook(task, None)
        self._publish(task, EventType.REMOVED, None)
        return task

    async def trim(self, retention: Retention, session_key: str | None = None) -> TrimResult:
        result = TrimResult()
        limits = (retention.max_completed, retention.max_failed, retention.max_cancelled)

        async def run(sessions: list[str]) -> bool:
            """Trim `sessions`; True when the budget ran out (call again)."""
            raw = await self._run("trim", *limits, TRIM_BATCH, sessions)
            completed, failed, cancelled, left, removed = msgspec.json.decode(
                raw, type=tuple[int, int, int, int, list[tuple[str, msgspec.Raw]]]
            )
            result.completed += completed
            result.failed += failed
            result.cancelled += cancelled
            self._removed(removed)
            return left <= 0

        await self._each_batch(run, session_key)
        return result

    async def expire(self, expiry: Expiry, session_key: str | None = None) -> ExpiryResult:
        result = ExpiryResult()
        reason = None
        if expiry.pending_ttl_ms is not None:
            minutes = expiry.pending_ttl_ms / 60_000
            reason = f"expired: not started within {minutes:g} min (PENDING_TASK_TTL_MS)"
        limits = (expiry.finished_ttl_ms, expiry.pending_ttl_ms, expiry.session_idle_ms)

        async def run(sessions: list[str] | None) -> bool:
            """Expire in `sessions` (None: what belongs to none); True when the budget ran out."""
            raw = await self._run("expire", *limits, TRIM_BATCH, reason, sessions)
            finished, forgotten, held, left, cancelled, removed = msgspec.json.decode(
                raw, type=tuple[int, int, int, int, list[msgspec.Raw], list[tuple[str, msgspec.Raw]]]
            )
            result.finished += finished
            result.sessions += forgotten
            result.session_tasks += held
            for raw_task in cancelled:
                task = _task(raw_task)
                self._transitioned(task, TaskStatus.PENDING)
                result.pending.append(task)
            self._removed(removed)
            return left <= 0

        await self._each_batch(run, session_key)
        if session_key is None:
            await run(None)
        return result

    async def _each_batch(self, run: Callable[[list[str]], Awaitable[bool]], session_key: str | None) -> None:
        """Call `run` on one session, or on every session a batch at a time, again while
        it says its budget ran out."""
        if session_key is not None:
            while await run([session_key]):
                pass
            return
        after = ""
        while True:
            rows = await self.db.rows(
                "SELECT key FROM sessions WHERE key > %s ORDER BY key LIMIT %s", (after, TRIM_SESSIONS)
            )
            sessions = [row[0] for row in rows]
            if not sessions:
                return
            while await run(sessions):
                pass
            after = sessions[-1]

    async def take_token(self, bucket: str, rate: float, burst: int) -> float:
        wait = await self.db.call(
            "SELECT op_token(%s::bigint, %s, %s, %s::double precision, %s::integer)",
            (self._now(), new_op(), _text(bucket), float(rate), burst),
        )
        return float(wait)

    # -- delivery: the producer's and the worker's steps ---------------------------------

    async def deliver(self, session_key: str, task_id: str, due_ms: int | None = None) -> Task:
        """Hand a pending task to delivery (see `op_start`); `InvalidTransition` unless pending."""
        raw = await self._run("start", session_key, task_id, due_ms, op=new_op())
        return self._changed(raw, task_id, "start", hooks=False)  # no status changed

    async def claim(self, session_key: str, task_id: str, attempt: int, worker: str, job_key: str) -> Task:
        """Start attempt `attempt`, dispatched to `worker` as SAQ job `job_key`: the task is
        running, owned by the worker. `InvalidTransition` when that dispatch is no longer the
        task's (cancelled, delivered afresh elsewhere, already run)."""
        raw = await self._run("claim", session_key, task_id, attempt, worker, job_key, op=new_op())
        return self._changed(raw, task_id, "start")

    async def redeliver(self, session_key: str, task_id: str, job_key: str) -> bool:
        """Deliver afresh a task dispatched as `job_key` that never started (a no-op once it moved on)."""
        return bool(
            await self.db.call(
                "SELECT op_redeliver(%s::bigint, %s, %s, %s, %s)",
                (self._now(), self._shared.config, session_key, task_id, job_key),
            )
        )

    async def join(
        self, worker: str, queue: str, slots: int, lease_ms: int, description: bytes, *, retiring: bool = False
    ) -> bool:
        """Renew the worker's lease; True when its slots (re)joined the pool. `retiring`:
        keep the lease but leave the pool (nothing more is dispatched to it)."""
        return bool(
            await self.db.call(
                "SELECT op_worker(%s::bigint, %s, %s, %s, %s::integer, %s::bigint, %s::json, %s::boolean)",
                (self._now(), self._shared.config, worker, queue, slots, lease_ms, description.decode(), retiring),
            )
        )

    async def retire(self, worker: str) -> None:
        """Dispatch nothing more to a worker (a lost or leaving one, before its tasks go
        elsewhere); it stays known until it is forgotten."""
        await self.db.call("SELECT op_retire(%s)", (worker,))

    async def forget_worker(self, worker: str, *, leaving: bool = False) -> int:
        """Forget a worker (see `op_forget_worker`): 1 done, 0 its lease lives, -1 tasks left."""
        return int(
            await self.db.call("SELECT op_forget_worker(%s::bigint, %s, %s::boolean)", (self._now(), worker, leaving))
        )

    async def promote(self, most: int = 500) -> int | None:
        """Deliver the delayed tasks whose time has come; the next due time (ms), or None."""
        raw = await self.db.call(
            "SELECT op_promote(%s::bigint, %s, %s::integer)", (self._now(), self._shared.config, most)
        )
        _, next_due = msgspec.json.decode(raw, type=tuple[int, int | None])
        return next_due

    async def workers(self) -> dict[str, int]:
        """The workers in the pool and their slots."""
        return {worker: int(slots) for worker, slots in await self.db.rows("SELECT id, slots FROM workers")}

    async def lost_workers(self, me: str, lease_ms: int) -> list[str]:
        """The workers other than `me` without a lease for half a lease or more (see `op_lost_workers`)."""
        found: list[str] = await self.db.call(
            "SELECT op_lost_workers(%s::bigint, %s, %s::bigint)", (self._now(), me, lease_ms)
        )
        return found

    async def take_lock(self, name: str, holder: str, ms: int) -> bool:
        """Take (or keep) the lease of a one-at-a-time duty for `ms` ms."""
        return bool(
            await self.db.call("SELECT op_take_lock(%s::bigint, %s, %s, %s::bigint)", (self._now(), name, holder, ms))
        )

    async def dispatched_to(self, worker: str) -> list[Dispatched]:
        """The tasks dispatched to `worker` (queued on it or running there)."""
        rows = await self.db.rows(
            "SELECT id, session_key, status, attempts, auto_retries, max_retries, job_key, coalesce(runner, '') "
            "FROM tasks WHERE job_worker = %s AND delivery = 'q'",
            (worker,),
        )
        return [Dispatched(*row) for row in rows]

    async def queued_jobs(self, queue: str) -> dict[str, str]:
        """The SAQ jobs in `queue` (queued, or taken by its worker) and their status."""
        return dict(await self.db.rows("SELECT key, status FROM saq_jobs WHERE queue = %s", (queue,)))

    async def running_states(self, task_ids: Sequence[str]) -> list[tuple[str | None, int | None]]:
        """The status and attempt of each task (what a worker checks its attempts against)."""
        rows = await self.db.rows("SELECT id, status, attempts FROM tasks WHERE id = ANY(%s)", (list(task_ids),))
        found = {task_id: (status, attempts) for task_id, status, attempts in rows}
        return [found.get(task_id, (None, None)) for task_id in task_ids]

    async def verify(self, session_key: str | None = None) -> list[tuple[str, str, int, int]]:
        """Check the counters against the tasks and repair any that drifted, in one session
        or (None) every session and then the totals, the workers' slots in use and what each
        client holds; returns each repair as ``(session, field, was, is)`` (``"worker
        <id>"`` or ``"client <key>"`` in place of the session for those)."""
        repairs: list[tuple[str, str, int, int]] = []
        if session_key is not None:
            batches = [[session_key]]
        else:
            batches = []
            after = ""
            while rows := await self.db.rows(
                "SELECT key FROM sessions WHERE key > %s ORDER BY key LIMIT %s", (after, TRIM_SESSIONS)
            ):
                batches.append([row[0] for row in rows])
                after = rows[-1][0]
        for sessions in batches:
            raw = await self.db.call("SELECT op_verify(%s::text[])", (sessions,))
            repairs += msgspec.json.decode(raw, type=list[tuple[str, str, int, int]])
        if session_key is None:
            raw = await self.db.call("SELECT op_verify(NULL)")
            repairs += msgspec.json.decode(raw, type=list[tuple[str, str, int, int]])
        return repairs

    # -- across sessions (the admin view) ------------------------------------------------

    async def list_sessions(self, *, limit: int, offset: int = 0) -> SessionPage:
        rows = await self.db.rows(
            "SELECT key, pending, running, completed, failed, cancelled, changed_at, count(*) OVER () "
            "FROM sessions ORDER BY changed_at DESC, key LIMIT %s OFFSET %s",
            (limit, offset),
        )
        page = [
            SessionSummary(
                key=row[0],
                by_status={status: int(n) for status, n in zip(TaskStatus, row[1:6], strict=True)},
                last_active_ms=int(row[6]),
            )
            for row in rows
        ]
        total = int(rows[0][7]) if rows else int(await self.db.call("SELECT sessions FROM totals"))
        return SessionPage(page, total)

    async def query_all(
        self, where: TaskFilter, *, limit: int | None = None, offset: int = 0, cursor: str | None = None
    ) -> TaskPage:
        conditions = (
            "(%(status)s::text IS NULL OR status = %(status)s) AND (%(executor)s::text IS NULL OR executor = "
            "%(executor)s) AND (%(tag)s::text IS NULL OR %(tag)s = ANY(tags)) AND (%(dead)s::boolean IS NULL OR "
            "dead_lettered = %(dead)s)"
        )
        params = {
            "status": where.status.value if where.status is not None else None,
            "executor": where.executor,
            "tag": where.tag,
            "dead": where.dead_letter,
            "below": _cursor(cursor),
            "limit": None if limit is None else limit + 1,  # one more: is there a next page?
            "offset": offset,
        }
        raw = await self.db.call(
            "SELECT json_build_object('total', (SELECT count(*) FROM tasks WHERE " + conditions + "), "
            "'tasks', coalesce((SELECT json_agg(summary_json(x) ORDER BY x.seq DESC) FROM (SELECT * FROM tasks "
            "WHERE " + conditions + " AND (%(below)s::bigint IS NULL OR seq < %(below)s) ORDER BY seq DESC "
            "LIMIT %(limit)s OFFSET %(offset)s) x), '[]'), "
            "'seqs', coalesce((SELECT json_agg(x.seq ORDER BY x.seq DESC) FROM (SELECT seq FROM tasks WHERE "
            + conditions
            + " AND (%(below)s::bigint IS NULL OR seq < %(below)s) ORDER BY seq DESC "
            "LIMIT %(limit)s OFFSET %(offset)s) x), '[]'))::text",
            params,  # type: ignore[arg-type]
        )
        page = msgspec.json.decode(raw, type=_AllPage)
        for task in page.tasks:
            _whole(task)
        next_cursor = None
        if limit is not None and len(page.tasks) > limit:
            page.tasks = page.tasks[:limit]
            next_cursor = str(page.seqs[limit - 1])
        return TaskPage(cast("list[Task]", page.tasks), page.total, next_cursor)

    async def find(self, task_id: str) -> Task:
        raw = await self.db.call("SELECT task_json(t, true) FROM tasks t WHERE t.id = %s", (task_id,))
        if raw is None:
            raise TaskNotFound(task_id)
        return _task(raw)

    async def live_workers(self) -> list[WorkerInfo]:
        """The workers whose lease lives, with what they run (from their rows), oldest first."""
        rows = await self.db.rows(
            "SELECT w.id, w.description::text, w.slots, w.started_at, db_now() - w.renewed_at, "
            "(SELECT count(*) FROM tasks t WHERE t.runner = w.id AND t.status = 'running') "
            "FROM workers w WHERE w.lease_until > db_now() ORDER BY w.started_at, w.id"
        )
        found = []
        for worker_id, raw, slots, started_at, age, running in rows:
            said = msgspec.json.decode(raw, type=_Description)
            found.append(
                WorkerInfo(
                    id=worker_id, host=said.host, pid=said.pid, executors=said.executors, running=int(running),
                    concurrency=int(slots), started_at=int(started_at), lease_age_ms=max(0, int(age)),
                )
            )  # fmt: skip
        return found

    async def executor_loads(self, executors: Sequence[str]) -> dict[str, ExecutionLoad]:
        """Running attempts, tasks waiting for a slot, a worker or their time (a retry's
        backoff, a delayed start), and the live workers that run it, by executor."""
        rows = await self.db.rows(
            "SELECT e.name, "
            "(SELECT count(*) FROM tasks t WHERE t.executor = e.name AND t.status = 'running'), "
            "(SELECT count(*) FROM tasks t WHERE t.executor = e.name AND t.status = 'pending' AND t.delivery <> ''), "
            "(SELECT count(*) FROM workers w WHERE NOT w.retired AND w.lease_until > db_now() "
            "AND e.name = ANY(w.executors)) "
            "FROM (SELECT unnest(%s::text[]) UNION SELECT DISTINCT executor FROM tasks "
            "WHERE status IN ('pending', 'running')) AS e(name)",
            (list(executors),),
        )
        return {
            name: ExecutionLoad(running=int(running), queued=int(queued), workers=int(workers))
            for name, running, queued, workers in rows
        }

    # -- events -------------------------------------------------------------------------

    def _changed(self, raw: str, task_id: str, action: str, *, hooks: bool = True) -> Task:
        """The task a function changed (its refusal raised); the hooks told of the change."""
        reply = _decode_reply(raw)
        if reply.kind == "notfound":
            raise TaskNotFound(task_id)
        if reply.kind == "refused":
            raise refusal(task_id, TaskStatus(msgspec.json.decode(reply.payload)), action)
        task = _task(reply.payload)
        if hooks:
            self._transitioned(task, task.history[-1].previous if task.history else None)
        self._removed(reply.removed)
        return task

    def _transitioned(self, task: Task, previous: TaskStatus | None) -> None:
        for hook in self.events.on_transition:
            hook(task, previous)
        self._publish(task, EventType.TRANSITION, previous)

    def _removed(self, removed: list[tuple[str, msgspec.Raw]]) -> None:
        """Tell the hooks about the tasks a function removed by itself: ``[(cause, JSON), ...]``."""
        for cause, raw in removed:
            task = _task(raw)
            for hook in self.events.on_removed:
                hook(task, cause)
            self._publish(task, EventType.REMOVED, None)

    def _publish(self, task: Task, kind: EventType, previous: TaskStatus | None) -> None:
        if self.events.listeners:
            self.events.publish(TaskEvent.of(task, kind, previous))


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit() or len(cursor) > 18:
        raise InvalidParams(f"cursor {cursor!r} is not one a page gave.", field="cursor")
    return int(cursor)

"""The PostgreSQL task store's reads: a task, a session's pages and counts, queue places,
the snapshot a push stream starts from, and the admin view's reads across sessions.

Reads are plain queries (functions of `sql/reads.sql` where a page is built in the
database) and take no lock: they see what the last committed change left.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final, cast

import msgspec

from async_tasks.backends.postgres.store_base import PostgresStoreBase, decode_task
from async_tasks.backends.queued.store import whole
from async_tasks.errors import InvalidParams, TaskNotFound
from async_tasks.store.base import (
    RECENT_DURATIONS,
    Poll,
    SessionCounts,
    SessionPage,
    SessionSummary,
    StoreTotals,
    TaskFilter,
    TaskPage,
)
from async_tasks.task import StoredTask, Task, TaskStatus

#: Tasks a session stream's snapshot shows (the newest), and the largest result it carries.
SNAPSHOT_TASKS: Final = 200
SNAPSHOT_RESULT_BYTES: Final = 16_384


class _Page(msgspec.Struct):
    total: int
    tasks: list[StoredTask]
    next: str | None = None


_decode_page = msgspec.json.Decoder(_Page).decode


class _AllPage(msgspec.Struct):
    total: int
    tasks: list[StoredTask]
    seqs: list[int]


class PostgresReads(PostgresStoreBase):
    """What `PostgresTaskStore` answers without changing anything."""

    async def get(self, session_key: str, task_id: str) -> Task:
        raw = await self.db.call(
            "SELECT task_json(t, true) FROM tasks t WHERE t.id = %s AND t.session_key = %s", (task_id, session_key)
        )
        if raw is None:
            raise TaskNotFound(task_id)
        return decode_task(raw)

    async def poll(self, session_key: str, task_id: str) -> Poll:
        return Poll(await self.get(session_key, task_id))

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
            whole(task)
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

    async def recent_durations(self, executors: Collection[str]) -> dict[str, list[int]]:
        rows = await self.db.rows(
            "SELECT executor, runs[1:%s] FROM durations WHERE executor = ANY(%s)", (RECENT_DURATIONS, list(executors))
        )
        return {executor: [int(value) for value in runs] for executor, runs in rows if runs}

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
            whole(task)
        next_cursor = None
        if limit is not None and len(page.tasks) > limit:
            page.tasks = page.tasks[:limit]
            next_cursor = str(page.seqs[limit - 1])
        return TaskPage(cast("list[Task]", page.tasks), page.total, next_cursor)

    async def find(self, task_id: str) -> Task:
        raw = await self.db.call("SELECT task_json(t, true) FROM tasks t WHERE t.id = %s", (task_id,))
        if raw is None:
            raise TaskNotFound(task_id)
        return decode_task(raw)


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit() or len(cursor) > 18:
        raise InvalidParams(f"cursor {cursor!r} is not one a page gave.", field="cursor")
    return int(cursor)

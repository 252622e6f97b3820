"""The Redis task store's reads: a task, a session's pages and counts, queue places, the
snapshot a push stream starts from, and the admin view's reads across sessions.

Reads change nothing, so a reply lost on the way is simply asked again. A page is read by
the ``query`` script a chunk at a time (`QUERY_CHUNK` tasks: a script blocks Redis while
it runs); the admin view reads the indexes kept across sessions (``P all``, ``P changed``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection, Sequence
from typing import Final, cast

from async_tasks.backends.redis.connection import reachable
from async_tasks.backends.redis.store_base import STATUSES, RedisStoreBase, decode_task, decode_tasks
from async_tasks.errors import TaskNotFound
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

#: Tasks one query script reads at most (a longer page is several scripts).
QUERY_CHUNK: Final = 250
#: Tasks a session stream's snapshot shows (the newest), and the largest result it carries.
SNAPSHOT_TASKS: Final = 200
SNAPSHOT_RESULT_BYTES: Final = 16_384


class RedisReads(RedisStoreBase):
    """What `RedisTaskStore` answers without changing anything."""

    async def get(self, session_key: str, task_id: str) -> StoredTask:
        raw = await self._run("get", session_key, task_id)
        if raw is None:
            raise TaskNotFound(task_id)
        return decode_task(raw)

    async def poll(self, session_key: str, task_id: str) -> Poll:
        """One script (`poll.lua`): the task's status fields and, for a task waiting in line
        or running, its place, the session's running tasks and its executor's run times."""
        found = await self._run("poll", session_key, task_id, RECENT_DURATIONS)
        if found is None:
            raise TaskNotFound(task_id)
        raw, position, lanes, durations = found
        return Poll(
            decode_task(raw),
            placed=True,
            position=None if position is None else int(position),
            lanes=int(lanes),
            durations=[int(value) for value in durations],
        )

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
            tasks += decode_tasks(raw)
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
        """The sizes of the session's indexes by status (no counter is kept beside them), read
        at one moment, and its summed run time."""
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=True) as pipe:
                for status in STATUSES:
                    pipe.zcard(self.keys.by_status(session_key, status))
                pipe.hget(self.keys.counts(session_key), "dur")
                *values, duration = await pipe.execute()
        by_status = {status: int(value) for status, value in zip(TaskStatus, values, strict=True)}
        completed = by_status[TaskStatus.COMPLETED]
        return SessionCounts(
            by_status=by_status, average_duration_ms=int(duration or 0) / completed if completed else 0.0
        )

    async def totals(self) -> StoreTotals:
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=True) as pipe:
                for status in STATUSES:
                    pipe.zcard(self.keys.by_status(None, status))
                pipe.scard(self.keys.sessions)
                *values, sessions = await pipe.execute()
        by_status = {status: int(value) for status, value in zip(TaskStatus, values, strict=True)}
        return StoreTotals(by_status=by_status, sessions=int(sessions))

    async def waiting(self) -> tuple[int, int]:
        """Tasks waiting for a slot in every session (parked), and tasks dispatched to a
        worker that has not started them yet."""
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hmget(self.keys.totals, ["p", "d"])
                pipe.zcard(self.keys.by_status(None, TaskStatus.RUNNING.value))
                (parked, dispatched), running = await pipe.execute()
        return int(parked or 0), max(0, int(dispatched or 0) - int(running))

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

    async def recent_durations(self, executors: Collection[str]) -> dict[str, list[int]]:
        names = list(executors)
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.lrange(self.keys.durations(name), 0, RECENT_DURATIONS - 1)
                found = await pipe.execute()
        return {name: [int(value) for value in values] for name, values in zip(names, found, strict=True) if values}

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


def _cursor(cursor: str | None) -> str:
    if cursor is None:
        return ""
    if not cursor.isdigit():
        from async_tasks.errors import InvalidParams

        raise InvalidParams(f"cursor {cursor!r} is not one a page gave.", field="cursor")
    return cursor

"""The PostgreSQL task store's passes over every session: retention (`trim`), expiry
(`expire`) and the counters' check (`verify`).

A pass goes a batch of sessions at a time (`TRIM_SESSIONS`, in key order) and each call
changes at most `TRIM_BATCH` tasks (a call holds the deployment's lock), called again
while it says its budget ran out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

from async_tasks.backends.postgres.store_base import PostgresStoreBase, decode_task
from async_tasks.store.base import Expiry, ExpiryResult, Retention, TrimResult
from async_tasks.task import TaskStatus

#: Tasks `trim` and `expire` change per call (a call holds the deployment's lock).
TRIM_BATCH: Final = 1000
#: Sessions `trim` and `expire` of every session look at per call.
TRIM_SESSIONS: Final = 200


class PostgresUpkeep(PostgresStoreBase):
    """What `PostgresTaskStore` does over every session, a batch at a time."""

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
                task = decode_task(raw_task)
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

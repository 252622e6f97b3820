"""The Redis task store's passes over every session: retention (`trim`), expiry (`expire`)
and the counters' check (`verify`).

A pass goes a batch of sessions at a time (`TRIM_SESSIONS`, found with SSCAN) and each
script changes at most `TRIM_BATCH` tasks (a script blocks Redis while it runs), called
again while it says its budget ran out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from async_tasks.backends.redis.connection import reachable
from async_tasks.backends.redis.store_base import RedisStoreBase, decode_task, encode
from async_tasks.store.base import Expiry, ExpiryResult, Retention, TrimResult
from async_tasks.task import TaskStatus

#: Tasks `trim` and `expire` change per script call (a script blocks Redis while it runs).
TRIM_BATCH: Final = 1000
#: Sessions `trim` and `expire` of every session look at per script call.
TRIM_SESSIONS: Final = 200


class RedisUpkeep(RedisStoreBase):
    """What `RedisTaskStore` does over every session, a batch at a time."""

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
            reason = encode(f"expired: not started within {minutes:g} min (PENDING_TASK_TTL_MS)")
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
                task = decode_task(raw)
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

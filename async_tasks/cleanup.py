"""The cleaner: per-session retention and the time limits, periodic and on demand.

Each session keeps its newest MAX_COMPLETED_TASKS completed, MAX_FAILED_TASKS
failed and MAX_CANCELLED_TASKS cancelled tasks ("newest" = most recently
finished). The store applies that as each task finishes; a sweep catches up
(after a settings change, or a limit of 0). A sweep also applies the time limits
(`async_tasks.store.base.Expiry`): finished tasks older than FINISHED_TASK_TTL_MS go,
tasks never started within PENDING_TASK_TTL_MS are cancelled, sessions idle for
SESSION_IDLE_TTL_MS are forgotten. Running tasks are never touched. `run_once` is
the whole job; `run` is a thin periodic loop around it on the injected clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import anyio
import anyio.abc
import msgspec

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.settings import EngineSettings
from async_tasks.store.base import Expiry, Retention, TaskStore
from async_tasks.task import Task

logger = logging.getLogger("async_tasks.cleanup")


class CleanupResult(msgspec.Struct, rename="camel", kw_only=True):
    removed: int = 0
    removed_completed: int = 0
    removed_failed: int = 0
    removed_cancelled: int = 0
    #: Finished tasks past FINISHED_TASK_TTL_MS, and tasks of idle sessions (in `removed`).
    removed_expired: int = 0
    #: Tasks never started within PENDING_TASK_TTL_MS, now cancelled.
    expired_pending: int = 0
    #: Sessions forgotten after SESSION_IDLE_TTL_MS without a change.
    expired_sessions: int = 0
    duration_ms: float = 0


class LastRun(msgspec.Struct, rename="camel", kw_only=True):
    at: int
    trigger: Literal["interval", "manual"]
    duration_ms: float


class Cleaner:
    def __init__(self, store: TaskStore, settings: EngineSettings, clock: Clock = SYSTEM_CLOCK) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.retention = Retention(
            max_completed=settings.max_completed_tasks,
            max_failed=settings.max_failed_tasks,
            max_cancelled=settings.max_cancelled_tasks,
        )
        #: True while a sweep runs (sweeps yield to the event loop between batches).
        self.is_running = False
        self.is_active = False
        self.last_run: LastRun | None = None
        self.expiry = Expiry(
            finished_ttl_ms=settings.finished_task_ttl_ms or None,
            pending_ttl_ms=settings.pending_task_ttl_ms or None,
            session_idle_ms=settings.session_idle_ttl_ms or None,
        )
        #: Called after every sweep with (result, trigger); metrics and housekeeping hook in here.
        self.after_sweep: list[Callable[[CleanupResult, str], object]] = []
        #: Awaited with the tasks a sweep cancelled for never starting (the engine
        #: drops their queued waits).
        self.on_expired: list[Callable[[list[Task]], Awaitable[object]]] = []

    async def run_once(
        self, session_key: str | None = None, *, trigger: Literal["interval", "manual"] = "manual"
    ) -> CleanupResult:
        """Enforce retention and the time limits in one session, or in every session
        when `session_key` is None."""
        began = time.perf_counter()
        self.is_running = True
        try:
            expired = await self.store.expire(self.expiry, session_key)
            trimmed = await self.store.trim(self.retention, session_key)
        finally:
            self.is_running = False
        if expired.pending:
            for expire_hook in self.on_expired:
                await expire_hook(expired.pending)
        result = CleanupResult(
            removed=trimmed.total + expired.finished + expired.session_tasks,
            removed_completed=trimmed.completed,
            removed_failed=trimmed.failed,
            removed_cancelled=trimmed.cancelled,
            removed_expired=expired.finished + expired.session_tasks,
            expired_pending=len(expired.pending),
            expired_sessions=expired.sessions,
            duration_ms=round((time.perf_counter() - began) * 1000, 3),
        )
        self.last_run = LastRun(at=self.clock.now_ms(), trigger=trigger, duration_ms=result.duration_ms)
        if result.removed or result.expired_pending:
            logger.info(
                "Cleanup removed %d finished tasks (%d expired), cancelled %d never-started tasks and forgot "
                "%d idle sessions (%s) in %.1f ms",
                result.removed, result.removed_expired, result.expired_pending, result.expired_sessions,
                trigger, result.duration_ms,
            )  # fmt: skip
        for hook in self.after_sweep:
            hook(result, trigger)
        return result

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sweep every TASK_CLEANUP_INTERVAL ms until cancelled."""
        interval = self.settings.task_cleanup_interval / 1000
        self.is_active = True
        task_status.started()
        try:
            while True:
                await self.clock.sleep(interval)
                try:
                    await self.run_once(trigger="interval")
                except Exception:  # a sweep must never end the loop
                    logger.exception("Cleanup sweep failed")
        finally:
            self.is_active = False

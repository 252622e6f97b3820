"""The cleaner: per-session retention of finished tasks, periodic and on demand.

Each session keeps its newest MAX_COMPLETED_TASKS completed, MAX_FAILED_TASKS
failed and MAX_CANCELLED_TASKS cancelled tasks ("newest" = most recently
finished). Pending and running tasks are never touched. `run_once` is the whole
job; `run` is a thin periodic loop around it on the injected clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Literal

import anyio
import anyio.abc
import msgspec

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.settings import Settings
from async_tasks.store.base import Retention, TaskStore

logger = logging.getLogger("async_tasks.cleanup")


class CleanupResult(msgspec.Struct, rename="camel", kw_only=True):
    removed: int = 0
    removed_completed: int = 0
    removed_failed: int = 0
    removed_cancelled: int = 0
    duration_ms: float = 0


class LastRun(msgspec.Struct, rename="camel", kw_only=True):
    at: int
    trigger: Literal["interval", "manual"]
    duration_ms: float


class Cleaner:
    def __init__(self, store: TaskStore, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> None:
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
        #: Called after every sweep with (result, trigger); metrics and housekeeping hook in here.
        self.after_sweep: list[Callable[[CleanupResult, str], object]] = []

    async def run_once(
        self, session_key: str | None = None, *, trigger: Literal["interval", "manual"] = "manual"
    ) -> CleanupResult:
        """Enforce retention in one session, or in every session when `session_key` is None."""
        began = time.perf_counter()
        self.is_running = True
        try:
            trimmed = await self.store.trim(self.retention, session_key)
        finally:
            self.is_running = False
        result = CleanupResult(
            removed=trimmed.total,
            removed_completed=trimmed.completed,
            removed_failed=trimmed.failed,
            removed_cancelled=trimmed.cancelled,
            duration_ms=round((time.perf_counter() - began) * 1000, 3),
        )
        self.last_run = LastRun(at=self.clock.now_ms(), trigger=trigger, duration_ms=result.duration_ms)
        if result.removed:
            logger.info(
                "Cleanup removed %d finished tasks (%s) in %.1f ms", result.removed, trigger, result.duration_ms
            )
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

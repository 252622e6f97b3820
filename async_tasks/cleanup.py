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
from async_tasks.store import SessionTasks, TaskStore
from async_tasks.task import TaskStatus

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
        self.limits = {
            TaskStatus.COMPLETED: settings.max_completed_tasks,
            TaskStatus.FAILED: settings.max_failed_tasks,
            TaskStatus.CANCELLED: settings.max_cancelled_tasks,
        }
        self.is_running = False
        self.is_active = False
        self.last_run: LastRun | None = None
        #: Called after every sweep with (result, trigger); metrics and housekeeping hook in here.
        self.after_sweep: list[Callable[[CleanupResult, str], object]] = []
        #: Called with each removed task id before removal (runner bookkeeping).
        self.on_remove: list[Callable[[str], None]] = []

    def run_once(
        self, session_key: str | None = None, *, trigger: Literal["interval", "manual"] = "manual"
    ) -> CleanupResult:
        """Enforce retention in one session, or in every session when `session_key` is None."""
        began = time.perf_counter()
        self.is_running = True
        result = CleanupResult()
        try:
            if session_key is None:
                sessions = list(self.store.sessions.values())
            else:
                one = self.store.session(session_key)
                sessions = [one] if one is not None else []
            for session in sessions:
                self._sweep(session, result)
        finally:
            self.is_running = False
        result.removed = result.removed_completed + result.removed_failed + result.removed_cancelled
        result.duration_ms = round((time.perf_counter() - began) * 1000, 3)
        self.last_run = LastRun(at=self.clock.now_ms(), trigger=trigger, duration_ms=result.duration_ms)
        if result.removed:
            logger.info(
                "Cleanup removed %d finished tasks (%s) in %.1f ms", result.removed, trigger, result.duration_ms
            )
        for hook in self.after_sweep:
            hook(result, trigger)
        return result

    def _sweep(self, session: SessionTasks, result: CleanupResult) -> None:
        for status, limit in self.limits.items():
            finished = session.finished[status]
            excess = len(finished) - limit
            if excess <= 0:
                continue
            oldest = [task_id for task_id, _ in zip(finished, range(excess), strict=False)]
            for task_id in oldest:
                task = session.tasks[task_id]
                for hook in self.on_remove:
                    hook(task_id)
                self.store.remove(task)
            if status is TaskStatus.COMPLETED:
                result.removed_completed += excess
            elif status is TaskStatus.FAILED:
                result.removed_failed += excess
            else:
                result.removed_cancelled += excess

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sweep every TASK_CLEANUP_INTERVAL ms until cancelled."""
        interval = self.settings.task_cleanup_interval / 1000
        self.is_active = True
        task_status.started()
        try:
            while True:
                await self.clock.sleep(interval)
                try:
                    self.run_once(trigger="interval")
                except Exception:  # a sweep must never end the loop
                    logger.exception("Cleanup sweep failed")
        finally:
            self.is_active = False

"""The reconciler: repairs what a dead worker left, one worker at a time.

Every worker runs it; a lock (the store's `take_lock`, taken for a bit less than the
interval) lets one of them act at each tick. A pass costs the number of workers plus what
it repairs, never the number of tasks:

- **Lost workers.** A worker whose lease has expired is first a suspect (when it was first
  seen so, by the store's clock, kept in the store); still without a lease half a lease
  later (a live worker renews every third of one, so a restart of the store that dropped
  the leases or kept workers from renewing does not condemn healthy ones), it is lost: its
  running attempts fail with reason ``worker lost`` and are retried per their budget, the
  tasks queued on it go back to their sessions' lines, and its queue leaves the pool. A
  task a client was told exists is thus never stranded for longer than a lease, half a
  lease and an interval.
- **Delayed tasks** (a retry's backoff, a delayed start) are delivered when due (a
  worker's timer does it at the exact time; this is the net under it, and it tells the
  worker of the next one: `on_due`).
- **Counters** are checked against the indexes every `VERIFY_INTERVAL` and repaired (they
  should never drift; a repair is logged).

One item's trouble never abandons the pass: it is logged and the next item is tried.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import anyio

from async_tasks.errors import InvalidTransition, TaskNotFound
from async_tasks.execution.base import lost
from async_tasks.faults import crash_point

if TYPE_CHECKING:
    from async_tasks.backends.queued.store import QueueStore
    from async_tasks.settings import BackendSettings

logger = logging.getLogger("async_tasks.execution")

#: Seconds between two reconciler passes (at most; a third of the lease if shorter).
INTERVAL: Final = 1.0
#: Seconds between two checks of the counters.
VERIFY_INTERVAL: Final = 60.0


class Reconciler:
    def __init__(
        self,
        store: QueueStore,
        settings: BackendSettings,
        worker_id: str,
        *,
        rng: Callable[[], float] = random.random,
        interval: float = INTERVAL,
        on_due: Callable[[int | None], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.worker_id = worker_id
        self._rng = rng
        self.lease_ms = settings.worker_lease_ms
        self.interval = min(interval, self.lease_ms / 3000)
        self._next_verify = 0.0
        #: Told the next due time of a delayed task after each pass (the worker's timer).
        self.on_due = on_due

    async def run(self) -> None:
        """Reconcile at every tick this worker holds the lock (until cancelled)."""
        while True:
            try:
                if await self._lock():
                    await self.run_once()
            except Exception as exc:
                logger.debug("Reconciler pass failed (%s); the next tick tries again", exc)
            await anyio.sleep(self.interval)

    async def _lock(self) -> bool:
        return await self.store.take_lock("reconcile", self.worker_id, max(50, int(self.interval * 1000) - 50))

    async def run_once(self) -> int:
        """One pass (the caller holds the lock): returns how many lost workers it resolved."""
        resolved = 0
        for worker in await self.lost_workers():
            try:
                await self.resolve(worker)
                resolved += 1
            except Exception:
                logger.exception("Could not resolve lost worker %s; the next pass tries again", worker)
        try:
            following = await self.store.promote()
        except Exception:
            logger.exception("Could not deliver the delayed tasks that are due")
        else:
            if self.on_due is not None:
                self.on_due(following)
        now = anyio.current_time()
        if now >= self._next_verify:
            self._next_verify = now + VERIFY_INTERVAL
            for session, field, was, is_ in await self.store.verify():
                logger.warning(
                    "Repaired a drifted counter: %s of %s was %d, is %d", field, session or "the totals", was, is_
                )
        return resolved

    async def lost_workers(self) -> list[str]:
        """The workers without a lease for half a lease or more (suspects are remembered in
        the store, so whichever worker holds the lock next goes on from here)."""
        return await self.store.lost_workers(self.worker_id, self.lease_ms)

    async def resolve(self, worker: str) -> None:
        """End what a lost worker held: its running attempts fail (and are retried per
        budget), its queued tasks go back to their lines; then it leaves the pool."""
        await self.store.retire(worker)  # first: nothing of it may be dispatched to it again
        for item in await self.store.dispatched_to(worker):
            try:
                if item.status == "pending":
                    await self.store.redeliver(item.session_key, item.task_id, item.job_key)
                elif item.status == "running" and item.worker == worker:
                    await self._lose(item.session_key, item.task_id, item.attempts, worker)
            except Exception:
                logger.exception("Could not resolve task %s of lost worker %s", item.task_id, worker)
        crash_point("reconcile.before_forget")
        if await self.store.forget_worker(worker) == 1:
            logger.warning("Worker %s was lost (its lease expired); its tasks were given to others", worker)

    async def _lose(self, session_key: str, task_id: str, attempt: int, worker: str) -> None:
        try:
            task = await self.store.get(session_key, task_id)
            finish = lost(
                task, f"The worker running this task was lost ({worker} stopped renewing its lease)", self.settings,
                self._rng,
            )  # fmt: skip
            await self.store.finish(session_key, task_id, attempt, finish, owner=worker)
        except (InvalidTransition, TaskNotFound):
            return  # it moved on meanwhile
        logger.warning(
            "Task %s for session %s: attempt %s was lost (worker lost)", task_id, session_key, attempt,
            extra={"task_id": task_id, "session_key": session_key, "reason": "worker lost"},
        )  # fmt: skip

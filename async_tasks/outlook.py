"""Where a waiting or running task stands: its place in its session's line and when it
should start and finish (the rule is `async_tasks.estimates`).

`Outlooks.of` answers for a page of one session's tasks with a few reads: the queue
positions of the waiting ones (the execution backend), the executors' recent run times
(the store, read at most once a `DURATIONS_TTL` per executor) and, when some wait, how
many of the session's tasks run now (its lanes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from async_tasks.clock import Clock
from async_tasks.estimates import Estimate, estimate
from async_tasks.execution.base import ExecutionBackend
from async_tasks.store.base import Poll, TaskStore
from async_tasks.task import Task, TaskStatus

#: Seconds an executor's recent run times are reused for estimates before being read again.
DURATIONS_TTL = 1.0
# A page's tasks are sorted by status: globals are cheaper to read than the enum's members.
_PENDING = TaskStatus.PENDING
_RUNNING = TaskStatus.RUNNING


class Outlook(NamedTuple):
    """Where a waiting or running task stands (`TaskSystem.outlook`)."""

    #: Its place in its session's line (1: next); None when it is not waiting in line.
    queue_position: int | None
    #: When it should start and finish; None when nothing is known to estimate from.
    eta: Estimate | None


class Outlooks:
    """The outlooks of tasks, read from a store and an execution backend."""

    def __init__(self, store: TaskStore, execution: ExecutionBackend, clock: Clock) -> None:
        self.store = store
        self.execution = execution
        self.clock = clock
        #: Executor -> (when read, on the clock's monotonic time; its recent run times).
        self._durations: dict[str, tuple[float, list[int]]] = {}

    async def of(self, session_key: str, tasks: Sequence[Task]) -> dict[str, Outlook]:
        """Where each waiting or running task of `tasks` (one session's) stands. Tasks with
        neither a place in line nor an estimate are absent. A few store reads for the whole
        page, none when nothing on it waits or runs."""
        pending: list[Task] = []
        running: list[Task] = []
        for task in tasks:
            status = task.status
            if status is _PENDING:
                pending.append(task)
            elif status is _RUNNING:
                running.append(task)
        if not pending and not running:
            return {}
        positions = await self.execution.queue_positions(session_key, pending) if pending else {}
        waiting = [task for task in pending if task.id in positions]
        durations = await self._recent_durations({task.executor for task in (*waiting, *running)})
        lanes = 1
        if waiting:
            lanes = (await self.store.counts(session_key)).by_status[TaskStatus.RUNNING]
        now = self.clock.now_ms()
        found: dict[str, Outlook] = {}
        for task in (*waiting, *running):
            outlook = _outlook(task, now, durations.get(task.executor, ()), positions.get(task.id), lanes)
            if outlook is not None:
                found[task.id] = outlook
        return found

    async def of_poll(self, session_key: str, poll: Poll) -> Outlook | None:
        """`of` for the task a `/status` poll read (`TaskStore.poll`): from what the store read
        in the same step when it did (`Poll.placed`: no other read), else as `of` reads it."""
        task = poll.task
        if not poll.placed:
            return (await self.of(session_key, [task])).get(task.id)
        position = poll.position if task.status is _PENDING else None
        if task.status is not _RUNNING and position is None:
            return None  # ended, or pending without a place in line (waiting for its time)
        return _outlook(task, self.clock.now_ms(), poll.durations, position, poll.lanes)

    async def _recent_durations(self, executors: set[str]) -> dict[str, list[int]]:
        """`TaskStore.recent_durations`, read at most once a `DURATIONS_TTL` per executor:
        an estimate a second behind costs nothing, a store read per answer would."""
        now = self.clock.monotonic()
        stale = {name for name in executors if now - self._durations.get(name, (-math.inf, []))[0] >= DURATIONS_TTL}
        if stale:
            found = await self.store.recent_durations(stale)
            for name in stale:
                self._durations[name] = (now, found.get(name, []))
        return {name: self._durations[name][1] for name in executors}


def _outlook(task: Task, now: int, durations: Sequence[int], position: int | None, lanes: int) -> Outlook | None:
    """A waiting (`position`: its place in line) or running task's outlook; None when
    neither its place nor an estimate is known."""
    guess = estimate(task, now_ms=now, durations=durations, position=position, lanes=lanes)
    return None if position is None and guess is None else Outlook(position, guess)

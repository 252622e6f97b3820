"""What the memory store keeps per session and per client, as tasks change.

`SessionTasks`: one session's tasks in creation order, counts by status, the finished
tasks of each status in the order they finished (what retention and the finished TTL
need), the never-started pending tasks in creation order (their lifetime) or by when their
lifetime began (a delayed start: `begin_later`), the summed run time of its completed tasks
and when it last changed (idle expiry). `ClientBooks`: what one client holds across its
sessions (what the per-client budgets count and where a full pool makes room, `room.py`).
A task's history is kept capped as it grows (`append_history`); a finished task's lists
are frozen to tuples of their exact size (`freeze`), which `growing` makes lists again.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import TypeVar

from async_tasks.store.base import HISTORY_HEAD
from async_tasks.task import TERMINAL, HistoryEntry, StoredTask, TaskStatus

T = TypeVar("T")


class ClientBooks:
    """What one client holds: its sessions, their tasks, its never-started tasks (creation
    order) and its finished tasks (finish order), each task id -> its session."""

    __slots__ = ("finished", "key", "sessions", "tasks", "unstarted")

    def __init__(self, key: str) -> None:
        self.key = key
        self.sessions: dict[str, SessionTasks] = {}
        self.tasks = 0
        self.unstarted: dict[str, SessionTasks] = {}
        self.finished: dict[str, SessionTasks] = {}


class SessionTasks:
    """One session's tasks, counts, finished-order index and the summed run time of its
    completed tasks (kept as they complete or are removed), and the client it belongs to."""

    __slots__ = (
        "changed_ms",
        "client",
        "counts",
        "duration_total_ms",
        "finished",
        "key",
        "later",
        "later_heap",
        "order",
        "tasks",
        "unstarted",
    )

    def __init__(self, key: str, now_ms: int, client: ClientBooks) -> None:
        self.key = key
        self.client = client
        self.tasks: dict[str, StoredTask] = {}
        #: task id -> its creation sequence number (what a page's cursor names).
        self.order: dict[str, int] = {}
        self.counts: dict[TaskStatus, int] = dict.fromkeys(TaskStatus, 0)
        self.finished: dict[TaskStatus, dict[str, None]] = {status: {} for status in TERMINAL}
        #: Pending tasks that never ran, in creation order (the pending lifetime)...
        self.unstarted: dict[str, None] = {}
        #: ...but those whose lifetime began later than their creation (a delayed start):
        #: task id -> when it began, and a heap of (when, id) entries, stale ones skipped.
        self.later: dict[str, int] = {}
        self.later_heap: list[tuple[int, str]] = []
        self.duration_total_ms = 0
        #: When a task was last created, changed or removed here (idle expiry).
        self.changed_ms = now_ms

    @property
    def active(self) -> int:
        return self.counts[TaskStatus.PENDING] + self.counts[TaskStatus.RUNNING]

    @property
    def average_duration_ms(self) -> float:
        """Mean run time (start to completion) of the completed tasks held; 0 if none."""
        completed = self.counts[TaskStatus.COMPLETED]
        return self.duration_total_ms / completed if completed else 0.0


def begin_later(session: SessionTasks, task_id: str, began: int) -> None:
    """A never-started task's lifetime begins at `began` (a delayed start), not at its creation."""
    session.later[task_id] = began
    heapq.heappush(session.later_heap, (began, task_id))
    if len(session.later_heap) > 2 * len(session.later) + 64:  # drop the stale entries (amortized O(1))
        session.later_heap = [(at, i) for at, i in session.later_heap if session.later.get(i) == at]
        heapq.heapify(session.later_heap)


def append_history(task: StoredTask, entry: HistoryEntry, limit: int | None) -> None:
    """Add `entry` to the task's history, keeping at most `limit` entries: the first
    `HISTORY_HEAD` (at most half the limit), then one entry standing for those left out,
    then the latest."""
    history = growing(task.history)
    task.history = history
    history.append(entry)
    if limit is None or len(history) <= limit or limit < 3:
        return
    head = min(HISTORY_HEAD, limit // 2)
    marker = history[head]
    absorbed = history.pop(head + 1)
    if not marker.omitted:  # the first time: the entry after the head becomes the marker
        marker = HistoryEntry(at=marker.at, status=marker.status, previous=marker.previous, omitted=1)
    history[head] = HistoryEntry(
        at=absorbed.at,
        status=absorbed.status,
        previous=marker.previous,
        attempt=absorbed.attempt,
        reason=f"{marker.omitted + 1} transitions omitted (history is capped at {limit} entries)",
        error=absorbed.error,
        omitted=marker.omitted + 1,
    )


def growing(entries: Sequence[T]) -> list[T]:
    """`entries` as a list to add to: itself when it is one, else a new list of them."""
    return entries if isinstance(entries, list) else list(entries)


def freeze(task: StoredTask) -> None:
    """A finished task's history and log as tuples of their exact size: nothing is added to
    them unless it is retried (`growing`), and a list's spare room and header cost a
    retained task about 60 bytes.

    Tuples of untracked records are also untracked by the garbage collector after their
    first collection, while lists stay tracked: a store of retained tasks then costs full
    collections nothing (a full pass over 30,000 retained tasks' lists took 30-60 ms, every
    request in flight waiting, and the passes recur as the store grows)."""
    task.history = tuple(task.history)
    task.logs = tuple(task.logs)

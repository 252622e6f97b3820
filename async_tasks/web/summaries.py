"""Finished tasks' list items, encoded once: the list route's cache.

A page of ``GET /tasks`` is mostly finished tasks, and a finished task's summary does
not change until the task runs again (a retry) or goes away. A page that a dashboard
polls every second, or that 64 clients read at once, would otherwise build and encode
the same 50 summaries on every request: two fifths of the route's work. Here each
finished task's summary is encoded once and kept as JSON bytes (`msgspec.Raw`, which
msgspec copies into the page as it is).

An entry is kept with the state it was encoded from (status, attempts, time of the
last change): every change a store makes to a task moves at least one of them, so an
entry that no longer matches its task is encoded afresh, never served stale. Tasks that
wait or run are never kept (their place in line, estimate and progress move). The
cache holds at most `max_bytes` of summaries and lets the oldest go first; it is keyed
by task id, and the route looks up only tasks the store already found in the caller's
session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from async_tasks.outlook import Outlook
from async_tasks.task import Task, TaskStatus
from async_tasks.web.api.schemas import TaskSummary

#: What the cache holds at most: about 5,000 summaries of a sample task's size.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024

_encode = msgspec.json.Encoder().encode
# Module constants: a page checks each task's status, and a lookup on the enum class costs
# three times as much as a global's.
_PENDING = TaskStatus.PENDING
_RUNNING = TaskStatus.RUNNING


class EncodedTaskList(msgspec.Struct, rename="camel", kw_only=True):
    """`TaskListResponse` as it is encoded: its items `TaskSummary` structs or their JSON."""

    success: bool = True
    tasks: list[Any]
    count: int
    total: int
    next_cursor: str | None = None


class EncodedSummaries:
    """The summaries of a page of tasks, finished ones' JSON from the cache."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        #: Task id -> (status, attempts, updated_at) it was encoded from, and the JSON.
        self._entries: dict[str, tuple[tuple[TaskStatus, int, int], msgspec.Raw]] = {}

    def page(self, tasks: Sequence[Task], outlooks: dict[str, Outlook]) -> list[TaskSummary | msgspec.Raw]:
        """Each task's summary, in order: a finished task's as JSON (`outlooks`: where
        the waiting and running ones stand)."""
        entries = self._entries
        found: list[TaskSummary | msgspec.Raw] = []
        for task in tasks:
            status = task.status
            if status is _PENDING or status is _RUNNING:
                found.append(TaskSummary.of(task, outlooks.get(task.id)))
                continue
            state = (status, task.attempts, task.updated_at)
            entry = entries.get(task.id)
            if entry is not None and entry[0] == state:
                found.append(entry[1])
                continue
            raw = msgspec.Raw(_encode(TaskSummary.of(task)))
            self._keep(task.id, state, raw, entry)
            found.append(raw)
        return found

    def _keep(
        self,
        task_id: str,
        state: tuple[TaskStatus, int, int],
        raw: msgspec.Raw,
        stale: tuple[tuple[TaskStatus, int, int], msgspec.Raw] | None,
    ) -> None:
        size = len(raw)
        if size > self.max_bytes:
            return
        entries = self._entries
        if stale is not None:
            del entries[task_id]
            self.bytes -= len(stale[1])
        while self.bytes + size > self.max_bytes:
            oldest = next(iter(entries))
            self.bytes -= len(entries.pop(oldest)[1])
        entries[task_id] = (state, raw)
        self.bytes += size

    def __len__(self) -> int:
        return len(self._entries)

"""What a push stream sends first: snapshots of its session's tasks (or of its one task),
read at one moment, with the sequence number they reflect (the stream's floor: it then
sends only events newer than that, so a snapshot is never followed by an older state).

In one process the floor is the bridge's own sequence number (the memory store answers
without yielding: the same moment); with a shared backend both come from its event
source (`EventSource.snapshot`), read together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from async_tasks.errors import TaskNotFound
from async_tasks.events import EventType, SnapshotEvent
from async_tasks.store.base import TaskFilter, TaskStore
from async_tasks.task import TERMINAL, Task
from async_tasks.web.frames import Frame, encode, status_of

if TYPE_CHECKING:
    from async_tasks.backends import EventSource

#: Terminal statuses as they travel in envelopes and events.
TERMINAL_VALUES: Final = frozenset(status.value for status in TERMINAL)


class Snapshots:
    """Reads snapshots for the streams of one bridge."""

    def __init__(self, store: TaskStore, shared: EventSource | None, local_seq: Callable[[], int]) -> None:
        """`shared`: the backend's event source when changes happen in other processes too;
        `local_seq`: the bridge's latest sequence number otherwise."""
        self.store = store
        self.shared = shared
        self.local_seq = local_seq

    async def task(self, session_key: str, task_id: str) -> Task | None:
        try:
            return await self.store.get(session_key, task_id)
        except TaskNotFound:
            return None

    async def of_session(self, session_key: str) -> tuple[int, list[Frame]]:
        """`frames` and the sequence number they reflect, read at one moment."""
        if self.shared is None:
            floor = self.local_seq()  # the memory store answers without yielding: the same moment
            return floor, await self.frames(session_key)
        seq, events = await self.shared.snapshot(session_key)
        return seq, [Frame(EventType.SNAPSHOT.value, event) for event in reversed(events)]

    async def of_task(self, session_key: str, task_id: str) -> tuple[int, Frame | None, bool]:
        """One task's snapshot, whether it has settled, and the sequence number they reflect."""
        if self.shared is None:
            floor = self.local_seq()
            task = await self.task(session_key, task_id)
            return floor, None if task is None else self.frame(task), task is not None and task.is_terminal
        seq, events = await self.shared.snapshot(session_key, task_id)
        if not events:
            return seq, None, False
        status = status_of(events[0])
        return seq, Frame(EventType.SNAPSHOT.value, events[0]), status in TERMINAL_VALUES

    async def frames(self, session_key: str) -> list[Frame]:
        """Snapshots of all the session's tasks, oldest first, read at one moment."""
        page = await self.store.query(session_key, TaskFilter())
        return [self.frame(task, whole=False) for task in reversed(page.tasks)]

    @staticmethod
    def frame(task: Task, *, whole: bool = True) -> Frame:
        """A snapshot of `task`: with its whole log on a task's stream, its latest lines on a session's."""
        return Frame(EventType.SNAPSHOT.value, encode(SnapshotEvent.of_task(task, whole=whole)))

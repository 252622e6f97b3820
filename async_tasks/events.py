"""Task events: every transition and progress change, published per session.

The store publishes; subscribers (push streams, metrics) listen. With no
listener, publishing costs one attribute check.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import msgspec

from async_tasks.task import Task, TaskStatus


class EventType(str, enum.Enum):
    SNAPSHOT = "snapshot"
    TRANSITION = "transition"
    PROGRESS = "progress"
    REMOVED = "removed"


class TaskEvent(msgspec.Struct, rename="camel", kw_only=True, gc=False):
    type: EventType
    task_id: str
    session_key: str
    status: str
    progress: float
    current_step: str | None = None
    current_step_description: str | None = None
    at: int = 0
    executor: str = ""
    previous: str | None = None
    error: str | None = None
    result: Any = None
    #: The task's display name.
    name: str | None = None
    #: The attempt the event belongs to (`Task.attempts`; 0 before the first run).
    attempt: int = 0

    @classmethod
    def of(cls, task: Task, type: EventType, previous: TaskStatus | None = None) -> TaskEvent:
        """The event describing `task` as it is now (with its result once completed)."""
        return cls(
            type=type,
            task_id=task.id,
            session_key=task.session_key,
            status=task.status.value,
            progress=task.progress,
            current_step=task.current_step,
            current_step_description=task.current_step_description,
            at=task.updated_at,
            executor=task.executor,
            previous=previous.value if previous is not None else None,
            error=task.error,
            result=task.result if task.status is TaskStatus.COMPLETED else None,
            name=task.name,
            attempt=task.attempts,
        )


EventListener = Callable[[TaskEvent], None]


class EventHub:
    """Fan-out of task events to in-process listeners (called synchronously).

    Two kinds of listener: `subscribe` gets a `TaskEvent` for every change (built
    only while someone listens); `on_transition` hooks get the task and its previous
    status (None when it was just created), and `on_removed` hooks the task the store
    forgot and why (``retention``, ``expired``, ``evicted``, or None when asked to `remove`
    it), with no event built, for cheap counters. `on_session_ended` hooks learn of a
    session the store forgot whole (idle: ``expired``; to make room: ``evicted``), after
    its tasks' removals: its push streams end.
    """

    def __init__(self) -> None:
        self.listeners: list[EventListener] = []
        self.on_transition: list[Callable[[Task, TaskStatus | None], None]] = []
        self.on_removed: list[Callable[[Task, str | None], None]] = []
        self.on_session_ended: list[Callable[[str, str], None]] = []

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def publish(self, event: TaskEvent) -> None:
        for listener in self.listeners:
            listener(event)

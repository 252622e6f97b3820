"""Task events: every transition and progress change, published per session.

The store publishes; subscribers (push streams, metrics) listen. With no
listener, publishing costs one attribute check.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import msgspec


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
    # Filled by the push streams (`async_tasks.streams`); the store leaves the defaults.
    #: The task's display name (null on `removed`: the task is gone).
    name: str | None = None
    #: The attempt the event belongs to (`Task.attempts`; 0 before the first run).
    attempt: int = 0


EventListener = Callable[[TaskEvent], None]


class EventHub:
    """Fan-out of task events to in-process listeners (called synchronously)."""

    def __init__(self) -> None:
        self.listeners: list[EventListener] = []

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener)

    def publish(self, event: TaskEvent) -> None:
        for listener in self.listeners:
            listener(event)

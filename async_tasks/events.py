"""Task events: every transition and progress change, and the log lines executors
write, published per session.

The store publishes; subscribers (push streams, metrics) listen. With no
listener, publishing costs one attribute check.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import msgspec

from async_tasks.estimates import Estimate
from async_tasks.task import Task, TaskStatus
from async_tasks.task_log import RECENT_LINES, LogLine


class EventType(str, enum.Enum):
    SNAPSHOT = "snapshot"
    TRANSITION = "transition"
    PROGRESS = "progress"
    REMOVED = "removed"
    #: Log lines an executor wrote (`LogEvent`).
    LOG = "log"
    #: A waiting or running task's queue position and estimate (`EtaEvent`; a task's stream only).
    ETA = "eta"


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


class SnapshotEvent(TaskEvent, kw_only=True):
    """A task as it is now (a stream's ``snapshot``), with its log: all of it on a stream of
    that task, its latest lines (`RECENT_LINES`) in a session's snapshots."""

    logs: list[LogLine] = msgspec.field(default_factory=list)
    logs_dropped: int = 0

    @classmethod
    def of_task(cls, task: Task, *, whole: bool) -> SnapshotEvent:
        event = cls.of(task, EventType.SNAPSHOT)
        assert isinstance(event, SnapshotEvent)
        event.logs = list(task.logs if whole else task.logs[-RECENT_LINES:])
        event.logs_dropped = task.logs_dropped
        return event


class LogEvent(msgspec.Struct, rename="camel", kw_only=True, gc=False):
    """Log lines a running attempt wrote, in order (one event for a batch of them).

    `status`, `attempt` and `at` are those of the task's state when they were stored (`at`
    is the state's time, as in a `TaskEvent`; each line has its own), so a stream names
    it as it names the state it follows.
    """

    type: EventType = EventType.LOG
    task_id: str
    session_key: str
    status: str = TaskStatus.RUNNING.value
    attempt: int
    at: int
    lines: list[LogLine]
    #: How many of the task's oldest lines were dropped so far (TASK_LOG_* bounds).
    logs_dropped: int = 0

    @classmethod
    def of(cls, task: Task, lines: list[LogLine]) -> LogEvent:
        return cls(
            task_id=task.id,
            session_key=task.session_key,
            status=task.status.value,
            attempt=task.attempts,
            at=task.updated_at,
            lines=lines,
            logs_dropped=task.logs_dropped,
        )


class EtaEvent(msgspec.Struct, rename="camel", kw_only=True, gc=False):
    """Where a waiting or running task stands: its place in its session's line and when it
    should start and finish (ms from the event). A task's stream sends it when that moves;
    `status`, `attempt` and `at` name the task's state, as in a `TaskEvent`."""

    type: EventType = EventType.ETA
    task_id: str
    session_key: str
    status: str
    attempt: int
    at: int
    queue_position: int | None = None
    eta: Estimate | None = None


#: What the hub carries: a change of a task, or lines of its log.
Event = TaskEvent | LogEvent
EventListener = Callable[[Event], None]


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

    def publish(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)

"""The per-session task registry and the only owner of task transitions.

Create, get and transition are O(1); per-status counts are kept as transitions
happen, so stats never scan. Finished tasks are also indexed per status in the
order they finished, which is what the cleaner's retention needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.errors import InvalidTransition, TaskNotFound
from async_tasks.events import EventHub, EventType, TaskEvent
from async_tasks.task import TERMINAL, HistoryEntry, Task, TaskStatus, can_transition

_ACTIONS = {
    TaskStatus.RUNNING: "start",
    TaskStatus.CANCELLED: "cancel",
    TaskStatus.PENDING: "retry",
    TaskStatus.COMPLETED: "complete",
    TaskStatus.FAILED: "fail",
}
_HINTS = {
    ("cancel", TaskStatus.COMPLETED): "A completed task cannot be cancelled.",
    ("retry", TaskStatus.PENDING): "Only failed or cancelled tasks can be retried.",
    ("retry", TaskStatus.RUNNING): "Only failed or cancelled tasks can be retried.",
    ("retry", TaskStatus.COMPLETED): "Only failed or cancelled tasks can be retried.",
    ("start", TaskStatus.FAILED): "Use retry to run it again.",
    ("start", TaskStatus.CANCELLED): "Use retry to run it again.",
}


class SessionTasks:
    """One session's tasks, counts, finished-order index, idempotency keys and the
    summed run time of its completed tasks (kept as they complete or are removed)."""

    __slots__ = ("counts", "duration_total_ms", "finished", "idempotency", "idempotency_of", "key", "tasks")

    def __init__(self, key: str) -> None:
        self.key = key
        self.tasks: dict[str, Task] = {}
        self.counts: dict[TaskStatus, int] = dict.fromkeys(TaskStatus, 0)
        self.finished: dict[TaskStatus, dict[str, None]] = {status: {} for status in TERMINAL}
        self.idempotency: dict[str, tuple[str, bytes]] = {}
        #: task id -> its Idempotency-Key, so removing a task never scans the keys.
        self.idempotency_of: dict[str, str] = {}
        self.duration_total_ms = 0

    @property
    def active(self) -> int:
        return self.counts[TaskStatus.PENDING] + self.counts[TaskStatus.RUNNING]

    @property
    def average_duration_ms(self) -> float:
        """Mean run time (start to completion) of the completed tasks held; 0 if none."""
        completed = self.counts[TaskStatus.COMPLETED]
        return self.duration_total_ms / completed if completed else 0.0


class TaskStore:
    def __init__(self, clock: Clock = SYSTEM_CLOCK, events: EventHub | None = None) -> None:
        self.clock = clock
        self.events = events or EventHub()
        self.sessions: dict[str, SessionTasks] = {}
        self.totals: dict[TaskStatus, int] = dict.fromkeys(TaskStatus, 0)
        #: Called with (task, previous status) after each transition, and with (task, None)
        #: when a task is added: cheap hooks (metrics) that need no event object.
        self.on_transition: list[Callable[[Task, TaskStatus | None], None]] = []

    # -- lookup ---------------------------------------------------------------

    def session(self, key: str) -> SessionTasks | None:
        return self.sessions.get(key)

    def get(self, session_key: str, task_id: str) -> Task:
        """The task, if it belongs to `session_key`; any other case is `TaskNotFound`."""
        session = self.sessions.get(session_key)
        task = session.tasks.get(task_id) if session is not None else None
        if task is None:
            raise TaskNotFound(task_id)
        return task

    def query(
        self,
        session_key: str,
        *,
        status: TaskStatus | None = None,
        executor: str | None = None,
        tag: str | None = None,
        dead_letter: bool | None = None,
    ) -> Iterator[Task]:
        """The session's tasks, newest first, filtered."""
        session = self.sessions.get(session_key)
        if session is None:
            return
        for task in reversed(session.tasks.values()):
            if status is not None and task.status is not status:
                continue
            if executor is not None and task.executor != executor:
                continue
            if tag is not None and tag not in task.tags:
                continue
            if dead_letter is not None and task.dead_lettered is not dead_letter:
                continue
            yield task

    def counts(self, session_key: str) -> dict[TaskStatus, int]:
        session = self.sessions.get(session_key)
        return dict(session.counts) if session else dict.fromkeys(TaskStatus, 0)

    def __len__(self) -> int:
        return sum(self.totals.values())

    # -- changes --------------------------------------------------------------

    def add(self, task: Task, *, idempotency: tuple[str, bytes] | None = None) -> Task:
        session = self.sessions.get(task.session_key)
        if session is None:
            session = self.sessions[task.session_key] = SessionTasks(task.session_key)
        now = self.clock.now_ms()
        task.created_at = task.updated_at = now
        task.history.append(HistoryEntry(at=now, status=task.status, attempt=max(task.attempts, 1), reason="created"))
        session.tasks[task.id] = task
        session.counts[task.status] += 1
        self.totals[task.status] += 1
        if idempotency is not None:
            session.idempotency[idempotency[0]] = (task.id, idempotency[1])
            session.idempotency_of[task.id] = idempotency[0]
        for hook in self.on_transition:
            hook(task, None)
        self._publish(task, EventType.TRANSITION, None)
        return task

    def transition(
        self,
        task: Task,
        target: TaskStatus,
        *,
        reason: str | None = None,
        error: str | None = None,
        result: Any = None,
        action: str | None = None,
    ) -> None:
        """Move `task` to `target` if the state machine allows it; stamp and record it."""
        source = task.status
        if not can_transition(source, target):
            action = action or _ACTIONS[target]
            raise InvalidTransition(task.id, source.value, action, _HINTS.get((action, source)))
        session = self.sessions[task.session_key]
        now = self.clock.now_ms()
        if source in TERMINAL:
            session.finished[source].pop(task.id, None)
        if target is TaskStatus.RUNNING:
            task.attempts += 1
            task.started_at = now
            task.completed_at = None
        elif target is TaskStatus.PENDING:  # retry: a fresh attempt from zero
            task.progress = 0
            task.current_step = task.current_step_description = None
            task.result = task.error = None
            task.started_at = task.completed_at = None
            task.dead_lettered = False
        else:  # a terminal status
            task.completed_at = now
            session.finished[target][task.id] = None
            if target is TaskStatus.COMPLETED:
                task.result = result
                task.progress = 100
                session.duration_total_ms += now - (task.started_at or now)
            elif error is not None:
                task.error = error
        task.status = target
        task.updated_at = now
        session.counts[source] -= 1
        session.counts[target] += 1
        self.totals[source] -= 1
        self.totals[target] += 1
        task.history.append(
            HistoryEntry(at=now, status=target, previous=source, attempt=max(task.attempts, 1), reason=reason)
        )
        for hook in self.on_transition:
            hook(task, source)
        self._publish(task, EventType.TRANSITION, source)

    def report_progress(self, task: Task, percent: float, step: str | None, description: str | None) -> None:
        """Apply an executor's report; only the runner's reporter calls this."""
        if task.status is not TaskStatus.RUNNING:
            return
        task.progress = percent
        if step is not None:
            task.current_step = step
            task.current_step_description = description
        elif description is not None:
            task.current_step_description = description
        task.updated_at = self.clock.now_ms()
        self._publish(task, EventType.PROGRESS, None)

    def remove(self, task: Task) -> None:
        """Forget a task (delete or cleanup). Active tasks must be ended first by the caller."""
        session = self.sessions.get(task.session_key)
        if session is None or session.tasks.pop(task.id, None) is None:
            return
        session.counts[task.status] -= 1
        self.totals[task.status] -= 1
        if task.status in TERMINAL:
            session.finished[task.status].pop(task.id, None)
            if task.status is TaskStatus.COMPLETED:
                session.duration_total_ms -= task.duration_ms or 0
        key = session.idempotency_of.pop(task.id, None)
        if key is not None:
            del session.idempotency[key]
        if not session.tasks:
            del self.sessions[task.session_key]
        self._publish(task, EventType.REMOVED, None)

    def _publish(self, task: Task, kind: EventType, previous: TaskStatus | None) -> None:
        if not self.events.listeners:
            return
        self.events.publish(TaskEvent.of(task, kind, previous))

"""The state machine: every legal transition is recorded, every illegal one refused."""

from __future__ import annotations

import itertools

import pytest

from async_tasks.errors import InvalidTransition
from async_tasks.store import TaskStore
from async_tasks.task import TRANSITIONS, Task, TaskStatus
from async_tasks.testing import FakeClock

LEGAL = [(s, t) for s, targets in TRANSITIONS.items() for t in targets]
ILLEGAL = [(s, t) for s, t in itertools.product(TaskStatus, TaskStatus) if t not in TRANSITIONS[s]]

# How to bring a fresh task into each status through legal moves only.
PATHS = {
    TaskStatus.PENDING: [],
    TaskStatus.RUNNING: [TaskStatus.RUNNING],
    TaskStatus.COMPLETED: [TaskStatus.RUNNING, TaskStatus.COMPLETED],
    TaskStatus.FAILED: [TaskStatus.RUNNING, TaskStatus.FAILED],
    TaskStatus.CANCELLED: [TaskStatus.CANCELLED],
}


def task_in(store: TaskStore, status: TaskStatus) -> Task:
    task = store.add(Task(id=f"t-{len(store)}", session_key="s", executor="x", name="n", params=None))
    for step in PATHS[status]:
        store.transition(task, step)
    return task


def test_transition_table_matches_the_design() -> None:
    """pending→running|cancelled, running→completed|failed|cancelled, failed|cancelled→pending."""
    assert set(LEGAL) == {
        (TaskStatus.PENDING, TaskStatus.RUNNING),
        (TaskStatus.PENDING, TaskStatus.CANCELLED),
        (TaskStatus.RUNNING, TaskStatus.COMPLETED),
        (TaskStatus.RUNNING, TaskStatus.FAILED),
        (TaskStatus.RUNNING, TaskStatus.CANCELLED),
        (TaskStatus.FAILED, TaskStatus.PENDING),
        (TaskStatus.CANCELLED, TaskStatus.PENDING),
    }


@pytest.mark.parametrize(("source", "target"), LEGAL, ids=lambda s: s.value)
def test_legal_transition_is_applied_and_recorded(source: TaskStatus, target: TaskStatus) -> None:
    clock = FakeClock()
    store = TaskStore(clock)
    task = task_in(store, source)
    before = len(task.history)
    clock.advance(1)
    store.transition(task, target, reason="because")
    assert task.status is target
    assert len(task.history) == before + 1
    entry = task.history[-1]
    assert (entry.previous, entry.status, entry.reason, entry.at) == (source, target, "because", clock.now_ms())
    assert task.updated_at == clock.now_ms()
    assert store.counts("s")[target] == 1 and store.counts("s")[source] == (1 if source is target else 0)


@pytest.mark.parametrize(("source", "target"), ILLEGAL, ids=lambda s: s.value)
def test_illegal_transition_is_refused_and_changes_nothing(source: TaskStatus, target: TaskStatus) -> None:
    store = TaskStore(FakeClock())
    task = task_in(store, source)
    history = list(task.history)
    with pytest.raises(InvalidTransition) as caught:
        store.transition(task, target)
    assert caught.value.code == "invalid_transition"
    assert task.status is source and task.history == history


def test_retry_resets_progress_and_keeps_history() -> None:
    store = TaskStore(FakeClock())
    task = task_in(store, TaskStatus.RUNNING)
    store.report_progress(task, 60, "Working", "halfway")
    store.transition(task, TaskStatus.FAILED, error="boom")
    store.transition(task, TaskStatus.PENDING)
    store.transition(task, TaskStatus.RUNNING)
    assert (task.progress, task.current_step, task.error, task.attempts) == (0, None, None, 2)
    assert [h.status for h in task.history] == [
        TaskStatus.PENDING,
        TaskStatus.RUNNING,
        TaskStatus.FAILED,
        TaskStatus.PENDING,
        TaskStatus.RUNNING,
    ]


def test_progress_is_ignored_unless_running() -> None:
    store = TaskStore(FakeClock())
    task = task_in(store, TaskStatus.CANCELLED)
    store.report_progress(task, 80, "late", None)
    assert task.progress == 0 and task.current_step is None


def test_cancel_of_completed_task_says_why() -> None:
    store = TaskStore(FakeClock())
    task = task_in(store, TaskStatus.COMPLETED)
    with pytest.raises(InvalidTransition, match="A completed task cannot be cancelled"):
        store.transition(task, TaskStatus.CANCELLED)

"""What only the in-memory store promises: a store full of finished tasks costs the
garbage collector nothing."""

from __future__ import annotations

import gc

from async_tasks.store.memory import MemoryTaskStore
from async_tasks.task import TaskStatus
from async_tasks.task_log import LogLine
from tests.store.test_contract import add


async def test_finished_tasks_hold_nothing_the_garbage_collector_walks_and_can_still_be_retried() -> None:
    """A finished task's history, log and tags are untracked; a retry records on as before."""
    store = MemoryTaskStore()
    task = await add(store, status=TaskStatus.RUNNING, tags=["a"])
    assert await store.add_logs("s", task.id, 1, [LogLine(at=1, message="one")])
    await store.transition("s", task.id, TaskStatus.FAILED, error="boom")
    gc.collect()
    assert not any(gc.is_tracked(part) for part in (task, task.history, task.logs, task.tags))

    await store.transition("s", task.id, TaskStatus.PENDING)
    await store.transition("s", task.id, TaskStatus.RUNNING)
    assert await store.add_logs("s", task.id, 2, [LogLine(at=2, message="two")])
    done = await store.transition("s", task.id, TaskStatus.COMPLETED)
    assert [line.message for line in done.logs] == ["one", "two"]
    assert [h.status for h in done.history][-3:] == [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.COMPLETED]
    assert list(done.tags) == ["a"]
    gc.collect()
    assert not any(gc.is_tracked(part) for part in (done.history, done.logs, done.tags))

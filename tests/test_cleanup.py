"""Retention: newest finished tasks kept per session; pending and running never touched."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from litestar import Litestar

from async_tasks.cleanup import Cleaner
from async_tasks.settings import Settings
from async_tasks.store import TaskStore
from async_tasks.task import Task, TaskStatus
from async_tasks.testing import FakeClock
from tests.conftest import serve_in_loop

API = "/api/v1"


def finished(store: TaskStore, session: str, status: TaskStatus, n: int, clock: FakeClock) -> list[str]:
    ids = []
    for _ in range(n):
        task = store.add(Task(id=f"{session}-{len(store)}", session_key=session, executor="x", name="t", params=None))
        if status is not TaskStatus.PENDING:
            store.transition(task, TaskStatus.RUNNING)
        if status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
            store.transition(task, status)
        clock.advance(1)
        ids.append(task.id)
    return ids


def test_retention_keeps_the_newest_per_status_and_session() -> None:
    clock = FakeClock()
    store = TaskStore(clock)
    cleaner = Cleaner(store, Settings(max_completed_tasks=2, max_failed_tasks=1, max_cancelled_tasks=0), clock)
    done = finished(store, "a", TaskStatus.COMPLETED, 5, clock)
    failed = finished(store, "a", TaskStatus.FAILED, 3, clock)
    finished(store, "a", TaskStatus.CANCELLED, 2, clock)
    running = finished(store, "a", TaskStatus.RUNNING, 4, clock)
    pending = finished(store, "a", TaskStatus.PENDING, 4, clock)
    other = finished(store, "b", TaskStatus.COMPLETED, 2, clock)

    result = cleaner.run_once(trigger="interval")

    assert (result.removed_completed, result.removed_failed, result.removed_cancelled, result.removed) == (3, 2, 2, 7)
    remaining = set(store.sessions["a"].tasks)
    assert remaining == set(done[-2:] + failed[-1:] + running + pending)
    assert set(store.sessions["b"].tasks) == set(other)
    assert store.counts("a")[TaskStatus.COMPLETED] == 2 and store.counts("a")[TaskStatus.RUNNING] == 4
    assert cleaner.last_run is not None and cleaner.last_run.trigger == "interval"


def test_newest_means_most_recently_finished() -> None:
    clock = FakeClock()
    store = TaskStore(clock)
    cleaner = Cleaner(store, Settings(max_completed_tasks=1), clock)
    first = store.add(Task(id="first", session_key="a", executor="x", name="t", params=None))
    second = store.add(Task(id="second", session_key="a", executor="x", name="t", params=None))
    for task in (second, first):  # created first, finished last
        store.transition(task, TaskStatus.RUNNING)
        store.transition(task, TaskStatus.COMPLETED)
    cleaner.run_once()
    assert list(store.sessions["a"].tasks) == ["first"]


def test_manual_run_touches_only_the_callers_session() -> None:
    clock = FakeClock()
    store = TaskStore(clock)
    cleaner = Cleaner(store, Settings(max_completed_tasks=0), clock)
    finished(store, "a", TaskStatus.COMPLETED, 2, clock)
    finished(store, "b", TaskStatus.COMPLETED, 2, clock)
    assert cleaner.run_once("a").removed == 2
    assert "a" not in store.sessions and len(store.sessions["b"].tasks) == 2


@pytest.mark.anyio
async def test_periodic_cleanup_runs_on_the_interval(make_app: Callable[..., Litestar]) -> None:
    clock = FakeClock()
    app = make_app(clock=clock, max_completed_tasks=1, task_cleanup_interval=60_000)
    async with serve_in_loop(app) as client:
        for _ in range(3):
            task = (await client.post(f"{API}/tasks", json={"executor": "script", "start": True})).json()["task"]
        await anyio.wait_all_tasks_blocked()
        assert (await client.get(f"{API}/tasks/stats")).json()["stats"]["completed"] == 3
        await clock.wait_for_sleepers(1)
        clock.advance(60)
        await anyio.wait_all_tasks_blocked()
        listing = (await client.get(f"{API}/tasks")).json()
        assert [t["id"] for t in listing["tasks"]] == [task["id"]]
        status = (await client.get(f"{API}/tasks/cleanup/status")).json()["status"]
        assert status["isActive"] is True and status["isRunning"] is False
        assert status["lastRun"]["trigger"] == "interval"
        assert status["options"] == {
            "maxCompletedTasks": 1,
            "maxFailedTasks": 20,
            "maxCancelledTasks": 20,
            "cleanupInterval": 60_000,
        }


@pytest.mark.anyio
async def test_cleanup_endpoints(make_app: Callable[..., Litestar]) -> None:
    async with serve_in_loop(make_app(max_cancelled_tasks=1)) as client:
        status = (await client.get(f"{API}/tasks/cleanup/status")).json()["status"]
        assert status["lastRun"] == "idle"
        for _ in range(3):
            task = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
            await client.post(f"{API}/tasks/{task['id']}/cancel")
        result = (await client.post(f"{API}/tasks/cleanup/run")).json()["result"]
        assert result["removed"] == 2 and result["removedCancelled"] == 2 and result["durationMs"] >= 0
        assert (await client.get(f"{API}/tasks/stats")).json()["stats"]["cancelled"] == 1
        assert (await client.get(f"{API}/tasks/cleanup/status")).json()["status"]["lastRun"]["trigger"] == "manual"

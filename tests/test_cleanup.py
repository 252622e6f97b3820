"""Retention: newest finished tasks kept per session; pending and running never touched."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import anyio
import anyio.lowlevel
from litestar import Litestar

from async_tasks.cleanup import Cleaner
from async_tasks.settings import Settings
from async_tasks.store.base import CreateLimits
from async_tasks.store.memory import TRIM_BATCH, MemoryTaskStore
from async_tasks.task import Task, TaskStatus
from async_tasks.testing import FakeClock, serve_in_loop

API = "/api/v1"
UNLIMITED = CreateLimits(max_active_per_session=1_000_000)


async def finished(store: MemoryTaskStore, session: str, status: TaskStatus, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        task, _ = await store.create(
            Task(id=str(uuid.uuid4()), session_key=session, executor="x", name="t", params=None), limits=UNLIMITED
        )
        if status is not TaskStatus.PENDING:
            await store.transition(session, task.id, TaskStatus.RUNNING)
        if status in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED):
            await store.transition(session, task.id, status)
        ids.append(task.id)
    return ids


async def test_a_sweep_applies_the_retention_settings_and_records_its_run() -> None:
    clock = FakeClock()
    store = MemoryTaskStore(clock)
    cleaner = Cleaner(store, Settings(max_completed_tasks=2, max_failed_tasks=1, max_cancelled_tasks=0), clock)
    await finished(store, "a", TaskStatus.COMPLETED, 5)
    await finished(store, "a", TaskStatus.FAILED, 3)
    await finished(store, "a", TaskStatus.CANCELLED, 2)
    await finished(store, "b", TaskStatus.RUNNING, 2)

    result = await cleaner.run_once(trigger="interval")

    assert (result.removed_completed, result.removed_failed, result.removed_cancelled, result.removed) == (3, 2, 2, 7)
    assert (await store.counts("b")).total == 2
    assert cleaner.last_run is not None and cleaner.last_run.trigger == "interval"
    assert cleaner.last_run.at == clock.now_ms()


async def test_a_manual_run_touches_only_the_callers_session() -> None:
    store = MemoryTaskStore()
    cleaner = Cleaner(store, Settings(max_completed_tasks=0))
    await finished(store, "a", TaskStatus.COMPLETED, 2)
    await finished(store, "b", TaskStatus.COMPLETED, 2)
    assert (await cleaner.run_once("a")).removed == 2
    assert "a" not in store.sessions and len(store.sessions["b"].tasks) == 2


async def test_a_large_sweep_yields_to_the_event_loop_and_says_it_is_running() -> None:
    """A sweep removing many tasks lets other work run between batches, and meanwhile
    `is_running` is true (what `/tasks/cleanup/status` reports)."""
    store = MemoryTaskStore()
    cleaner = Cleaner(store, Settings(max_completed_tasks=0))
    await finished(store, "a", TaskStatus.COMPLETED, TRIM_BATCH * 3)
    seen_running: list[bool] = []

    async def meanwhile() -> None:
        while not cleaner.last_run:
            seen_running.append(cleaner.is_running)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(meanwhile)
        await anyio.lowlevel.checkpoint()
        result = await cleaner.run_once()
    assert result.removed == TRIM_BATCH * 3
    assert seen_running.count(True) >= 2 and not cleaner.is_running


async def test_retention_applies_as_soon_as_a_task_finishes(make_app: Callable[..., Litestar]) -> None:
    """With MAX_COMPLETED_TASKS=1, three completed tasks leave one before any sweep runs."""
    clock = FakeClock()
    app = make_app(clock=clock, max_completed_tasks=1, task_cleanup_interval=60_000)
    async with serve_in_loop(app) as client:
        for _ in range(3):
            task = (await client.post(f"{API}/tasks", json={"executor": "script", "start": True})).json()["task"]
        await anyio.wait_all_tasks_blocked()
        listing = (await client.get(f"{API}/tasks")).json()
        assert [t["id"] for t in listing["tasks"]] == [task["id"]]
        assert (await client.get(f"{API}/tasks/cleanup/status")).json()["status"]["lastRun"] == "idle"


async def test_periodic_cleanup_runs_on_the_interval(make_app: Callable[..., Litestar]) -> None:
    """A limit of 0 keeps the task that just finished until the next sweep removes it."""
    clock = FakeClock()
    app = make_app(clock=clock, max_completed_tasks=0, task_cleanup_interval=60_000)
    async with serve_in_loop(app) as client:
        for _ in range(3):
            task = (await client.post(f"{API}/tasks", json={"executor": "script", "start": True})).json()["task"]
        await anyio.wait_all_tasks_blocked()
        assert [t["id"] for t in (await client.get(f"{API}/tasks")).json()["tasks"]] == [task["id"]]
        await clock.wait_for_sleepers(1)
        clock.advance(60)
        await anyio.wait_all_tasks_blocked()
        assert (await client.get(f"{API}/tasks")).json()["tasks"] == []
        status = (await client.get(f"{API}/tasks/cleanup/status")).json()["status"]
        assert status["isActive"] is True and status["isRunning"] is False
        assert status["lastRun"]["trigger"] == "interval"
        assert status["options"] == {
            "maxCompletedTasks": 0,
            "maxFailedTasks": 20,
            "maxCancelledTasks": 20,
            "cleanupInterval": 60_000,
        }


async def test_cleanup_endpoints(make_app: Callable[..., Litestar]) -> None:
    async with serve_in_loop(make_app(max_cancelled_tasks=0)) as client:
        status = (await client.get(f"{API}/tasks/cleanup/status")).json()["status"]
        assert status["lastRun"] == "idle"
        for _ in range(3):
            task = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
            await client.post(f"{API}/tasks/{task['id']}/cancel")
        assert (await client.get(f"{API}/tasks/stats")).json()["stats"]["cancelled"] == 1  # retention, at once
        result = (await client.post(f"{API}/tasks/cleanup/run")).json()["result"]
        assert result["removed"] == 1 and result["removedCancelled"] == 1 and result["durationMs"] >= 0
        assert (await client.get(f"{API}/tasks/stats")).json()["stats"]["cancelled"] == 0
        assert (await client.get(f"{API}/tasks/cleanup/status")).json()["status"]["lastRun"]["trigger"] == "manual"

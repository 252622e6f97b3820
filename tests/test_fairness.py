"""Fair sharing of the global execution slots (the engine alone, no HTTP).

Issue 11: ten fresh sessions filled every global slot in seconds and a victim's
zero-delay task waited; ``priority: 1000`` jumped the global queue; queue positions
revealed other sessions' activity. Slots now go to the least busy session with
queued work, a session starts a task only while it runs fewer than the free slots,
`priority` orders a session's own tasks and positions count its own queue.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from async_tasks.system import TaskSystem
from async_tasks.task import TaskStatus
from async_tasks.testing import wait_for
from tests.helpers import ScriptExecutor


@pytest.fixture
async def system() -> AsyncIterator[TaskSystem]:
    environ = {
        "MAX_CONCURRENT_TASKS": "10",
        "MAX_CONCURRENT_TASKS_PER_SESSION": "10",
        "TASK_CREATE_RATE": "0",
        "SECRET_KEY": "fairness-secret-0123456789",
    }
    async with TaskSystem([ScriptExecutor], environ=environ, load_entry_points=False) as engine:
        yield engine
        for task in list(engine.execution.running_tasks()):
            ScriptExecutor.release(task.id)


async def hold(system: TaskSystem, session: str, count: int, **fields: object) -> list[str]:
    """`count` tasks of `session` that run until released."""
    return [
        (await system.create_task(session, executor="script", params={"hold": True, "steps": 0}, **fields)).id  # type: ignore[arg-type]
        for _ in range(count)
    ]


async def running(system: TaskSystem, session: str) -> int:
    return (await system.stats(session)).by_status[TaskStatus.RUNNING]


@pytest.mark.parametrize("attackers", [1, 3])
async def test_a_victims_task_starts_at_once_while_others_hold_their_share(system: TaskSystem, attackers: int) -> None:
    """Sessions queueing 50 long tasks each cannot take every slot: a newcomer's zero-delay
    task starts (and completes) within a second."""
    for n in range(attackers):
        await hold(system, f"attacker-{n}", 50)
    load = await system.execution.load()
    assert load.running < 10 and load.queued == 50 * attackers - load.running
    began = time.perf_counter()
    victim = await system.create_task("victim", executor="script", params={"steps": 0})
    await wait_for(system, "victim", victim.id, "completed", limit=1)
    assert time.perf_counter() - began < 1.0


async def test_one_session_alone_takes_at_most_half_the_slots(system: TaskSystem) -> None:
    await hold(system, "a", 30)
    assert await running(system, "a") == 5
    await hold(system, "b", 30)
    assert await running(system, "b") == 3  # b stops once it runs as many as are free (8 run, 2 free)


async def test_freed_slots_go_to_the_least_busy_session(system: TaskSystem) -> None:
    """Round-robin by load: as a's tasks end, b (running fewer) gets the slots, whatever
    a's queue holds."""
    a = await hold(system, "a", 40)
    b = await hold(system, "b", 40)
    assert (await running(system, "a"), await running(system, "b")) == (5, 3)
    for task_id in a[:3]:
        ScriptExecutor.release(task_id)
        await wait_for(system, "a", task_id, "completed")
    assert (await running(system, "a"), await running(system, "b")) == (3, 4)
    for task_id in b[:4]:
        ScriptExecutor.release(task_id)
        await wait_for(system, "b", task_id, "completed")
    assert (await running(system, "a"), await running(system, "b")) == (4, 3)


async def test_priority_orders_only_the_sessions_own_tasks() -> None:
    """b's priority 1000 does not pass a's queued task; within b, priority decides; queue
    positions count the caller's own queue only."""
    environ = {"MAX_CONCURRENT_TASKS": "2", "TASK_CREATE_RATE": "0"}
    async with TaskSystem([ScriptExecutor], environ=environ, load_entry_points=False) as engine:
        a = await hold(engine, "a", 2)  # a[0] runs; a[1] waits (a alone takes half the slots)
        (b1,) = await hold(engine, "b", 1)  # runs: the slots are full now
        (b2,) = await hold(engine, "b", 1, priority=1)
        (b3,) = await hold(engine, "b", 1, priority=1000)
        position = engine.queue_position
        assert [await position(await engine.get_task("b", t)) for t in (b2, b3)] == [2, 1]
        assert await position(await engine.get_task("a", a[1])) == 1
        ScriptExecutor.release(a[0])
        await wait_for(engine, "a", a[1], "running")  # a runs fewer than b: its turn, priority or not
        assert (await engine.get_task("b", b3)).status is TaskStatus.PENDING
        ScriptExecutor.release(b1)
        await wait_for(engine, "b", b3, "running")  # within b, priority first
        assert (await engine.get_task("b", b2)).status is TaskStatus.PENDING
        for task_id in (a[1], b3, b2):
            ScriptExecutor.release(task_id)
        await wait_for(engine, "b", b2, "completed")


async def test_the_per_session_limit_still_holds(system: TaskSystem) -> None:
    async with TaskSystem(
        [ScriptExecutor],
        environ={"MAX_CONCURRENT_TASKS": "100", "MAX_CONCURRENT_TASKS_PER_SESSION": "3", "TASK_CREATE_RATE": "0"},
        load_entry_points=False,
    ) as engine:
        ids = await hold(engine, "a", 5)
        assert await running(engine, "a") == 3
        ScriptExecutor.release(ids[0])
        await wait_for(engine, "a", ids[3], "running")
        assert await running(engine, "a") == 3
        for task in engine.execution.running_tasks():
            ScriptExecutor.release(task.id)


async def test_cancelled_queued_tasks_leave_the_queue(system: TaskSystem) -> None:
    ids = await hold(system, "a", 8)  # 5 run, 3 queued
    for task_id in ids[5:]:
        await system.cancel_task("a", task_id)
    assert (await system.execution.load()).queued == 0
    await hold(system, "b", 1)
    assert await running(system, "b") == 1

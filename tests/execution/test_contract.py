"""The execution contract: what every backend does with a task's attempts, run unchanged
on the memory backend and on Redis (API and worker in one engine, as ``serve
--with-worker``). What only a backend shared by processes has (a lost worker, a worker
handing attempts back) is in its own tests; faults at each hand-off are in tests/faults."""

from __future__ import annotations

import time

import anyio
import pytest

from async_tasks.errors import IdempotencyConflict, InvalidParams, InvalidTransition, QuotaExceeded
from async_tasks.system import TaskSystem
from async_tasks.task import Task, TaskStatus
from async_tasks.testing import FakeClock, wait_for
from tests.execution.conftest import MakeSystem
from tests.execution.executors import CountedExecutor, HoldExecutor
from tests.helpers import BlockingExecutor, ScriptExecutor

S = "s"


async def running(system: TaskSystem, session: str = S) -> int:
    return (await system.stats(session)).by_status[TaskStatus.RUNNING]


async def test_a_created_task_runs_to_its_end(make_system: MakeSystem) -> None:
    """Steps, result and history, whoever runs it."""
    system = await make_system()
    task = await system.create_task(S, executor="script", params={"steps": 4, "result": {"answer": 42}})
    done = await wait_for(system, S, task.id, "completed")
    assert done.result == {"answer": 42} and done.progress == 100 and done.current_step == "Working"
    assert [(h.status.value, h.reason) for h in done.history] == [
        ("pending", "created"),
        ("running", "started"),
        ("completed", "completed"),
    ]
    assert (await system.stats(S)).by_status[TaskStatus.COMPLETED] == 1


async def test_a_blocking_executor_runs_in_a_thread(make_system: MakeSystem) -> None:
    """A plain ``def execute`` gets its params as its Params struct and reports from its thread."""
    system = await make_system()
    task = await system.create_task(S, executor="blocking", params={"steps": 2})
    await wait_for(system, S, task.id, progress=10)
    BlockingExecutor.gates[task.id].set()
    done = await wait_for(system, S, task.id, "completed")
    assert done.result == {"thread": True} and done.progress == 100


async def test_cancel_stops_the_attempt_within_a_second(make_system: MakeSystem) -> None:
    """The task is cancelled at once, its progress frozen, and the executor stopped within 1 s."""
    system = await make_system()
    task = await system.create_task(S, executor="hold", params={"reports": 3})
    await wait_for(system, S, task.id, progress=60)
    asked = time.monotonic()
    cancelled = await system.cancel_task(S, task.id)
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.progress == 60
    with anyio.fail_after(1):
        await HoldExecutor.stopping.setdefault(task.id, anyio.Event()).wait()
    assert HoldExecutor.stopped[task.id] - asked < 1
    final = await system.get_task(S, task.id)
    assert final.status is TaskStatus.CANCELLED and final.progress == 60
    assert final.history[-1].reason == "cancelled by request"


async def test_a_cancelled_waiting_task_leaves_the_line(make_system: MakeSystem) -> None:
    """Tasks waiting for a slot have places; a cancelled one leaves, and never runs."""
    system = await make_system(worker_concurrency=1, max_concurrent_tasks=1)
    busy = await system.create_task(S, executor="script", params={"hold": True})
    await wait_for(system, S, busy.id, "running")
    first, second, third = [await system.create_task(S, executor="script") for _ in range(3)]
    assert [await system.queue_position(t) for t in (first, second, third)] == [1, 2, 3]
    await system.cancel_task(S, second.id)
    assert await system.queue_position(await system.get_task(S, third.id)) == 2
    ScriptExecutor.release(busy.id)
    await wait_for(system, S, third.id, "completed")
    assert (await system.get_task(S, second.id)).attempts == 0


async def test_failures_are_retried_after_a_backoff_until_they_succeed(make_system: MakeSystem) -> None:
    """A failing attempt runs again after the backoff, counting attempts, until it succeeds."""
    system = await make_system()
    task = await system.create_task(S, executor="script", params={"failAttempts": 2}, max_retries=3)
    done = await wait_for(system, S, task.id, "completed")
    assert done.attempts == 3 and done.auto_retries == 2
    reasons = [h.reason or "" for h in done.history]
    assert reasons[:3] == ["created", "started", "attempt failed"] and reasons[3].startswith("automatic retry 1 of 3")


async def test_a_retry_starts_when_its_backoff_ends(make_system: MakeSystem) -> None:
    """The next attempt starts about the backoff after the failure: neither before, nor a scheduler tick later."""
    system = await make_system(retry_backoff_ms=200)
    task = await system.create_task(S, executor="script", params={"failAttempts": 1}, max_retries=1)
    waiting = await wait_for(system, S, task.id, "pending", limit=5)
    while waiting.attempts < 1:
        waiting = await wait_for(system, S, task.id, "pending", limit=5)
    assert waiting.scheduled_at is not None
    done = await wait_for(system, S, task.id, "completed")
    failed_at = next(h.at for h in done.history if h.status is TaskStatus.FAILED)
    assert 100 <= (done.started_at or 0) - failed_at < 600  # the delay is 100 to 200 ms


async def test_spent_retries_fail_the_task_into_the_dead_letter(make_system: MakeSystem) -> None:
    """When the retry budget is spent the task fails for good, marked dead letter."""
    system = await make_system()
    task = await system.create_task(S, executor="script", params={"fail": "boom"}, max_retries=1)
    failed = await wait_for(system, S, task.id, "failed")
    while failed.attempts < 2 or not failed.dead_lettered:
        failed = await wait_for(system, S, task.id, "failed")
    assert failed.error == "RuntimeError: boom"
    assert [t.id for t in (await system.list_tasks(S, dead_letter=True)).tasks] == [task.id]


async def test_a_task_with_retries_left_is_never_trimmed_by_retention(make_system: MakeSystem) -> None:
    """With MAX_FAILED_TASKS=0, tasks whose attempts fail while others fail for good still run their retries."""
    system = await make_system(max_failed_tasks=0, retry_backoff_ms=50)
    flaky = [
        await system.create_task(S, executor="script", params={"failAttempts": 1}, max_retries=1) for _ in range(6)
    ]
    doomed = [await system.create_task(S, executor="script", params={"fail": "no"}) for _ in range(6)]
    for task in flaky:
        assert (await wait_for(system, S, task.id, "completed")).attempts == 2
    assert {t.id for t in (await system.list_tasks(S, status=TaskStatus.FAILED)).tasks} <= {t.id for t in doomed}


async def test_a_timeout_fails_the_attempt(make_system: MakeSystem) -> None:
    """An attempt past its timeout is stopped and the task fails saying so."""
    system = await make_system()
    task = await system.create_task(S, executor="hold", timeout_ms=100)
    failed = await wait_for(system, S, task.id, "failed")
    assert failed.error == "Task timed out after 100 ms"


async def test_start_runs_a_task_created_without_it_once(make_system: MakeSystem) -> None:
    """``start: false`` waits unqueued; starting it queues it, starting again changes nothing; it runs once."""
    system = await make_system(worker_concurrency=1, max_concurrent_tasks=1)
    busy = await system.create_task(S, executor="script", params={"hold": True})
    await wait_for(system, S, busy.id, "running")
    task = await system.create_task(S, executor="script", start=False)
    assert await system.queue_position(task) is None
    await system.start_task(S, task.id)
    await system.start_task(S, task.id)
    assert await system.queue_position(task) == 1
    ScriptExecutor.release(busy.id)
    done = await wait_for(system, S, task.id, "completed")
    assert done.attempts == 1
    with pytest.raises(InvalidTransition, match="completed"):
        await system.start_task(S, task.id)


async def test_a_cancelled_task_retried_by_hand_runs(make_system: MakeSystem) -> None:
    """Cancel a waiting task, then retry it: it runs (its earlier delivery does not block the new one);
    a running task cancelled and retried runs a second attempt."""
    system = await make_system(worker_concurrency=1, max_concurrent_tasks=1)
    busy = await system.create_task(S, executor="script", params={"hold": True})
    await wait_for(system, S, busy.id, "running")
    task = await system.create_task(S, executor="script")
    await system.cancel_task(S, task.id)
    await system.retry_task(S, task.id)
    await system.cancel_task(S, busy.id)
    assert (await wait_for(system, S, task.id, "completed")).attempts == 1
    await system.retry_task(S, busy.id)
    await wait_for(system, S, busy.id, "running")
    ScriptExecutor.release(busy.id)
    assert (await wait_for(system, S, busy.id, "completed")).attempts == 2


async def test_a_cancelled_retry_waiting_out_its_backoff_never_runs(make_system: MakeSystem) -> None:
    """A task cancelled between a failed attempt and its retry stays cancelled."""
    system = await make_system(retry_backoff_ms=60_000, retry_backoff_max_ms=60_000)
    task = await system.create_task(S, executor="script", params={"failAttempts": 1}, max_retries=1)
    waiting = await wait_for(system, S, task.id, "pending", limit=5)
    while waiting.attempts < 1:
        waiting = await wait_for(system, S, task.id, "pending", limit=5)
    cancelled = await system.cancel_task(S, task.id)
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.scheduled_at is None
    assert (await system.execution.load()).queued == 0


async def test_an_idempotency_key_creates_one_task_that_runs_once(make_system: MakeSystem) -> None:
    """Ten concurrent creates with one key: one task, run once; a different request with the key is refused."""
    system = await make_system()
    made: list[tuple[Task, bool]] = []

    async def create() -> None:
        made.append(await system.create_or_replay(S, executor="script", idempotency_key="k"))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(create)
    assert len({task.id for task, _ in made}) == 1 and sum(not replayed for _, replayed in made) == 1
    done = await wait_for(system, S, made[0][0].id, "completed")
    assert done.attempts == 1
    with pytest.raises(IdempotencyConflict):
        await system.create_task(S, executor="script", params={"steps": 9}, idempotency_key="k")


async def test_the_session_concurrency_limit_holds(make_system: MakeSystem) -> None:
    """With one slot per session, a session's tasks run one at a time, and all complete."""
    system = await make_system(max_concurrent_tasks_per_session=1)
    CountedExecutor.executing = CountedExecutor.most_at_once = 0
    made = [await system.create_task(S, executor="counted", params={"steps": 4}) for _ in range(6)]
    for task in made:
        await wait_for(system, S, task.id, "completed")
    assert CountedExecutor.most_at_once == 1


async def test_priority_orders_a_session_s_own_waiting_tasks_only(make_system: MakeSystem) -> None:
    """Behind a busy slot, higher priority goes first within the session, then first come first served;
    another session's tasks are neither counted nor overtaken."""
    system = await make_system(worker_concurrency=1, max_concurrent_tasks=1)
    busy = await system.create_task(S, executor="script", params={"hold": True})
    await wait_for(system, S, busy.id, "running")
    low = await system.create_task(S, executor="script")
    other = await system.create_task("other", executor="script")
    normal = await system.create_task(S, executor="script", priority=1)
    high = await system.create_task(S, executor="script", priority=5)
    higher = await system.create_task(S, executor="script", priority=5)  # equal: first come first
    own = (high, higher, normal, low)
    assert [await system.queue_position(t) for t in own] == [1, 2, 3, 4]
    assert await system.queue_position(other) == 1  # other sessions' tasks are not counted
    ScriptExecutor.release(busy.id)
    finished = [await wait_for(system, t.session_key, t.id, "completed") for t in (*own, other)]
    mine = sorted((t for t in finished if t.session_key == S), key=lambda t: (t.started_at or 0, t.history[1].at))
    assert [t.id for t in mine] == [t.id for t in own]


async def test_a_freed_slot_goes_to_a_waiting_session_before_a_busy_one(make_system: MakeSystem) -> None:
    """A newcomer's task starts in the next freed slot, before any more of a busy session's waiting tasks."""
    system = await make_system(worker_concurrency=2, max_concurrent_tasks=2)
    mine = [await system.create_task(S, executor="script", params={"hold": True}) for _ in range(5)]
    await settled(system)
    states = {t.id: (await system.get_task(S, t.id)).status for t in mine}
    running_ids = [task_id for task_id, status in states.items() if status is TaskStatus.RUNNING]
    waiting_ids = [task_id for task_id, status in states.items() if status is TaskStatus.PENDING]
    assert running_ids and waiting_ids
    newcomer = await system.create_task("newcomer", executor="script", params={"hold": True})
    ScriptExecutor.release(running_ids[0])
    await wait_for(system, "newcomer", newcomer.id, "running")
    assert [(await system.get_task(S, task_id)).status for task_id in waiting_ids] == [TaskStatus.PENDING] * len(
        waiting_ids
    )
    for task in (*mine, newcomer):
        if not (await system.get_task(task.session_key, task.id)).is_terminal:
            await system.cancel_task(task.session_key, task.id)


async def test_a_task_nobody_started_does_not_halve_a_session_s_slots(make_system: MakeSystem) -> None:
    """Fair sharing reads work waiting to run: an unstarted task in another session changes
    nothing to how many tasks a lone session runs."""
    system = await make_system(worker_concurrency=4, max_concurrent_tasks=4)

    async def lone_session_runs() -> int:
        made = [await system.create_task(S, executor="hold") for _ in range(6)]
        await settled(system)
        count = await running(system)
        for task in made:
            cancelled = await system.cancel_task(S, task.id)
            if cancelled.attempts:  # it ran: wait until its executor has stopped
                with anyio.fail_after(5):
                    await HoldExecutor.stopping.setdefault(task.id, anyio.Event()).wait()
        return count

    alone = await lone_session_runs()
    await system.create_task("idle", executor="script", start=False)
    assert await lone_session_runs() == alone >= 2


async def settled(system: TaskSystem) -> None:
    """Wait until every task handed to a worker has started (woken by the store's events)."""
    changed = anyio.Event()

    def listener(event: object) -> None:
        changed.set()

    unsubscribe = system.store.events.subscribe(listener)
    try:
        with anyio.fail_after(5):
            while (await system.execution.load()).starting:
                await changed.wait()
                changed = anyio.Event()
    finally:
        unsubscribe()


async def test_a_delayed_start_starts_at_its_time(make_system: MakeSystem) -> None:
    """A task created with startAt waits pending (scheduledAt says when; it holds no place in
    line) and starts at that time: never before, and within the scheduler's precision after
    (a few milliseconds when idle; the bound here leaves room for a loaded test machine)."""
    system = await make_system()
    start_at = system.clock.now_ms() + 300
    task = await system.create_task(S, executor="script", start_at=start_at)
    assert (task.status, task.scheduled_at, task.waiting_reason) == (TaskStatus.PENDING, start_at, None)
    assert await system.queue_position(task) is None
    done = await wait_for(system, S, task.id, "completed")
    assert done.started_at is not None and start_at <= done.started_at < start_at + 250
    assert done.scheduled_at is None and done.attempts == 1


async def test_a_delayed_start_can_be_cancelled_moved_or_started_early(make_system: MakeSystem) -> None:
    """Before its time a delayed task can be cancelled (it never runs), started now, or moved
    to another time, sooner or later; a time already past starts it now. (On a clock the test
    moves: each step happens before the times it names, however slow the machine.)"""
    clock = FakeClock()
    system = await make_system(clock=clock)
    now = clock.now_ms()
    far = now + 3_600_000
    cancelled, early, sooner, later = [
        await system.create_task(S, executor="script", start_at=at) for at in (far, far, far, now + 200)
    ]
    await system.cancel_task(S, cancelled.id)
    await system.start_task(S, early.id)
    assert (await wait_for(system, S, early.id, "completed")).started_at == now
    moved = await system.start_task(S, sooner.id, start_at=now + 300)
    assert moved.scheduled_at == now + 300
    assert (await system.start_task(S, later.id, start_at=far)).scheduled_at == far
    clock.advance(0.3)
    done = await wait_for(system, S, sooner.id, "completed")
    assert done.started_at == now + 300
    postponed = await system.get_task(S, later.id)  # its first time (now + 200) has passed
    assert (postponed.status, postponed.scheduled_at) == (TaskStatus.PENDING, far)
    assert (await system.get_task(S, cancelled.id)).attempts == 0
    past = await system.create_task(S, executor="script", start_at=now - 60_000)
    assert (await wait_for(system, S, past.id, "completed")).attempts == 1


async def test_delayed_tasks_count_against_the_quotas(make_system: MakeSystem) -> None:
    """A task waiting for its start is active: it counts in MAX_ACTIVE_TASKS_PER_SESSION."""
    system = await make_system(max_active_tasks_per_session=2)
    far = system.clock.now_ms() + 3_600_000
    for _ in range(2):
        await system.create_task(S, executor="script", start_at=far)
    with pytest.raises(QuotaExceeded):
        await system.create_task(S, executor="script", start_at=far)
    with pytest.raises(QuotaExceeded):
        await system.create_task(S, executor="script")


async def test_a_start_too_far_ahead_is_refused_with_a_sentence(make_system: MakeSystem) -> None:
    """startAt beyond MAX_START_DELAY_MS is refused, saying how far it may be."""
    system = await make_system(max_start_delay_ms=86_400_000)
    with pytest.raises(InvalidParams) as refused:
        await system.create_task(S, executor="script", start_at=system.clock.now_ms() + 2 * 86_400_000)
    assert refused.value.message == (
        "startAt is 2 days ahead; a task can start at most 1 day ahead (MAX_START_DELAY_MS is 86400000)."
    )
    assert (await system.stats(S)).total == 0


async def test_a_delayed_task_s_pending_lifetime_counts_from_its_start(make_system: MakeSystem) -> None:
    """PENDING_TASK_TTL_MS does not cancel a task scheduled two hours ahead an hour after
    it was created (a never-started one is): its lifetime begins at its start; then it runs."""
    clock = FakeClock()
    system = await make_system(clock=clock, pending_task_ttl_ms=3_600_000)
    scheduled = await system.create_task(S, executor="script", start_at=clock.now_ms() + 7_200_000)
    forgotten = await system.create_task(S, executor="script", start=False)
    clock.advance(3_700)
    await system.run_cleanup(S)
    assert (await system.get_task(S, forgotten.id)).status is TaskStatus.CANCELLED
    assert (await system.get_task(S, scheduled.id)).status is TaskStatus.PENDING
    clock.advance(3_600)
    done = await wait_for(system, S, scheduled.id, "completed")
    assert done.started_at == clock.now_ms()

"""The Redis backend's execution on SAQ, in one process: engines with and without an
embedded worker share a real redis-server, as API and worker processes would."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any, ClassVar

import anyio
import pytest

from async_tasks import TaskExecutor, TaskParams
from async_tasks.events import EventType, TaskEvent
from async_tasks.execution.saq import SaqExecution
from async_tasks.settings import Settings
from async_tasks.store.redis import RedisTaskStore
from async_tasks.system import TaskSystem
from async_tasks.task import Task, TaskStatus
from async_tasks.testing import wait_for
from tests.helpers import SECRET, BlockingExecutor, ScriptExecutor

SESSION = "s"


class HoldParams(TaskParams):
    reports: int = 0


class HoldExecutor(TaskExecutor[HoldParams]):
    """Reports `reports` times as fast as it can, then holds until cancelled; records
    when its cancellation arrived."""

    name = "hold"
    stopped: ClassVar[dict[str, float]] = {}
    stopping: ClassVar[dict[str, anyio.Event]] = {}

    async def execute(self, task: Task[HoldParams], progress: Any) -> None:
        for i in range(task.params.reports):
            await progress(i * 90 / task.params.reports)
        try:
            await anyio.sleep_forever()
        finally:
            self.stopped[task.id] = time.monotonic()
            self.stopping.setdefault(task.id, anyio.Event()).set()


class CountedExecutor(ScriptExecutor):
    """The script executor, counting how many of its runs execute at once (the engines of
    a test share one process, so the count covers every worker)."""

    name = "counted"
    executing: ClassVar[int] = 0
    most_at_once: ClassVar[int] = 0

    async def execute(self, task: Task, progress: Any) -> Any:
        cls = type(self)
        cls.executing += 1
        cls.most_at_once = max(cls.most_at_once, cls.executing)
        try:
            return await super().execute(task, progress)
        finally:
            cls.executing -= 1


EXECUTORS: list[type[TaskExecutor[Any, Any]]] = [ScriptExecutor, BlockingExecutor, HoldExecutor, CountedExecutor]
MakeSystem = Callable[..., Any]


@pytest.fixture
async def make_system(redis_url: str, redis_prefix: str) -> AsyncIterator[MakeSystem]:
    """Start engines on the test's Redis keys: ``await make_system(worker=True, **settings)``."""
    async with AsyncExitStack() as stack:

        async def make(*, worker: bool = False, **overrides: Any) -> TaskSystem:
            fields: dict[str, Any] = {
                "secret_key": SECRET,
                "task_create_rate": 0.0,
                "task_backend": redis_url,
                "redis_key_prefix": redis_prefix,
                "embedded_worker": worker,
                "worker_concurrency": 4,
                "worker_lease_ms": 600,
                "retry_backoff_ms": 0,
            }
            fields.update(overrides)
            system = TaskSystem(EXECUTORS, settings=Settings(**fields), load_entry_points=False)
            return await stack.enter_async_context(system)

        yield make


def execution_of(system: TaskSystem) -> SaqExecution:
    assert isinstance(system.execution, SaqExecution)
    return system.execution


async def test_a_task_created_by_an_api_runs_on_a_worker(make_system: MakeSystem) -> None:
    """Created through one engine, run by another's worker: steps, result and history as in memory mode."""
    api = await make_system()
    worker = await make_system(worker=True)
    task = await api.create_task(SESSION, executor="script", params={"steps": 4, "result": {"answer": 42}})
    done = await wait_for(worker, SESSION, task.id, "completed")
    assert done.result == {"answer": 42} and done.progress == 100 and done.current_step == "Working"
    assert [h.status.value for h in done.history] == ["pending", "running", "completed"]
    seen = await api.get_task(SESSION, task.id)
    params = {"steps": 4, "hold": False, "fail": None, "failAttempts": 0, "result": {"answer": 42}}
    assert seen.status is TaskStatus.COMPLETED and seen.params == params  # plain JSON values in the store
    assert (await api.stats(SESSION)).by_status[TaskStatus.COMPLETED] == 1


async def test_a_blocking_executor_runs_in_a_thread_on_the_worker(make_system: MakeSystem) -> None:
    """A plain ``def execute`` gets its params as its Params struct and reports from its thread."""
    system = await make_system(worker=True)
    task = await system.create_task(SESSION, executor="blocking", params={"steps": 2})
    await wait_for(system, SESSION, task.id, progress=10)
    BlockingExecutor.gates[task.id].set()
    done = await wait_for(system, SESSION, task.id, "completed")
    assert done.result == {"thread": True} and done.progress == 100


async def test_cancel_from_an_api_stops_the_worker_attempt_within_a_second(make_system: MakeSystem) -> None:
    """The task is cancelled at once, its progress frozen, and the executor on the worker stopped within 1 s."""
    api = await make_system()
    worker = await make_system(worker=True)
    task = await api.create_task(SESSION, executor="hold", params={"reports": 3})
    await wait_for(worker, SESSION, task.id, progress=60)
    asked = time.monotonic()
    cancelled = await api.cancel_task(SESSION, task.id)
    assert cancelled.status is TaskStatus.CANCELLED and cancelled.progress == 60
    with anyio.fail_after(1):
        await HoldExecutor.stopping.setdefault(task.id, anyio.Event()).wait()
    assert HoldExecutor.stopped[task.id] - asked < 1
    assert not execution_of(worker).running
    final = await api.get_task(SESSION, task.id)
    assert final.status is TaskStatus.CANCELLED and final.progress == 60
    assert final.history[-1].reason == "cancelled by request"


async def test_a_cancelled_queued_task_leaves_the_queue(make_system: MakeSystem) -> None:
    """Without a worker, a task waits with a queue position; cancelling takes it out of SAQ's queue."""
    api = await make_system()
    first = await api.create_task(SESSION, executor="script")
    second = await api.create_task(SESSION, executor="script")
    assert [await api.queue_position(t) for t in (first, second)] == [1, 2]
    assert (await api.execution.load()).queued == 2
    await api.cancel_task(SESSION, first.id)
    assert await api.queue_position(await api.get_task(SESSION, second.id)) == 1
    assert (await api.execution.load()).queued == 1


async def test_failures_retry_with_backoff_as_delayed_jobs(make_system: MakeSystem) -> None:
    """A failing attempt runs again after the backoff, counting attempts, until it succeeds."""
    system = await make_system(worker=True)
    task = await system.create_task(SESSION, executor="script", params={"failAttempts": 2}, max_retries=3)
    done = await wait_for(system, SESSION, task.id, "completed")
    assert done.attempts == 3 and done.auto_retries == 2
    reasons = [h.reason or "" for h in done.history]
    assert reasons[:3] == ["created", "started", "attempt failed"] and reasons[3].startswith("automatic retry 1 of 3")


async def test_a_retry_runs_after_its_backoff_not_a_scheduler_tick(make_system: MakeSystem) -> None:
    """The retry is queued when its delay ends, not at SAQ's next once-a-second schedule."""
    system = await make_system(worker=True, retry_backoff_ms=200)
    task = await system.create_task(SESSION, executor="script", params={"failAttempts": 1}, max_retries=1)
    done = await wait_for(system, SESSION, task.id, "completed")
    failed_at = next(h.at for h in done.history if h.status is TaskStatus.FAILED)
    assert 100 <= (done.started_at or 0) - failed_at < 900  # the delay is 100 to 200 ms


async def test_spent_retries_fail_the_task_as_dead_letter(make_system: MakeSystem) -> None:
    """When the retry budget is spent the task fails for good, marked dead letter."""
    system = await make_system(worker=True)
    task = await system.create_task(SESSION, executor="script", params={"fail": "boom"}, max_retries=1)
    failed = await wait_for(system, SESSION, task.id, "failed", limit=10)
    while failed.attempts < 2:
        failed = await wait_for(system, SESSION, task.id, "failed", limit=10)
    assert failed.error == "RuntimeError: boom" and failed.dead_lettered


async def test_a_timeout_fails_the_attempt(make_system: MakeSystem) -> None:
    """An attempt past its timeout is stopped and the task fails saying so."""
    system = await make_system(worker=True)
    task = await system.create_task(SESSION, executor="hold", timeout_ms=100)
    failed = await wait_for(system, SESSION, task.id, "failed")
    assert failed.error == "Task timed out after 100 ms"


async def test_progress_is_coalesced_before_redis(make_system: MakeSystem) -> None:
    """A flood of reports becomes at most about ten store writes a second; the latest value wins."""
    system = await make_system(worker=True)
    writes: list[TaskEvent] = []
    unsubscribe = system.store.events.subscribe(lambda e: writes.append(e) if e.type is EventType.PROGRESS else None)
    try:
        began = time.monotonic()
        task = await system.create_task(SESSION, executor="hold", params={"reports": 5000})
        await wait_for(system, SESSION, task.id, progress=89.98)
        elapsed = time.monotonic() - began
    finally:
        unsubscribe()
    assert len(writes) <= 2 + elapsed / 0.1
    assert (await system.get_task(SESSION, task.id)).progress == 89.98
    await system.cancel_task(SESSION, task.id)


async def test_a_lost_worker_s_task_runs_again_elsewhere(make_system: MakeSystem) -> None:
    """A running task whose worker stopped renewing its lease is failed "worker lost" and re-run."""
    api = await make_system()
    task = await api.create_task(SESSION, executor="script", start=False, max_retries=1)
    store = api.store
    assert isinstance(store, RedisTaskStore)
    await store.transition(SESSION, task.id, TaskStatus.RUNNING, owner="gone-worker")  # a worker that died
    worker = await make_system(worker=True)
    done = await wait_for(worker, SESSION, task.id, "completed")
    assert done.attempts == 2 and done.auto_retries == 1
    lost = next(h for h in done.history if h.reason == "worker lost")
    assert lost.status is TaskStatus.FAILED and lost.attempt == 1


async def test_a_lost_worker_s_task_fails_when_its_budget_is_spent(make_system: MakeSystem) -> None:
    """Without retries left, a lost attempt fails the task with the reason."""
    api = await make_system()
    task = await api.create_task(SESSION, executor="script", start=False)
    store = api.store
    assert isinstance(store, RedisTaskStore)
    await store.transition(SESSION, task.id, TaskStatus.RUNNING, owner="gone-worker")
    worker = await make_system(worker=True)
    failed = await wait_for(worker, SESSION, task.id, "failed")
    assert failed.history[-1].reason == "worker lost" and "was lost" in (failed.error or "")


async def test_a_stopping_worker_hands_its_attempts_back(make_system: MakeSystem) -> None:
    """A worker shutting down hands unfinished attempts back to the queue (retry budget untouched)."""
    api = await make_system()
    first = await make_system(worker=True, shutdown_grace_ms=100)
    task = await api.create_task(SESSION, executor="script", params={"hold": True})
    await wait_for(first, SESSION, task.id, "running")
    await first.shutdown()
    back = await api.get_task(SESSION, task.id)
    assert back.status is TaskStatus.PENDING and back.auto_retries == 0
    assert [h.reason for h in back.history[-2:]] == ["worker shutdown", "handed back to the queue"]
    second = await make_system(worker=True)
    await wait_for(second, SESSION, task.id, "running")
    ScriptExecutor.release(task.id)
    done = await wait_for(second, SESSION, task.id, "completed")
    assert done.attempts == 2


async def test_the_session_concurrency_limit_holds_across_workers(make_system: MakeSystem) -> None:
    """With one slot per session, a session's tasks run one at a time on two workers, and all complete."""
    workers = [await make_system(worker=True, max_concurrent_tasks_per_session=1) for _ in range(2)]
    CountedExecutor.executing = CountedExecutor.most_at_once = 0
    done = anyio.Event()
    completed: set[str] = set()

    def count(event: TaskEvent) -> None:
        if event.status == "completed":
            completed.add(event.task_id)
            if len(completed) == 6:
                done.set()

    for w in workers:
        w.store.events.subscribe(count)  # each worker's own changes: together, all of them
    for _ in range(6):
        await workers[0].create_task(SESSION, executor="counted", params={"steps": 4})
    with anyio.fail_after(10):
        await done.wait()
    # Counted where the work happens: a worker's own bookkeeping of an attempt outlives
    # the moment its outcome frees the slot in the store.
    assert CountedExecutor.most_at_once == 1


async def test_priority_orders_a_session_s_own_tasks_only(make_system: MakeSystem) -> None:
    """Queued behind a busy worker, a higher priority goes before the session's earlier tasks, never another's."""
    worker = await make_system(worker=True, worker_concurrency=1)
    busy = await worker.create_task(SESSION, executor="script", params={"hold": True})
    await wait_for(worker, SESSION, busy.id, "running")
    low = await worker.create_task(SESSION, executor="script")
    other = await worker.create_task("other", executor="script")
    normal = await worker.create_task(SESSION, executor="script", priority=1)
    high = await worker.create_task(SESSION, executor="script", priority=5)
    higher = await worker.create_task(SESSION, executor="script", priority=5)  # equal: first come first
    own = (high, higher, normal, low)
    assert [await worker.queue_position(t) for t in own] == [1, 2, 3, 4]
    assert await worker.queue_position(other) == 1  # other sessions' tasks are not counted
    ScriptExecutor.release(busy.id)
    order = (high, other, higher, normal, low)
    finished = [await wait_for(worker, t.session_key, t.id, "completed") for t in order]
    assert [t.id for t in sorted(finished, key=lambda t: t.started_at or 0)] == [t.id for t in order]


async def test_a_freed_slot_goes_to_a_waiting_session_first(make_system: MakeSystem) -> None:
    """A session holding every slot with more queued does not get the next free slot while another waits."""
    worker = await make_system(worker=True, worker_concurrency=3)
    mine = [await worker.create_task(SESSION, executor="script", params={"hold": True}) for _ in range(5)]
    for task in mine[:3]:
        await wait_for(worker, SESSION, task.id, "running")
    newcomer = await worker.create_task("newcomer", executor="script", params={"hold": True})
    ScriptExecutor.release(mine[0].id)
    await wait_for(worker, "newcomer", newcomer.id, "running")
    assert (await worker.stats(SESSION)).by_status[TaskStatus.RUNNING] == 2
    for task in (*mine[1:], newcomer):
        await worker.cancel_task(task.session_key, task.id)

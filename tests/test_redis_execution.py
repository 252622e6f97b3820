"""The Redis backend's execution across engines in one process (an API without a worker,
workers of their own), sharing a real redis-server as a deployment's processes do: what
only a shared backend has. What every backend does is in tests/execution; faults at each
hand-off are in tests/faults."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import msgspec
import pytest

from async_tasks.backends.redis import RedisTaskStore
from async_tasks.backends.redis.worker import RedisWorker
from async_tasks.events import Event, EventType, TaskEvent
from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from async_tasks.task import TaskStatus
from async_tasks.testing import wait_for
from async_tasks.web.frames import OPENED
from async_tasks.web.streams import StreamBridge
from tests.execution.executors import EXECUTORS, CountedExecutor, HoldExecutor
from tests.faults.proxy import RedisFaultProxy
from tests.helpers import SECRET, ScriptExecutor, ScriptParams

S = "s"
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
                **overrides,
            }
            system = TaskSystem(EXECUTORS, settings=Settings(**fields), load_entry_points=False)
            return await stack.enter_async_context(system)

        yield make


def store_of(system: TaskSystem) -> RedisTaskStore:
    assert isinstance(system.store, RedisTaskStore)
    return system.store


def worker_of(system: TaskSystem) -> RedisWorker:
    assert isinstance(system.worker, RedisWorker)
    return system.worker


async def test_a_task_created_by_an_api_runs_on_a_worker(make_system: MakeSystem) -> None:
    """Created through an API engine, run by another engine's worker: the store keeps params as
    JSON, and each engine reads them back as the executor's params."""
    api = await make_system()
    worker = await make_system(worker=True)
    task = await api.create_task(S, executor="script", params={"steps": 4, "result": {"answer": 42}})
    done = await wait_for(worker, S, task.id, "completed")
    assert done.result == {"answer": 42}
    seen = await api.get_task(S, task.id)
    stored = await api.get_task(S, task.id, decode=False)
    params = {"steps": 4, "hold": False, "fail": None, "failAttempts": 0, "result": {"answer": 42}}
    assert seen.status is TaskStatus.COMPLETED and seen.params == ScriptParams(steps=4, result={"answer": 42})
    assert msgspec.json.decode(msgspec.json.encode(stored.params)) == params


async def test_cancel_from_an_api_stops_the_attempt_on_its_worker(make_system: MakeSystem) -> None:
    """The API's cancel reaches the worker running the attempt within a second."""
    api = await make_system()
    worker = await make_system(worker=True)
    task = await api.create_task(S, executor="hold", params={"reports": 3})
    await wait_for(worker, S, task.id, progress=60)
    asked = time.monotonic()
    await api.cancel_task(S, task.id)
    with anyio.fail_after(1):
        await HoldExecutor.stopping.setdefault(task.id, anyio.Event()).wait()
    assert HoldExecutor.stopped[task.id] - asked < 1
    assert not worker_of(worker).running


async def test_tasks_wait_parked_while_no_worker_runs_and_start_when_one_joins(make_system: MakeSystem) -> None:
    """With no worker, tasks wait in their session's line (positions 1, 2); a worker that joins takes them."""
    api = await make_system()
    first, second = [await api.create_task(S, executor="script") for _ in range(2)]
    assert [await api.queue_position(t) for t in (first, second)] == [1, 2]
    assert (await api.execution.load()).queued == 2
    worker = await make_system(worker=True)
    for task in (first, second):
        await wait_for(worker, S, task.id, "completed")
    assert (await api.execution.load()).queued == 0


async def test_progress_is_coalesced_before_redis(make_system: MakeSystem) -> None:
    """A flood of reports becomes at most about ten store writes a second; the latest value wins."""
    system = await make_system(worker=True)
    writes: list[TaskEvent] = []
    unsubscribe = system.store.events.subscribe(lambda e: writes.append(e) if e.type is EventType.PROGRESS else None)
    try:
        began = time.monotonic()
        task = await system.create_task(S, executor="hold", params={"reports": 5000})
        await wait_for(system, S, task.id, progress=89.98)
        elapsed = time.monotonic() - began
    finally:
        unsubscribe()
    assert len(writes) <= 2 + elapsed / 0.1
    assert (await system.get_task(S, task.id)).progress == 89.98
    await system.cancel_task(S, task.id)


async def test_a_flood_of_log_lines_is_coalesced_before_redis_and_kept_within_bounds(make_system: MakeSystem) -> None:
    """5,000 lines written at once: a store write carries many of them (about ten writes a
    second), the task keeps the newest TASK_LOG_LINES, numbered, and counts the rest."""
    api = await make_system(task_log_lines=50)
    worker = await make_system(worker=True, task_log_lines=50)
    writes: list[Event] = []
    unsubscribe = worker.store.events.subscribe(lambda e: writes.append(e) if e.type is EventType.LOG else None)
    try:
        began = time.monotonic()
        task = await api.create_task(S, executor="chatty", params={"lines": 5000})
        done = await wait_for(worker, S, task.id, "completed")
        elapsed = time.monotonic() - began
    finally:
        unsubscribe()
    assert 1 <= len(writes) <= 2 + elapsed / 0.1
    assert [(line.n, line.message) for line in done.logs] == [(n, f"line {n}") for n in range(4951, 5001)]
    assert done.logs[-1].data == {"i": 5000} and done.logs_dropped == 4950
    seen = await api.get_task(S, task.id)
    assert seen.logs == done.logs and seen.logs_dropped == 4950


async def test_log_lines_reach_an_api_s_streams_from_a_worker(make_system: MakeSystem) -> None:
    """A worker's lines are published on the session channel: an API process's stream of
    the task gets them as `log` events, numbered, before the task's end."""
    api = await make_system()
    worker = await make_system(worker=True)
    bridge = StreamBridge(api.store, shared=api.backend.events)
    async with anyio.create_task_group() as tg:
        await tg.start(bridge.run)
        task = await api.create_task(S, executor="chatty", params={"lines": 3, "hold": True})
        await wait_for(worker, S, task.id, "running")
        frames = bridge.task_stream(S, task.id)
        assert await anext(frames) is OPENED
        seen: list[int] = []
        with anyio.fail_after(5):
            async for frame in frames:
                data = msgspec.json.decode(frame.data)
                if frame.type == "snapshot":
                    seen += [line["n"] for line in data["logs"]]
                elif frame.type == "log":
                    seen += [line["n"] for line in data["lines"]]
                if sorted(set(seen)) == [1, 2, 3]:
                    break
        await frames.aclose()
        await api.cancel_task(S, task.id)
        tg.cancel_scope.cancel()


async def test_an_api_process_estimates_from_the_run_times_its_workers_recorded(make_system: MakeSystem) -> None:
    """The finish script keeps each executor's recent run times in Redis: an API process that
    ran nothing estimates a waiting task from them, with its place in the session's line."""
    api = await make_system(max_concurrent_tasks_per_session=1)
    worker = await make_system(worker=True, max_concurrent_tasks_per_session=1)
    done = await api.create_task(S, executor="script", params={"steps": 1})
    done = await wait_for(worker, S, done.id, "completed")
    assert await api.store.recent_durations(["script", "hold"]) == {"script": [done.duration_ms]}
    held = await api.create_task(S, executor="script", params={"hold": True})
    await wait_for(worker, S, held.id, "running")
    waiting = [await api.create_task(S, executor="script") for _ in range(2)]
    outlook = await api.outlook(S, [await api.get_task(S, t.id) for t in (held, *waiting)])
    assert [outlook[t.id].queue_position for t in waiting] == [1, 2]
    typical = done.duration_ms or 0
    guesses = [outlook[t.id].eta for t in waiting]
    assert [(g.starts_in_ms, g.samples) for g in guesses if g is not None] == [(typical, 1), (2 * typical, 1)]
    assert outlook[held.id].queue_position is None
    # A /status poll reads the same in one script: the status fields, the place and the estimate.
    for task in (done, held, *waiting):
        polled, seen = await api.task_status(S, task.id)
        whole = await api.get_task(S, task.id)
        fields = ("status", "progress", "current_step", "started_at", "completed_at", "scheduled_at", "waiting_reason")
        assert [getattr(polled, name) for name in fields] == [getattr(whole, name) for name in fields]
        expected = outlook.get(task.id)
        assert (seen is None) == (expected is None)
        if seen is not None and expected is not None:
            assert seen.queue_position == expected.queue_position
            assert seen.eta is not None and expected.eta is not None
            assert (seen.eta.starts_in_ms, seen.eta.typical_ms) == (expected.eta.starts_in_ms, expected.eta.typical_ms)
    ScriptExecutor.release(held.id)
    for task in waiting:
        await wait_for(worker, S, task.id, "completed")


async def lose_a_worker(api: TaskSystem, task_id: str, worker: str = "gone-worker") -> None:
    """Make `task_id` run on a worker that then died: dispatched, claimed, no lease."""
    store = store_of(api)
    await store.join(worker, 1, 600, b'{"executors": ["script"]}')
    (dispatched,) = await store.dispatched_to(worker)
    await store.claim(S, task_id, 1, worker, dispatched.job_key)
    await store.redis.delete(store.keys.lease(worker))


async def test_a_lost_worker_s_task_runs_again_elsewhere(make_system: MakeSystem) -> None:
    """A running task whose worker stopped renewing its lease is failed "worker lost" and re-run."""
    api = await make_system()
    task = await api.create_task(S, executor="script", max_retries=1)
    await lose_a_worker(api, task.id)
    worker = await make_system(worker=True)
    done = await wait_for(worker, S, task.id, "completed")
    assert done.attempts == 2 and done.auto_retries == 1
    lost = next(h for h in done.history if h.reason == "worker lost")
    assert lost.status is TaskStatus.FAILED and lost.attempt == 1
    assert await store_of(api).workers() == {worker_of(worker).worker_id: 4}


async def test_a_lost_worker_s_task_fails_when_its_budget_is_spent(make_system: MakeSystem) -> None:
    """Without retries left, a lost attempt fails the task with the reason."""
    api = await make_system()
    task = await api.create_task(S, executor="script")
    await lose_a_worker(api, task.id)
    worker = await make_system(worker=True)
    failed = await wait_for(worker, S, task.id, "failed")
    assert failed.history[-1].reason == "worker lost" and "was lost" in (failed.error or "")


async def test_a_job_queued_on_a_lost_worker_goes_to_another(make_system: MakeSystem) -> None:
    """Dispatched to a worker that died before it took the job: delivered afresh, run once, no retry used."""
    api = await make_system()
    store = store_of(api)
    await store.join("gone-worker", 1, 600, b'{"executors": ["script"]}')
    task = await api.create_task(S, executor="script")
    assert [d.task_id for d in await store.dispatched_to("gone-worker")] == [task.id]
    await store.redis.delete(store.keys.lease("gone-worker"))
    worker = await make_system(worker=True)
    done = await wait_for(worker, S, task.id, "completed")
    assert done.attempts == 1 and done.auto_retries == 0


async def test_a_stopping_worker_hands_its_attempts_back(make_system: MakeSystem) -> None:
    """A worker shutting down hands unfinished attempts back (retry budget untouched); another runs them."""
    api = await make_system()
    first = await make_system(worker=True, shutdown_grace_ms=100)
    task = await api.create_task(S, executor="script", params={"hold": True})
    await wait_for(first, S, task.id, "running")
    await first.shutdown()
    back = await api.get_task(S, task.id)
    assert back.status is TaskStatus.PENDING and back.auto_retries == 0
    assert [h.reason for h in back.history[-2:]] == ["worker shutdown", "handed back to the queue"]
    second = await make_system(worker=True)
    await wait_for(second, S, task.id, "running")
    ScriptExecutor.release(task.id)
    done = await wait_for(second, S, task.id, "completed")
    assert done.attempts == 2


async def test_the_session_concurrency_limit_holds_across_workers(make_system: MakeSystem) -> None:
    """With one slot per session, a session's tasks run one at a time on two workers, and all complete."""
    workers = [await make_system(worker=True, max_concurrent_tasks_per_session=1) for _ in range(2)]
    CountedExecutor.executing = CountedExecutor.most_at_once = 0
    made = [await workers[0].create_task(S, executor="counted", params={"steps": 4}) for _ in range(6)]
    for task in made:
        await wait_for(workers[0], S, task.id, "completed", limit=10)
    assert CountedExecutor.most_at_once == 1


@pytest.fixture
def proxy(redis_url: str) -> Iterator[RedisFaultProxy]:
    with RedisFaultProxy(redis_url) as started:
        yield started


async def test_a_worker_that_cannot_renew_its_lease_stops_its_attempts(
    proxy: RedisFaultProxy, make_system: MakeSystem
) -> None:
    """Cut off from Redis (a hung connection) for a whole lease, a worker stops its attempts itself:
    by then the reconciler may have given them to another worker, which must not run beside them."""
    worker = await make_system(worker=True, task_backend=proxy.url)
    task = await worker.create_task(S, executor="hold")
    await wait_for(worker, S, task.id, "running")
    proxy.stall()
    try:
        with anyio.fail_after(3):
            await HoldExecutor.stopping.setdefault(task.id, anyio.Event()).wait()
    finally:
        proxy.resume()
    assert not worker_of(worker).running


async def test_routing_keeps_sessions_fair_and_priority_in_order(make_system: MakeSystem) -> None:
    """Routed by executor, slots are still shared as before: each goes to the least busy
    session, and a session's own tasks start by priority, whatever their executors."""
    api = await make_system()
    low = await api.create_task("a", executor="counted", params={"hold": True}, priority=0)
    high = await api.create_task("a", executor="script", params={"hold": True}, priority=5)
    other = await api.create_task("b", executor="counted", params={"hold": True})
    worker = await make_system(worker=True, worker_concurrency=2, worker_executors="counted,script")
    started = {t.id for t in (high, other)}
    for task_id in started:
        await wait_for(worker, "a" if task_id == high.id else "b", task_id, "running")
    assert (await api.get_task("a", low.id)).status is TaskStatus.PENDING
    for task_id, key in ((high.id, "a"), (other.id, "b")):
        ScriptExecutor.release(task_id)
        await wait_for(worker, key, task_id, "completed")
    ScriptExecutor.release(low.id)
    await wait_for(worker, "a", low.id, "completed")


async def test_waiting_tasks_cost_redis_nothing(proxy: RedisFaultProxy, make_system: MakeSystem) -> None:
    """Eight tasks waiting for a busy worker's only slot: Redis sees the worker's upkeep (a few commands
    a tick), not a poll per waiting task."""
    worker = await make_system(worker=True, task_backend=proxy.url, worker_concurrency=1)
    busy = await worker.create_task(S, executor="hold")
    await wait_for(worker, S, busy.id, "running")
    waiting = [await worker.create_task(S, executor="script") for _ in range(8)]
    assert [await worker.queue_position(t) for t in waiting] == list(range(1, 9))
    proxy.reset_commands()
    await anyio.sleep(1.0)  # a rate is measured over time
    assert sum(proxy.commands.values()) < 60, proxy.commands
    await worker.cancel_task(S, busy.id)
    for task in waiting:
        await wait_for(worker, S, task.id, "completed")

"""Every change the shared backends make is safe to run twice: a reply lost after the server
ran it (a reset connection, a failover, a proxy) makes the store send it again (redis-py
re-sends a Redis script on its own; the PostgreSQL store calls its function again on a new
connection), and the second run answers as the first did. Each test loses one script's or
function's reply through a fault proxy (`RedisFaultProxy`, `PostgresFaultProxy`) and checks
the outcome is the one without the fault, counters included; the same tests on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest

from async_tasks.backends.postgres import PostgresTaskStore
from async_tasks.backends.redis import RedisTaskStore, scripts
from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from async_tasks.task import TaskStatus
from async_tasks.testing import wait_for
from tests.execution.executors import EXECUTORS, HoldExecutor
from tests.faults.commands import any_script, script
from tests.faults.postgres_proxy import PostgresFaultProxy
from tests.faults.proxy import RedisFaultProxy
from tests.faults.rules import Rule
from tests.helpers import SECRET, ScriptExecutor

S = "s"
MakeSystem = Callable[..., Any]
#: Where a Redis script's name differs from the PostgreSQL function's for the same step.
REDIS_SCRIPTS = {"start": "deliver"}


class Faults:
    """One backend behind its fault proxy: the settings that reach it (directly or through
    the proxy), and the replies to lose."""

    def __init__(self, kind: str, url: str, space: dict[str, Any], proxy: RedisFaultProxy | PostgresFaultProxy) -> None:
        self.kind = kind
        self.url = url
        self.space = space
        self.proxy = proxy

    def lose(self, name: str, times: int = 1) -> Rule:
        """Lose the reply of the step `name` (a Redis script, a PostgreSQL ``op_`` function)."""
        if isinstance(self.proxy, RedisFaultProxy):
            return self.proxy.lose_reply(script(scripts.source(REDIS_SCRIPTS.get(name, name))), times=times)
        return self.proxy.lose_reply(f"op_{name}(", times=times)

    def storm(self, probability: float, seed: int) -> Rule:
        """Lose each reply of any step with `probability`."""
        if isinstance(self.proxy, RedisFaultProxy):
            return self.proxy.lose_reply_randomly(probability, any_script, seed=seed)
        return self.proxy.lose_reply_randomly(probability, seed=seed)

    async def no_drift(self, system: TaskSystem) -> None:
        store = system.store
        assert isinstance(store, RedisTaskStore | PostgresTaskStore)
        assert await store.verify() == []


@pytest.fixture(params=["redis", "postgres"])
def faults(request: pytest.FixtureRequest) -> Iterator[Faults]:
    if request.param == "redis":
        url: str = request.getfixturevalue("redis_url")
        with RedisFaultProxy(url) as redis_proxy:
            yield Faults("redis", url, {"redis_key_prefix": request.getfixturevalue("redis_prefix")}, redis_proxy)
    else:
        url = request.getfixturevalue("postgres_url")
        with PostgresFaultProxy(url) as postgres_proxy:
            space = {"postgres_schema": request.getfixturevalue("postgres_schema")}
            yield Faults("postgres", url, space, postgres_proxy)


@pytest.fixture
async def make_system(faults: Faults) -> AsyncIterator[MakeSystem]:
    """``await make_system(worker=..., faulty=...)``: an engine in the test's own space on the
    backend, through the proxy when `faulty`."""
    async with AsyncExitStack() as stack:

        async def make(*, worker: bool = False, faulty: bool = False, **overrides: Any) -> TaskSystem:
            fields: dict[str, Any] = {
                "secret_key": SECRET,
                "task_create_rate": 0.0,
                "task_backend": faults.proxy.url if faulty else faults.url,
                **faults.space,
                "embedded_worker": worker,
                "worker_concurrency": 4,
                "worker_lease_ms": 600,
                "retry_backoff_ms": 0,
                **overrides,
            }
            system = TaskSystem(EXECUTORS, settings=Settings(**fields), load_entry_points=False)
            return await stack.enter_async_context(system)

        yield make


async def test_a_create_whose_reply_was_lost_is_created_once(make_system: MakeSystem, faults: Faults) -> None:
    """Not twice, not answered as a replay of itself: one task, counted once, run once."""
    api = await make_system(faulty=True)
    rule = faults.lose("create")
    task, replayed = await api.create_or_replay(S, executor="script", idempotency_key="k")
    assert rule.count == 1 and not replayed
    assert (await api.stats(S)).by_status[TaskStatus.PENDING] == 1
    worker = await make_system(worker=True)
    assert (await wait_for(worker, S, task.id, "completed")).attempts == 1
    await faults.no_drift(api)


async def test_a_lost_start_reply_runs_the_attempt_once(make_system: MakeSystem, faults: Faults) -> None:
    """A worker whose claim reply was lost runs the attempt (it is not "lost on its worker")."""
    worker = await make_system(worker=True, faulty=True)
    rule = faults.lose("claim")
    task = await worker.create_task(S, executor="script")
    done = await wait_for(worker, S, task.id, "completed")
    assert rule.count == 1 and done.attempts == 1
    assert [h.reason for h in done.history] == ["created", "started", "completed"]
    await faults.no_drift(worker)


async def test_a_lost_outcome_reply_records_it_once(make_system: MakeSystem, faults: Faults) -> None:
    """Completed once, one history entry, the slot freed once."""
    worker = await make_system(worker=True, faulty=True)
    rule = faults.lose("finish")
    task = await worker.create_task(S, executor="script")
    done = await wait_for(worker, S, task.id, "completed")
    await rule.wait_async()  # the outcome is seen (its event) before the lost reply is
    assert rule.count == 1 and [h.status.value for h in done.history] == ["pending", "running", "completed"]
    await faults.no_drift(worker)


async def test_a_lost_automatic_retry_reply_still_retries(make_system: MakeSystem, faults: Faults) -> None:
    """The failed attempt's retry is scheduled even though the worker never heard back."""
    worker = await make_system(worker=True, faulty=True)
    rule = faults.lose("finish")
    task = await worker.create_task(S, executor="script", params={"failAttempts": 1}, max_retries=1)
    done = await wait_for(worker, S, task.id, "completed")
    await rule.wait_async()
    assert rule.count >= 1 and done.attempts == 2 and done.auto_retries == 1
    await faults.no_drift(worker)


async def test_lost_cancel_retry_and_start_replies_take_effect_once(make_system: MakeSystem, faults: Faults) -> None:
    """Cancel answers cancelled (not "already cancelled"), retry and start run the task once each."""
    api = await make_system(faulty=True)
    worker = await make_system(worker=True)
    task = await api.create_task(S, executor="hold")
    await wait_for(worker, S, task.id, "running")
    rule = faults.lose("transition")
    cancelled = await api.cancel_task(S, task.id)
    assert rule.count == 1 and cancelled.status is TaskStatus.CANCELLED
    with anyio.fail_after(2):
        await HoldExecutor.stopping.setdefault(task.id, anyio.Event()).wait()
    rule = faults.lose("transition")
    again = await api.retry_task(S, task.id)  # answered as it is now: pending, or already running again
    assert rule.count == 1 and again.status in (TaskStatus.PENDING, TaskStatus.RUNNING)
    await wait_for(worker, S, task.id, "running")
    await api.cancel_task(S, task.id)
    waiting = await api.create_task(S, executor="script", start=False)
    rule = faults.lose("start")
    await api.start_task(S, waiting.id)
    assert rule.count == 1 and (await wait_for(worker, S, waiting.id, "completed")).attempts == 1
    await faults.no_drift(api)


async def test_a_lost_removal_reply_is_not_a_404(make_system: MakeSystem, faults: Faults) -> None:
    """Delete answers as if the reply had come: the task is gone, no error."""
    api = await make_system(faulty=True)
    task = await api.create_task(S, executor="script", start=False)
    rule = faults.lose("remove")
    await api.delete_task(S, task.id)
    assert rule.count == 1 and (await api.stats(S)).total == 0
    await faults.no_drift(api)


async def test_a_lost_token_reply_takes_one_token(make_system: MakeSystem, faults: Faults) -> None:
    """A rate bucket loses one token per take, whatever was sent again."""
    api = await make_system(faulty=True)
    rule = faults.lose("token")
    assert await api.store.take_token("bucket", 1.0, 2) == 0
    assert rule.count == 1
    assert await api.store.take_token("bucket", 1.0, 2) == 0
    assert await api.store.take_token("bucket", 1.0, 2) > 0


async def test_a_storm_of_lost_replies_leaves_every_task_ended_and_counted(
    make_system: MakeSystem, faults: Faults
) -> None:
    """One reply in fifteen lost, for an API and a worker: every task ends (once),
    nothing is left pending or running, no counter drifts."""
    api = await make_system(faulty=True)
    worker = await make_system(worker=True, faulty=True)
    watcher = await make_system()
    storm = faults.storm(1 / 15, seed=7)
    made = []
    for i in range(40):
        params: dict[str, Any] = {"failAttempts": 1} if i % 3 == 0 else {"hold": i % 3 == 1}
        made.append(await api.create_task(S, executor="script", params=params, max_retries=1, idempotency_key=str(i)))
    for i, task in enumerate(made[1::3]):
        if i % 2:
            ScriptExecutor.release(task.id)
        else:
            await api.cancel_task(S, task.id)
    for task in made:
        ScriptExecutor.release(task.id)
    for task in made:
        ended = await wait_for(worker, S, task.id, "completed", "cancelled", "failed", limit=15)
        assert ended.status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED)
    storm.cancel()
    assert storm.count > 0
    counts = await watcher.stats(S)
    assert counts.by_status[TaskStatus.PENDING] == counts.by_status[TaskStatus.RUNNING] == 0
    await faults.no_drift(watcher)

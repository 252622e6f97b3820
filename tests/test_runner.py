"""Execution: success, failure, cancellation, retries, timeouts, limits, blocking executors.

Tests of one task share an app (`shared_app`), each with a session of its own; tests of
a setting, of the whole runner's load or that change the app build their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from litestar import Litestar

from async_tasks.execution.deadlines import Deadlines
from async_tasks.testing import FakeClock, serve_in_loop
from tests.helpers import BlockingExecutor, ScriptExecutor, find_task, system_of, wait_for

API = "/api/v1"


@pytest.fixture
def app(shared_app: Litestar) -> Litestar:
    return shared_app


@pytest.fixture
def client(session_client: httpx.AsyncClient) -> httpx.AsyncClient:
    return session_client


async def create(client: httpx.AsyncClient, start: bool = True, **body: Any) -> dict[str, Any]:
    params = body.pop("params", {})
    response = await client.post(f"{API}/tasks", json={"executor": "script", "params": params, "start": start, **body})
    assert response.status_code == 201, response.text
    return response.json()["task"]  # type: ignore[no-any-return]


async def test_task_runs_to_completion_with_steps(client: httpx.AsyncClient, app: Litestar) -> None:
    """A started task reports its steps and ends completed with the executor's result."""
    task = await create(client, params={"steps": 4, "result": {"answer": 42}})
    done = await wait_for(app, task["id"], "completed")
    assert done.result == {"answer": 42}
    assert done.progress == 100 and done.current_step == "Working"
    assert [h.status.value for h in done.history] == ["pending", "running", "completed"]
    assert done.started_at is not None and done.completed_at is not None and done.attempts == 1


async def test_executor_exception_fails_only_that_task(client: httpx.AsyncClient, app: Litestar) -> None:
    """An exception ends the task failed with a readable error; a sibling is untouched."""
    sibling = await create(client, params={"hold": True})
    failing = await create(client, params={"fail": "disk on fire"})
    failed = await wait_for(app, failing["id"], "failed")
    assert failed.error == "RuntimeError: disk on fire"
    status = (await client.get(f"{API}/tasks/{failing['id']}/status")).json()
    assert status["status"] == "failed" and status["error"] == "RuntimeError: disk on fire"
    assert find_task(app, sibling["id"]).status.value == "running"  # type: ignore[union-attr]
    ScriptExecutor.release(sibling["id"])
    await wait_for(app, sibling["id"], "completed")


async def test_cancel_running_task_is_prompt_and_freezes_progress(make_app: Callable[..., Litestar]) -> None:
    app = make_app()  # its own: the runner's whole load is checked
    async with serve_in_loop(app) as client:
        task = await create(client, params={"steps": 3, "hold": True})
        await wait_for(app, task["id"], progress=90)
        response = await client.post(f"{API}/tasks/{task['id']}/cancel")
        assert response.status_code == 200
        body = response.json()["task"]
        assert body["status"] == "cancelled" and body["progress"] == 90
        await anyio.wait_all_tasks_blocked()
        assert (await system_of(app).execution.load()).running == 0  # the attempt has unwound
        record = find_task(app, task["id"])
        assert record is not None and record.progress == 90 and record.history[-1].reason == "cancelled by request"


async def test_cancel_pending_task(client: httpx.AsyncClient) -> None:
    task = await create(client, start=False)
    response = await client.post(f"{API}/tasks/{task['id']}/cancel")
    assert response.json()["task"]["status"] == "cancelled"


async def test_retry_keeps_history_and_counts_attempts(client: httpx.AsyncClient, app: Litestar) -> None:
    task = await create(client, params={"failAttempts": 1})
    await wait_for(app, task["id"], "failed")
    response = await client.post(f"{API}/tasks/{task['id']}/retry")
    assert response.status_code == 200
    done = await wait_for(app, task["id"], "completed")
    assert done.attempts == 2 and done.error is None
    assert [h.status.value for h in done.history] == ["pending", "running", "failed", "pending", "running", "completed"]


async def test_timeout_fails_with_a_clear_error(client: httpx.AsyncClient, app: Litestar) -> None:
    task = await create(client, params={"hold": True}, timeoutMs=20)
    failed = await wait_for(app, task["id"], "failed")
    assert failed.error == "Task timed out after 20 ms"


async def test_a_short_timeout_fires_while_a_longer_one_runs(client: httpx.AsyncClient, app: Litestar) -> None:
    """Timeouts are kept in one heap: one shorter than those of the attempts already running
    still fires at its own time, and the others run on."""
    long = await create(client, params={"hold": True}, timeoutMs=60_000)
    await wait_for(app, long["id"], "running")
    short = await create(client, params={"hold": True}, timeoutMs=20)
    failed = await wait_for(app, short["id"], "failed")
    assert failed.error == "Task timed out after 20 ms"
    record = find_task(app, long["id"])
    assert record is not None and record.status.value == "running"
    ScriptExecutor.release(long["id"])
    await wait_for(app, long["id"], "completed")


async def test_deadlines_of_attempts_that_ended_do_not_pile_up() -> None:
    """A stream of attempts ending long before their timeout does not keep their deadlines
    (and cancel scopes) alive until it."""
    deadlines = Deadlines()
    for _ in range(10_000):
        deadlines.discard(deadlines.add(anyio.CancelScope(), 3600))
    assert deadlines.held <= 64


async def test_automatic_retries_back_off_exponentially_then_dead_letter(make_app: Callable[..., Litestar]) -> None:
    """maxRetries=3: four attempts, backoff delays doubling (with jitter) on the fake clock."""
    clock = FakeClock()
    app = make_app(clock=clock, retry_backoff_ms=1000, retry_backoff_max_ms=60_000)
    async with serve_in_loop(app) as client:
        task = await create(client, params={"fail": "nope"}, maxRetries=3)
        for retry in range(3):
            await clock.wait_for_sleepers(2)  # the cleaner's interval and the backoff
            record = find_task(app, task["id"])
            assert record is not None and record.status.value == "pending" and record.attempts == retry + 1
            clock.advance(clock.sleeps[-1])
        failed = await wait_for(app, task["id"], "failed")
        delays = [s for s in clock.sleeps if s < 100]  # the cleaner sleeps its long interval too
        assert len(delays) == 3
        for n, delay in enumerate(delays):
            full = 1.0 * 2**n
            assert full / 2 <= delay <= full
        assert failed.attempts == 4 and failed.dead_lettered
        listed = (await client.get(f"{API}/tasks", params={"deadLetter": "true"})).json()
        assert [t["id"] for t in listed["tasks"]] == [task["id"]]


async def test_cancel_during_backoff_cancels_the_task(make_app: Callable[..., Litestar]) -> None:
    clock = FakeClock()
    app = make_app(clock=clock)
    async with serve_in_loop(app) as client:
        task = await create(client, params={"fail": "nope"}, maxRetries=2)
        await clock.wait_for_sleepers(2)
        response = await client.post(f"{API}/tasks/{task['id']}/cancel")
        assert response.json()["task"]["status"] == "cancelled"
        await anyio.wait_all_tasks_blocked()
        assert clock.sleepers == 1  # only the cleaner's interval is left


async def test_concurrency_limit_queues_in_priority_order(make_app: Callable[..., Litestar]) -> None:
    """Over the limit tasks wait pending with a queue position and start by priority, then FIFO."""
    app = make_app(max_concurrent_tasks=1)
    async with serve_in_loop(app) as client:
        first = await create(client, params={"hold": True})
        low = await create(client, params={"hold": True}, priority=0)
        high = await create(client, params={"hold": True}, priority=5)
        low2 = await create(client, params={"hold": True}, priority=0)
        assert (low["status"], high["status"]) == ("pending", "pending")
        positions = {
            t["id"]: (await client.get(f"{API}/tasks/{t['id']}")).json()["queuePosition"] for t in (high, low, low2)
        }
        assert positions == {high["id"]: 1, low["id"]: 2, low2["id"]: 3}
        order = []
        for current in (first, high, low, low2):
            await wait_for(app, current["id"], "running")
            order.append(current["id"])
            ScriptExecutor.release(current["id"])
        assert order == [first["id"], high["id"], low["id"], low2["id"]]
        await wait_for(app, low2["id"], "completed")


async def test_per_session_concurrency_limit(make_app: Callable[..., Litestar]) -> None:
    app = make_app(max_concurrent_tasks_per_session=2)
    async with serve_in_loop(app) as client:
        tasks = [await create(client, params={"hold": True}) for _ in range(3)]
        assert [t["status"] for t in tasks] == ["running", "running", "pending"]
        ScriptExecutor.release(tasks[0]["id"])
        await wait_for(app, tasks[2]["id"], "running")
        for t in tasks[1:]:
            ScriptExecutor.release(t["id"])


async def test_blocking_executor_runs_in_a_thread(client: httpx.AsyncClient, app: Litestar) -> None:
    """A plain `def execute` never blocks the loop: the API answers while it waits."""
    response = await client.post(f"{API}/tasks", json={"executor": "blocking", "start": True})
    task_id = response.json()["task"]["id"]
    await wait_for(app, task_id, progress=10)
    status = (await client.get(f"{API}/tasks/{task_id}/status")).json()
    assert status["currentStep"] == "Blocking"
    BlockingExecutor.gates.setdefault(task_id, threading.Event()).set()
    done = await wait_for(app, task_id, "completed")
    assert done.result == {"thread": True} and done.progress == 100


async def test_cancelled_blocking_executor_stops_at_its_next_report(client: httpx.AsyncClient, app: Litestar) -> None:
    """Cancelling a thread is honest: the task is cancelled now; the thread stops at its next report."""
    response = await client.post(f"{API}/tasks", json={"executor": "blocking", "start": True})
    task_id = response.json()["task"]["id"]
    await wait_for(app, task_id, progress=10)
    assert (await client.post(f"{API}/tasks/{task_id}/cancel")).json()["task"]["status"] == "cancelled"
    BlockingExecutor.gates[task_id].set()
    record = find_task(app, task_id)
    assert record is not None and record.status.value == "cancelled" and record.progress == 10


async def test_result_that_is_not_json_fails_the_task(make_app: Callable[..., Litestar]) -> None:
    from async_tasks import TaskExecutor

    class Weird(TaskExecutor[Any]):
        name = "weird"

        async def execute(self, task: Any, progress: Any) -> Any:
            return {"when": object()}

    app = make_app()  # its own: the test registers an executor in it
    system_of(app).executors.register(Weird())
    async with serve_in_loop(app) as client:
        response = await client.post(f"{API}/tasks", json={"executor": "weird", "start": True})
        failed = await wait_for(app, response.json()["task"]["id"], "failed")
        assert failed.error is not None and "not JSON-encodable" in failed.error

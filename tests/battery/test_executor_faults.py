"""Executors that misbehave: each task ends in a defined state with a readable error,
a sibling task completes normally, and the server keeps answering.
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio
import httpx
import pytest
from litestar import Litestar

from async_tasks import TaskExecutor, TaskParams
from async_tasks.task import Task
from async_tasks.testing import serve_in_loop
from tests.helpers import TEST_EXECUTORS, find_task, system_of, wait_for

pytestmark = pytest.mark.battery

API = "/api/v1"
#: Progress reports in the flood (the server must answer mid-way): more with BATTERY_EXAMPLES.
FLOOD = 100_000 if os.environ.get("BATTERY_EXAMPLES") else 20_000


class FaultParams(TaskParams):
    fault: str = "raise"


class Cyclic(dict[str, Any]):
    def __init__(self) -> None:
        super().__init__(me=self)


class FaultyExecutor(TaskExecutor[FaultParams]):
    """Misbehaves as `fault` says."""

    name = "faulty"
    Params = FaultParams
    flood_done: ClassVar[anyio.Event]
    stubborn_in: ClassVar[anyio.Event]
    stubborn_done: ClassVar[anyio.Event]
    swallowed: ClassVar[int] = 0

    async def execute(self, task: Task, progress: Any) -> Any:
        fault = task.params.fault
        await progress(5, "Misbehaving", fault)
        if fault == "raise":
            raise ValueError("the input was not what I expected")
        if fault == "exit":
            raise SystemExit(3)
        if fault == "bad-progress":
            await progress(250)
        if fault == "hang":
            await anyio.sleep_forever()
        if fault == "flood":
            for i in range(FLOOD):
                await progress(i * 100 / FLOOD)
            self.flood_done.set()
            return {"reports": FLOOD}
        if fault == "huge":
            return {"blob": "x" * 5000}
        if fault == "object":
            return {"when": object()}
        if fault == "cyclic":
            return Cyclic()
        if fault == "stubborn":
            # Swallows every cancellation until the test lets it go.
            self.stubborn_in.set()
            while not self.stubborn_done.is_set():
                try:
                    await self.stubborn_done.wait()
                except anyio.get_cancelled_exc_class():
                    type(self).swallowed += 1
            return {"gave_up": True}
        raise AssertionError(fault)


class ThreadParams(TaskParams):
    pass


class ThreadExecutor(TaskExecutor[ThreadParams]):
    """A plain ``def execute`` blocked on a threading.Event the test sets."""

    name = "thread-gate"
    Params = ThreadParams
    gate: ClassVar[threading.Event] = threading.Event()
    finished: ClassVar[threading.Event] = threading.Event()

    def execute(self, task: Task, progress: Any) -> Any:
        progress(10, "Blocked", "waiting on a threading.Event")
        try:
            self.gate.wait()
            progress(90)  # the attempt is over by now: this raises AttemptEnded
            return {"late": True}
        finally:
            self.finished.set()


@asynccontextmanager
async def server(
    make_app: Callable[..., Litestar], **settings: Any
) -> AsyncIterator[tuple[Litestar, httpx.AsyncClient]]:
    app = make_app([FaultyExecutor, ThreadExecutor, *TEST_EXECUTORS], shutdown_grace_ms=0, **settings)
    async with serve_in_loop(app) as client:
        yield app, client


async def create(client: httpx.AsyncClient, executor: str, params: dict[str, Any] | None = None, **options: Any) -> str:
    response = await client.post(
        f"{API}/tasks", json={"executor": executor, "params": params or {}, "start": True, **options}
    )
    assert response.status_code == 201, response.text
    return response.json()["task"]["id"]  # type: ignore[no-any-return]


async def sibling_completes(app: Litestar, client: httpx.AsyncClient) -> None:
    """The server answers and an ordinary task runs to completion."""
    assert (await client.get(f"{API}/tasks/stats")).status_code == 200
    sibling = await create(client, "script")
    assert (await wait_for(app, sibling, "completed")).result == {"steps": 3}


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("raise", "ValueError: the input was not what I expected"),
        ("exit", "SystemExit: 3"),
        ("bad-progress", "ValueError: progress must be from 0 to 100, got 250"),
        ("huge", "The executor's result is too large: 5011 bytes (the limit is 1024)"),
        ("object", "The executor returned a result that is not JSON-encodable"),
        ("cyclic", "RecursionError"),
    ],
)
async def test_a_failing_executor_fails_only_its_task(
    make_app: Callable[..., Litestar], fault: str, error: str
) -> None:
    async with server(make_app, max_result_bytes=1024) as (app, client):
        task_id = await create(client, "faulty", {"fault": fault})
        task = await wait_for(app, task_id, "failed")
        assert task.error is not None and task.error.startswith(error), task.error
        assert task.result is None
        status = (await client.get(f"{API}/tasks/{task_id}/status")).json()
        assert (status["status"], status["error"]) == ("failed", task.error)
        await sibling_completes(app, client)


async def test_a_hanging_executor_times_out(make_app: Callable[..., Litestar]) -> None:
    async with server(make_app) as (app, client):
        task_id = await create(client, "faulty", {"fault": "hang"}, timeoutMs=20)
        sibling = await create(client, "script", {"hold": True})
        task = await wait_for(app, task_id, "failed")
        assert task.error == "Task timed out after 20 ms"
        assert find_task(app, sibling).status.value == "running"  # type: ignore[union-attr]
        await sibling_completes(app, client)


async def test_a_progress_flood_completes_and_the_server_answers_meanwhile(
    make_app: Callable[..., Litestar],
) -> None:
    FaultyExecutor.flood_done = anyio.Event()
    async with server(make_app) as (app, client):
        task_id = await create(client, "faulty", {"fault": "flood"})
        await wait_for(app, task_id, progress=10)
        status = (await client.get(f"{API}/tasks/{task_id}/status")).json()
        assert status["status"] == "running" and 10 <= status["progress"] < 100
        await sibling_completes(app, client)
        with anyio.fail_after(60):  # a guard: a flood takes seconds on a slow machine
            await FaultyExecutor.flood_done.wait()
        task = await wait_for(app, task_id, "completed")
        assert (task.progress, task.result) == (100, {"reports": FLOOD})
        assert [h.status.value for h in task.history] == ["pending", "running", "completed"]


async def test_an_executor_that_swallows_cancellation(make_app: Callable[..., Litestar]) -> None:
    """Cancel is answered at once (cancelled, progress frozen) although the attempt keeps
    running; shutdown reports it abandoned after its grace period; once it gives up, its
    result is ignored and the runner's books are clean."""
    FaultyExecutor.stubborn_in, FaultyExecutor.stubborn_done = anyio.Event(), anyio.Event()
    FaultyExecutor.swallowed = 0
    async with server(make_app) as (app, client):
        task_id = await create(client, "faulty", {"fault": "stubborn"})
        await FaultyExecutor.stubborn_in.wait()
        cancelled = await client.post(f"{API}/tasks/{task_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["task"]["status"] == "cancelled"
        await sibling_completes(app, client)
        assert FaultyExecutor.swallowed > 0
        execution = system_of(app).execution
        abandoned = await execution.shutdown(0.01)
        assert [t.id for t in abandoned] == [task_id]
        FaultyExecutor.stubborn_done.set()
        await anyio.wait_all_tasks_blocked()
        task = find_task(app, task_id)
        assert task is not None and (task.status.value, task.result, task.progress) == ("cancelled", None, 5)
        assert not execution.running_tasks() and (await execution.load()).running == 0


@pytest.mark.parametrize("end", ["timeout", "cancel"])
async def test_a_blocked_thread_ends_its_attempt_without_blocking_the_loop(
    make_app: Callable[..., Litestar], end: str
) -> None:
    ThreadExecutor.gate.clear()
    ThreadExecutor.finished.clear()
    async with server(make_app) as (app, client):
        task_id = await create(client, "thread-gate", timeoutMs=20 if end == "timeout" else None)
        # Blocked in its thread (or, on a busy machine, already timed out: 20 ms can pass
        # before the thread's first report is stored, which then comes too late).
        await wait_for(app, task_id, "failed", progress=10)
        if end == "cancel":
            assert (await client.post(f"{API}/tasks/{task_id}/cancel")).status_code == 200
        task = await wait_for(app, task_id, "failed", "cancelled")
        expected = ("failed", "Task timed out after 20 ms") if end == "timeout" else ("cancelled", None)
        assert (task.status.value, task.error) == expected
        await sibling_completes(app, client)  # the thread is still blocked
        ThreadExecutor.gate.set()
        assert await anyio.to_thread.run_sync(ThreadExecutor.finished.wait, 10)
        await anyio.wait_all_tasks_blocked()
        assert (task.status.value, task.error, task.result) == (*expected, None)

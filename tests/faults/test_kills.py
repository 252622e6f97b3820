"""A process killed (SIGKILL) exactly at each hand-off between processes strands nothing:
every task a client was told exists runs, or ends with a reason, within a lease and a
half and an interval (here 600 ms leases: about 1.5 s). On every shared backend (Redis,
PostgreSQL: the `server` fixture's parameter).

The killed process is a real ``async-tasks`` worker or server, forked from the suite's
fork server (`tests.forked`) with ``ASYNC_TASKS_CRASH_POINT`` naming where it dies
(`async_tasks.faults`); the survivor is an engine of the test's own, whose events say
when the task got where it should."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from async_tasks.task import TaskStatus
from async_tasks.testing import serve_in_loop, wait_for
from tests import forked
from tests.faults.crash_points import CrashPoint
from tests.faults.servers import (
    KINDS,
    Kind,
    ServerProcess,
    add_lost_worker,
    environ,
    kind_of,
    namespace,
    server_process,
)
from tests.faults.servers import settings_fields as backend_fields
from tests.helpers import SECRET, TEST_EXECUTORS, build_app
from tests.servers import free_port

pytestmark = pytest.mark.e2e
S = "s"
LEASE_MS = 600


@pytest.fixture(scope="module", params=KINDS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    kind: Kind = request.param
    try:
        with server_process(kind) as started:
            forked.warm_up()
            yield started
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


class Deployment:
    """The test's processes on one server: forked workers and servers armed to die, engines
    of the test's own that survive them."""

    def __init__(self, server: ServerProcess, space: str, tmp_path: Path, stack: AsyncExitStack) -> None:
        self.server = server
        self.space = space
        self.tmp_path = tmp_path
        self.stack = stack
        self.processes: list[BaseProcess] = []
        self.backend = backend_fields(server, space)
        self.env = {
            **os.environ,
            **environ(server, space),
            "SECRET_KEY": SECRET,
            "WORKER_LEASE_MS": str(LEASE_MS),
            "RETRY_BACKOFF_MS": "0",
            "TASK_CREATE_RATE": "0",
        }

    def settings(self, **overrides: Any) -> Settings:
        fields: dict[str, Any] = {"secret_key": SECRET, "task_create_rate": 0.0, **self.backend,
                                  "worker_lease_ms": LEASE_MS, "retry_backoff_ms": 0, **overrides}  # fmt: skip
        return Settings(**fields)

    async def engine(self, *, worker: bool = False) -> TaskSystem:
        system = TaskSystem(TEST_EXECUTORS, settings=self.settings(embedded_worker=worker), load_entry_points=True)
        return await self.stack.enter_async_context(system)

    def armed(self, point: str, line: str, passes: int = 1) -> tuple[BaseProcess, CrashPoint]:
        """Start the ``async-tasks`` command `line` (with leading NAME=value variables), armed at `point`."""
        crash = CrashPoint(point, self.tmp_path / f"crashed-{point}", passes=passes)
        process = forked.start(line, crash.environ(self.env), self.tmp_path / f"{point}.log")
        self.processes.append(process)
        return process, crash

    async def armed_worker(self, store: Any, point: str) -> tuple[BaseProcess, CrashPoint]:
        """A worker process with one slot, armed at `point`, once it has joined the pool."""
        before = set(await store.workers())
        process, crash = self.armed(point, "SHUTDOWN_GRACE_MS=300 async-tasks worker --concurrency 1")
        with anyio.fail_after(10):
            while not set(await store.workers()) - before:
                if not process.is_alive():
                    raise AssertionError((self.tmp_path / f"{point}.log").read_text())
                await anyio.sleep(0.02)
        return process, crash

    def close(self) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGKILL)
            process.join(5)


@pytest.fixture
async def deployment(server: ServerProcess, tmp_path: Path) -> AsyncIterator[Deployment]:
    async with AsyncExitStack() as stack:
        made = Deployment(server, namespace(kind_of(server)), tmp_path, stack)
        try:
            yield made
        finally:
            made.close()


def store_of(system: TaskSystem) -> Any:
    """The shared store (Redis or PostgreSQL): `workers`, `verify` and the like."""
    return system.store


@pytest.mark.parametrize(
    ("point", "attempts"),
    [
        ("attempt.dequeued", 1),  # SAQ took the job, the attempt never started: delivered afresh
        ("attempt.claimed", 2),  # started, then lost: retried (the lost attempt counts)
        ("attempt.before_finish", 2),  # ran to its end, outcome never stored: lost, retried
    ],
)
async def test_a_worker_killed_at_a_hand_off_strands_nothing(deployment: Deployment, point: str, attempts: int) -> None:
    """Killed between SAQ's dequeue and the start, after the start, or before the outcome is stored:
    the task completes on another worker within the bound, with the attempts it took."""
    api = await deployment.engine()
    process, crash = await deployment.armed_worker(store_of(api), point)
    task = await api.create_task(S, executor="sample", params={"delayMs": 0}, max_retries=1)
    await crash.wait_async(process)
    survivor = await deployment.engine(worker=True)
    done = await wait_for(survivor, S, task.id, "completed", limit=5)
    assert done.attempts == attempts
    if attempts == 2:
        assert "worker lost" in [h.reason for h in done.history]


async def test_a_worker_killed_after_storing_the_outcome_leaves_nothing_behind(deployment: Deployment) -> None:
    """The task is done; the dead worker's queue and slots are forgotten by the survivor's reconciler."""
    api = await deployment.engine()
    store = store_of(api)
    _, crash = await deployment.armed_worker(store, "attempt.finished")
    task = await api.create_task(S, executor="sample", params={"delayMs": 0})
    await crash.wait_async(deployment.processes[-1])
    assert (await api.get_task(S, task.id)).status is TaskStatus.COMPLETED
    survivor = await deployment.engine(worker=True)
    assert survivor.worker is not None
    with anyio.fail_after(5):
        while len(await store.workers()) > 1:  # noqa: ASYNC110 (the reconciler's work, in the server)
            await anyio.sleep(0.05)
    assert (await store.verify()) == []


async def test_a_worker_killed_while_handing_back_strands_nothing(deployment: Deployment) -> None:
    """SIGTERM, then killed while handing its attempt back: the attempt is lost, and runs again."""
    api = await deployment.engine()
    process, crash = await deployment.armed_worker(store_of(api), "handback.before")
    task = await api.create_task(S, executor="sample", params={"delayMs": 60_000}, max_retries=1)
    with anyio.fail_after(5):
        while (await api.get_task(S, task.id)).status is not TaskStatus.RUNNING:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    assert process.pid is not None
    os.kill(process.pid, signal.SIGTERM)
    await crash.wait_async(process)
    survivor = await deployment.engine(worker=True)
    running = await wait_for(survivor, S, task.id, "running", limit=5)
    while running.attempts < 2:
        running = await wait_for(survivor, S, task.id, "running", limit=5)
    assert running.history[2].reason == "worker lost"
    await survivor.cancel_task(S, task.id)


async def test_a_reconciler_killed_halfway_is_finished_by_another(deployment: Deployment) -> None:
    """The worker resolving a lost worker dies before forgetting it: the next reconciler finishes."""
    api = await deployment.engine()
    store = store_of(api)
    await add_lost_worker(store, "gone-worker", LEASE_MS)
    task = await api.create_task(S, executor="sample", params={"delayMs": 0})
    process, crash = await deployment.armed_worker(store, "reconcile.before_forget")
    await crash.wait_async(process)
    survivor = await deployment.engine(worker=True)
    assert (await wait_for(survivor, S, task.id, "completed", limit=5)).attempts == 1
    with anyio.fail_after(5):
        while "gone-worker" in await store.workers():  # noqa: ASYNC110 (the reconciler's work, in the server)
            await anyio.sleep(0.05)


async def test_an_api_killed_after_storing_a_create_answers_the_retry_with_the_task(deployment: Deployment) -> None:
    """The create was stored and the API died before answering: the client's retry with its
    Idempotency-Key (to any API) gets that task, which runs once."""
    port = free_port()
    process, crash = deployment.armed("create.after_store", f"async-tasks serve --port {port}")
    worker = await deployment.engine(worker=True)
    app = build_app(**deployment.backend)
    async with serve_in_loop(app) as other:
        token = (await other.post("/api/v1/session")).json()["token"]
        headers = {"X-Session-Token": token, "Idempotency-Key": "order-1"}
        body = {"executor": "sample", "params": {"delayMs": 0}, "start": True}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as first:
            with anyio.fail_after(10):
                while True:
                    try:
                        await first.get("/health")
                        break
                    except httpx.TransportError:
                        await anyio.sleep(0.05)
            with pytest.raises(httpx.TransportError):
                await first.post("/api/v1/tasks", json=body, headers=headers)
        await crash.wait_async(process)
        retried = await other.post("/api/v1/tasks", json=body, headers=headers)
    assert retried.status_code == 200 and retried.headers["Idempotent-Replayed"] == "true"
    task_id = retried.json()["task"]["id"]
    session = retried.json()["task"]["sessionKey"]
    assert (await wait_for(worker, session, task_id, "completed", limit=5)).attempts == 1

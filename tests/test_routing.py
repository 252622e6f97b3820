"""Executor routing on the shared backends: a worker runs only the executors it declares,
a task of another waits saying so, and the admin API lists each worker with what it runs.
The same test on Redis and PostgreSQL (the memory backend has one process, running all)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest

from async_tasks.backends.queued.worker import QueuedWorker
from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from async_tasks.task import TaskStatus
from async_tasks.testing import asgi_client, wait_for
from tests.execution.executors import EXECUTORS
from tests.helpers import SECRET, build_app, new_address

ADMIN_KEY = "admin-key-0123456789abcdef"


@pytest.fixture(params=["redis", "postgres"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings that put an engine in the test's own space on the backend."""
    if request.param == "redis":
        return {
            "task_backend": request.getfixturevalue("redis_url"),
            "redis_key_prefix": request.getfixturevalue("redis_prefix"),
        }
    return {
        "task_backend": request.getfixturevalue("postgres_url"),
        "postgres_schema": request.getfixturevalue("postgres_schema"),
    }


def worker_id(system: TaskSystem) -> str:
    assert isinstance(system.worker, QueuedWorker)
    return system.worker.worker_id


async def test_a_worker_runs_only_its_executors_and_the_admin_api_lists_what_each_runs(
    backend: dict[str, Any],
) -> None:
    """A worker started with ``--executors script`` never takes a task of another executor:
    that task waits pending, saying so in its status and in the queues, while the script task
    behind it in the session's line runs; a worker that runs it takes it as it joins. The
    admin API lists both workers with what each runs."""
    app = build_app(EXECUTORS, load_entry_points=False, worker_lease_ms=600, admin_api_keys=ADMIN_KEY, **backend)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}

    def worker(**overrides: Any) -> TaskSystem:
        settings = Settings(
            secret_key=SECRET, embedded_worker=True, worker_concurrency=4, worker_lease_ms=600, **backend, **overrides
        )
        return TaskSystem(EXECUTORS, settings=settings, load_entry_points=False)

    # The workers stop before the API's app: their engines are entered inside its lifespan.
    async with app.lifespan(), asgi_client(app, new_address()) as http, AsyncExitStack() as workers:
        scripts_only = await workers.enter_async_context(worker(worker_executors="script"))
        counted = (await http.post("/api/v1/tasks", json={"executor": "counted", "start": True})).json()["task"]
        script = (await http.post("/api/v1/tasks", json={"executor": "script", "start": True})).json()["task"]
        session = counted["sessionKey"]
        assert (await wait_for(scripts_only, session, script["id"], "completed")).attempts == 1
        status = (await http.get(f"/api/v1/tasks/{counted['id']}/status")).json()
        assert status["status"] == "pending" and status["waitingReason"] == "waiting for a worker that runs `counted`"
        queues = (await http.get("/api/v1/admin/queues", headers=admin)).json()["queues"]
        assert {"executor": "counted", "running": 0, "queued": 1, "workers": 0} in queues
        assert {"executor": "script", "running": 0, "queued": 0, "workers": 1} in queues

        everything = await workers.enter_async_context(worker())
        done = await wait_for(everything, session, counted["id"], "completed")
        assert done.attempts == 1 and [h.status for h in done.history] == [
            TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.COMPLETED,
        ]  # fmt: skip
        assert done.waiting_reason is None
        listed = (await http.get("/api/v1/admin/workers", headers=admin)).json()["workers"]
        assert {w["id"]: w["executors"] for w in listed} == {
            worker_id(scripts_only): ["script"],
            worker_id(everything): [executor.name for executor in EXECUTORS],
        }
        assert all(0 <= w["leaseAgeMs"] < 600 and w["concurrency"] == 4 and w["startedAt"] > 0 for w in listed)

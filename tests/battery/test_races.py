"""Storms of concurrent commands on one task end in a legal state, with no 5xx.

Each round fires 60 requests at one task at once (start, cancel, retry, delete, plus
releases of its held attempt) from one anyio task group, in the app's own event loop,
so they interleave at every await. Afterwards the task is gone or legal (its history
a walk through the state machine), the list and stats agree, the runner's books
agree with the store, and the server still runs a fresh task to completion.

Concurrent creates, also while an executor's `validate` awaits, keep an
Idempotency-Key to one task and a session within its active-task quota.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from litestar import Litestar

from async_tasks import TaskExecutor, TaskParams
from async_tasks.task import Task, TaskStatus, can_transition
from async_tasks.testing import serve_in_loop
from tests.helpers import TEST_EXECUTORS, ScriptExecutor, find_task, system_of, wait_for

pytestmark = pytest.mark.battery

API = "/api/v1"
COMMANDS = ["start", "cancel", "retry", "delete", "release"]


async def storm(client: httpx.AsyncClient, task_id: str, rng: random.Random, size: int = 60) -> Counter[int]:
    codes: Counter[int] = Counter()

    async def one(command: str) -> None:
        if command == "release":
            ScriptExecutor.release(task_id)
            ScriptExecutor.released.pop(task_id, None)  # a later attempt holds again
            return
        if command == "delete":
            response = await client.delete(f"{API}/tasks/{task_id}")
        else:
            response = await client.post(f"{API}/tasks/{task_id}/{command}")
        codes[response.status_code] += 1
        if response.status_code >= 400:
            assert response.json()["success"] is False

    async with anyio.create_task_group() as tg:
        for _ in range(size):
            tg.start_soon(one, rng.choice(COMMANDS))
    return codes


async def assert_consistent(app: Litestar, client: httpx.AsyncClient) -> None:
    """List, stats, store and runner tell the same story."""
    listing = (await client.get(f"{API}/tasks", params={"limit": 1000})).json()
    stats = (await client.get(f"{API}/tasks/stats")).json()["stats"]
    counts = Counter(t["status"] for t in listing["tasks"])
    assert stats["total"] == listing["total"] == len(listing["tasks"])
    assert {s.value: stats[s.value] for s in TaskStatus} == {s.value: counts[s.value] for s in TaskStatus}
    execution = system_of(app).execution
    running = [t["id"] for t in listing["tasks"] if t["status"] == "running"]
    assert sorted(task.id for task in execution.running_tasks()) == sorted(running)
    assert (await execution.load()).running == len(running)
    for summary in listing["tasks"]:
        task = find_task(app, summary["id"])
        assert task is not None
        history = task.history
        assert history[0].status is TaskStatus.PENDING
        for before, entry in itertools.pairwise(history):
            assert entry.previous is before.status and can_transition(before.status, entry.status), history
        assert history[-1].status is task.status


@pytest.mark.parametrize("seed", range(5))
async def test_concurrent_commands_on_one_task(make_app: Callable[..., Litestar], seed: int) -> None:
    rng = random.Random(seed)
    app = make_app()
    async with serve_in_loop(app) as client:
        totals: Counter[int] = Counter()
        for _ in range(6):
            created = await client.post(
                f"{API}/tasks",
                json={
                    "executor": "script",
                    "start": rng.random() < 0.7,
                    "params": {
                        "hold": True,
                        "steps": rng.randint(0, 2),
                        "fail": "boom" if rng.random() < 0.3 else None,
                    },
                },
            )
            task_id = created.json()["task"]["id"]
            totals += await storm(client, task_id, rng)
            await anyio.wait_all_tasks_blocked()
            await assert_consistent(app, client)
        assert set(totals) <= {200, 204, 404, 409}, totals

        # The server still works: a fresh task runs to completion beside whatever is left.
        fresh = (await client.post(f"{API}/tasks", json={"executor": "script", "start": True})).json()["task"]
        assert (await wait_for(app, fresh["id"], "completed")).result == {"steps": 3}
        await assert_consistent(app, client)


async def test_retry_while_the_cancelled_attempt_still_unwinds(make_app: Callable[..., Litestar]) -> None:
    """Cancel then retry in one tick: the old attempt's exit must not take the new one's
    place in the runner's books (it used to, leaking a concurrency slot and leaving the
    new attempt impossible to cancel)."""
    app = make_app()
    async with serve_in_loop(app) as client:
        task = (
            await client.post(f"{API}/tasks", json={"executor": "script", "start": True, "params": {"hold": True}})
        ).json()["task"]
        await wait_for(app, task["id"], progress=90)
        system = system_of(app)
        await system.cancel_task(task["sessionKey"], task["id"])
        await system.retry_task(task["sessionKey"], task["id"])  # the cancelled attempt has not unwound yet
        await anyio.wait_all_tasks_blocked()
        await assert_consistent(app, client)
        cancelled = await client.post(f"{API}/tasks/{task['id']}/cancel")
        assert cancelled.json()["task"]["status"] == "cancelled"
        ScriptExecutor.release(task["id"])
        await anyio.wait_all_tasks_blocked()
        assert find_task(app, task["id"]).status is TaskStatus.CANCELLED  # type: ignore[union-attr]
        await assert_consistent(app, client)


class SlowValidation(TaskExecutor[TaskParams]):
    """Its `validate` awaits (as api-call's DNS lookup does), so creates interleave there."""

    name = "slow-validation"

    async def validate(self, params: TaskParams) -> None:
        await anyio.lowlevel.checkpoint()

    async def execute(self, task: Task, progress: Any) -> Any:
        return None


@pytest.mark.parametrize("executor", ["script", "slow-validation"])
async def test_concurrent_creates_with_one_idempotency_key_make_one_task(
    make_app: Callable[..., Litestar], executor: str
) -> None:
    app = make_app([SlowValidation, *TEST_EXECUTORS])
    async with serve_in_loop(app) as client:
        codes: Counter[int] = Counter()
        ids: set[str] = set()

        async def create() -> None:
            response = await client.post(
                f"{API}/tasks", json={"executor": executor}, headers={"Idempotency-Key": "same-key"}
            )
            codes[response.status_code] += 1
            ids.add(response.json()["task"]["id"])

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(create)
        assert codes == {201: 1, 200: 49} and len(ids) == 1, (codes, len(ids))
        assert (await client.get(f"{API}/tasks/stats")).json()["stats"]["total"] == 1


async def test_concurrent_creates_cannot_overrun_the_active_task_quota(make_app: Callable[..., Litestar]) -> None:
    app = make_app([SlowValidation, *TEST_EXECUTORS], max_active_tasks_per_session=3)
    async with serve_in_loop(app) as client:
        codes: Counter[int] = Counter()

        async def create() -> None:
            response = await client.post(f"{API}/tasks", json={"executor": "slow-validation"})
            codes[response.status_code] += 1

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(create)
        assert codes == {201: 3, 429: 47}, codes
        assert (await client.get(f"{API}/tasks/stats")).json()["stats"]["pending"] == 3

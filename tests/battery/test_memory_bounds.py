"""Memory is bounded for every client together, not only per session.

Attacks from issue 11, each refused or bounded: 1 MiB bodies of ``[{},{},...]`` as
metadata (a decoded body takes about 24 times its size), a flood of fresh sessions,
never-started tasks, finished tasks held until the timer fires, histories grown by
cancel/retry loops, manual retries past the create rate. Floods run in process
(loopback only); their size grows with BATTERY_EXAMPLES like the other floods.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from litestar import Litestar

from async_tasks.errors import TaskTooLarge
from async_tasks.system import TaskSystem
from async_tasks.testing import FakeClock, serve_in_loop
from tests.battery.test_limits import API, assert_error
from tests.helpers import ScriptExecutor, memory_store_of, system_of, wait_for

pytestmark = pytest.mark.battery

#: Fresh sessions in the session flood, completions in the retention burst, cancel/retry cycles.
SESSIONS = 5000 if os.environ.get("BATTERY_EXAMPLES") else 600
BURST = 844 if os.environ.get("BATTERY_EXAMPLES") else 150
CYCLES = 2500 if os.environ.get("BATTERY_EXAMPLES") else 150
#: A 1 MiB body of empty objects: about 350 000 dicts once decoded.
EMPTY_OBJECTS = b"[" + b"{}," * (1024 * 1024 // 3 - 1) + b"{}]"


def rss_bytes() -> int:
    """Resident memory of this process (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


class Fresh(httpx.AsyncClient):
    """A client that keeps no cookie: with IP mapping off, each request is a new session."""

    async def send(self, request: httpx.Request, **kwargs: object) -> httpx.Response:
        self.cookies.clear()
        request.headers.pop("cookie", None)
        return await super().send(request, **kwargs)  # type: ignore[arg-type]


def fresh(app: Litestar) -> httpx.AsyncClient:
    return Fresh(transport=httpx.ASGITransport(app=cast("Any", app)), base_url="http://testserver.local")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
async def test_forty_one_mib_bodies_of_empty_objects_are_refused_without_growing_memory(
    make_app: Callable[..., Litestar],
) -> None:
    """40 creates whose metadata is 1 MiB of ``[{},{},...]`` get 413 naming the limit; the
    process grows by less than 50 MiB (stored, they took ~24 MiB each)."""
    body = b'{"executor": "script", "metadata": {"k": ' + EMPTY_OBJECTS + b"}}"
    headers = {"Content-Type": "application/json"}
    async with serve_in_loop(make_app()) as client:
        assert_error(await client.post(f"{API}/tasks", content=body, headers=headers), 413, "request_too_large")
        gc.collect()
        before = rss_bytes()
        for _ in range(40):
            refused = await client.post(f"{API}/tasks", content=body, headers=headers)
            error = assert_error(refused, 413, "request_too_large")
            assert "MAX_TASK_DATA_BYTES" in str(error["message"])
        gc.collect()
        grown = rss_bytes() - before
        assert (await client.get(f"{API}/tasks/stats")).json()["stats"]["total"] == 0
    assert grown < 50 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"


async def test_task_data_over_the_limit_is_413_with_the_limit(make_app: Callable[..., Litestar]) -> None:
    """A body the HTTP limit lets through is still measured: params + metadata + tags
    beyond MAX_TASK_DATA_BYTES are refused, naming the size and the limit."""
    async with serve_in_loop(make_app(max_task_data_bytes=2048)) as client:
        big = {"executor": "script", "metadata": {"notes": "x" * 3000}}
        error = assert_error(await client.post(f"{API}/tasks", json=big), 413, "task_too_large")
        assert error["details"] == {"limit": 2048, "size": error["details"]["size"], "setting": "MAX_TASK_DATA_BYTES"}  # type: ignore[index]
        assert "2048" in str(error["message"])
        demo = await client.post(f"{API}/demo/tasks/batch", json={"items": ["y" * 100] * 30})
        assert_error(demo, 413, "task_too_large")
        fits = {"executor": "script", "metadata": {"notes": "x" * 1000}, "tags": ["a", "b"]}
        assert (await client.post(f"{API}/tasks", json=fits)).status_code == 201


async def test_the_engine_refuses_oversized_task_data_too() -> None:
    """`TaskSystem.create_task` (no HTTP) applies the same cap."""
    async with TaskSystem([ScriptExecutor], environ={"MAX_TASK_DATA_BYTES": "1024"}, load_entry_points=False) as system:
        with pytest.raises(TaskTooLarge, match="MAX_TASK_DATA_BYTES"):
            await system.create_task("s", executor="script", metadata={"k": [{}] * 400})
        assert (await system.stats("s")).total == 0


async def test_a_flood_of_fresh_sessions_is_bounded_in_count_and_time(make_app: Callable[..., Litestar]) -> None:
    """SESSIONS tokenless creates from one address (a new session each) get the address's
    new sessions of the minute (NEW_SESSIONS_PER_CLIENT_PER_MINUTE), then 429 with
    Retry-After; the store holds no more, and the flood ends in bounded time."""
    app = make_app(auto_map_session_by_ip=False, new_sessions_per_client_per_minute=150, clock=FakeClock())
    async with serve_in_loop(app), fresh(app) as client:
        store = memory_store_of(app)
        began = time.perf_counter()
        statuses: dict[int, int] = {}
        for _ in range(SESSIONS):
            response = await client.post(f"{API}/tasks", json={"executor": "script"})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        elapsed = time.perf_counter() - began
        refused = await client.post(f"{API}/tasks", json={"executor": "script"})
        error = assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["Retry-After"]) >= 1 and "NEW_SESSIONS_PER_CLIENT_PER_MINUTE" in str(
            error["message"]
        )
        assert statuses == {201: 150, 429: SESSIONS - 150}
        assert len(store.sessions) == 150 and len(store) == 150
        assert len(store.buckets) <= 4096 + 1  # rate buckets of refused sessions are pruned as they pile up
    assert elapsed < SESSIONS * 0.02, f"{SESSIONS} creates took {elapsed:.1f} s"  # a loaded 2-core CI box


async def test_the_task_cap_holds_across_sessions(make_app: Callable[..., Litestar]) -> None:
    """MAX_TASKS bounds the tasks of every session together."""
    app = make_app(auto_map_session_by_ip=False, max_tasks=50)
    async with serve_in_loop(app), fresh(app) as client:
        codes = [(await client.post(f"{API}/tasks", json={"executor": "script"})).status_code for _ in range(80)]
        assert codes.count(201) == 50 and codes.count(503) == 30
        assert len(memory_store_of(app)) == 50


async def test_never_started_tasks_and_idle_sessions_expire(make_app: Callable[..., Litestar]) -> None:
    """``start: false`` tasks are cancelled after PENDING_TASK_TTL_MS; a session idle for
    SESSION_IDLE_TTL_MS is forgotten, freeing its place under MAX_SESSIONS."""
    clock = FakeClock()
    app = make_app(
        clock=clock,
        pending_task_ttl_ms=60_000,
        session_idle_ttl_ms=120_000,
        finished_task_ttl_ms=0,
        task_cleanup_interval=30_000,
        max_sessions=1,
    )
    async with serve_in_loop(app) as client:
        task = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
        await clock.wait_for_sleepers(1)
        clock.advance(30)  # a sweep: not yet
        await wait_for(app, task["id"], "pending")
        await clock.wait_for_sleepers(1)
        clock.advance(30)  # 60 s: expired
        expired = await wait_for(app, task["id"], "cancelled")
        assert "expired" in (expired.history[-1].reason or "")
        store = memory_store_of(app)
        assert len(store.sessions) == 1
        for _ in range(4):  # 120 s after the last change the session goes
            await clock.wait_for_sleepers(1)
            clock.advance(30)
        await clock.wait_for_sleepers(1)
        assert len(store.sessions) == 0


async def test_finished_tasks_expire_after_their_ttl(make_app: Callable[..., Litestar]) -> None:
    clock = FakeClock()
    app = make_app(clock=clock, finished_task_ttl_ms=60_000, session_idle_ttl_ms=0, task_cleanup_interval=60_000)
    async with serve_in_loop(app) as client:
        done = (await client.post(f"{API}/tasks", json={"executor": "script", "start": True})).json()["task"]
        await wait_for(app, done["id"], "completed")
        await clock.wait_for_sleepers(1)
        clock.advance(60)
        await clock.wait_for_sleepers(1)
        assert (await client.get(f"{API}/tasks/{done['id']}")).status_code == 404


async def test_retention_is_immediate_under_a_burst(make_app: Callable[..., Litestar]) -> None:
    """BURST completions against a limit of 50 leave 50, with no sweep (the timer never fires)."""
    app = make_app(max_completed_tasks=50, task_cleanup_interval=86_400_000)
    async with serve_in_loop(app) as client:
        last = None
        for _ in range(BURST):
            body = {"executor": "script", "start": True, "params": {"steps": 0}}
            last = await client.post(f"{API}/tasks", json=body)
        assert last is not None
        await wait_for(app, last.json()["task"]["id"], "completed")
        stats = (await client.get(f"{API}/tasks/stats")).json()["stats"]
        assert stats["completed"] == 50 and stats["total"] == 50
        assert system_of(app).cleaner.last_run is None


async def test_cancel_retry_loops_keep_the_history_bounded(app: Litestar, client: httpx.AsyncClient) -> None:
    """CYCLES cancel/retry loops leave MAX_TASK_HISTORY (50) entries: the first, the latest,
    and one entry counting the transitions in between; the task's JSON stays small."""
    transitions = 0

    def count(task: object, previous: object) -> None:
        nonlocal transitions
        transitions += 1

    system_of(app).store.events.on_transition.append(count)
    task = (await client.post(f"{API}/tasks", json={"executor": "script", "params": {"hold": True}})).json()["task"]
    await client.post(f"{API}/tasks/{task['id']}/cancel")
    for _ in range(CYCLES):
        assert (await client.post(f"{API}/tasks/{task['id']}/retry")).status_code == 200
        assert (await client.post(f"{API}/tasks/{task['id']}/cancel")).status_code == 200
    response = await client.get(f"{API}/tasks/{task['id']}")
    history = response.json()["task"]["history"]
    assert len(history) == 50 and history[0]["reason"] == "created"
    assert sum(entry.get("omitted", 1) for entry in history) == transitions > 2 * CYCLES
    assert len(response.content) < 12_000


async def test_manual_retries_count_against_the_create_rate(make_app: Callable[..., Litestar]) -> None:
    """A cancel/retry loop cannot bypass TASK_CREATE_RATE: retries draw from the same bucket."""
    app = make_app(clock=FakeClock(), task_create_rate=1.0, task_create_burst=3)
    async with serve_in_loop(app) as client:
        task = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
        await client.post(f"{API}/tasks/{task['id']}/cancel")
        for _ in range(2):
            assert (await client.post(f"{API}/tasks/{task['id']}/retry")).status_code == 200
            await client.post(f"{API}/tasks/{task['id']}/cancel")
        assert_error(await client.post(f"{API}/tasks/{task['id']}/retry"), 429, "rate_limited")

"""The HTTP API on the Redis backend, in-process: the same answers as in memory mode,
readiness that names Redis, and start-up refusals in one line."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from litestar import Litestar

from async_tasks.errors import StoreUnavailable
from async_tasks.server import serve
from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from async_tasks.testing import serve_in_loop, wait_for
from async_tasks.web.frames import OPENED
from async_tasks.web.streams import StreamBridge
from async_tasks.worker import load_app, run_worker
from tests.helpers import ScriptExecutor, system_of
from tests.servers import free_port, redis_server

API = "/api/v1"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
VOLATILE = {
    "id",
    "sessionKey",
    "requestId",
    "createdAt",
    "updatedAt",
    "startedAt",
    "completedAt",
    "at",
    "averageDurationMs",
}
#: What a create or retry answer says about a start that may or may not have happened yet:
#: in memory the task often starts before the answer is written, on Redis a worker takes it
#: a moment later (the answer says `pending`).
STARTING = {"status", "attempts", "history", "queuePosition", "eta"}


def scrub(value: Any, drop: set[str] = VOLATILE) -> Any:
    """A response body without ids and times."""
    if isinstance(value, dict):
        return {key: scrub(item, drop) for key, item in value.items() if key not in drop}
    if isinstance(value, list | tuple):
        return [scrub(item, drop) for item in value]
    if isinstance(value, str):
        return UUID.sub("<id>", value)
    return value


async def run_scenario(http: httpx.AsyncClient, system: TaskSystem) -> list[Any]:
    """Create, run, list, inspect, cancel, retry and delete; every answer, scrubbed."""
    answers: list[Any] = []
    done = (await http.post(f"{API}/tasks", json={"executor": "script", "params": {"steps": 3}, "start": True,
                                                  "tags": ["a"], "metadata": {"k": [1, 2.5]}})).json()  # fmt: skip
    answers.append(scrub(done, VOLATILE | STARTING))
    task_id = done["task"]["id"]
    await wait_for(system, done["task"]["sessionKey"], task_id, "completed")
    held = (await http.post(f"{API}/tasks", json={"executor": "script", "params": {"hold": True}})).json()
    held_id = held["task"]["id"]
    for path in (f"/tasks/{task_id}", f"/tasks/{task_id}/status", "/tasks", "/tasks?status=completed",
                 "/tasks?tag=a", "/tasks/stats", f"/tasks/{held_id}", "/tasks?offset=1000000000",
                 "/tasks?offset=99999999999999999999"):  # fmt: skip
        response = await http.get(API + path)
        answers.append((response.status_code, response.json()))
    for path in (f"/tasks/{held_id}/cancel", f"/tasks/{held_id}/cancel", f"/tasks/{held_id}/retry"):
        response = await http.post(API + path)
        drop = VOLATILE | STARTING if path.endswith("retry") else VOLATILE
        answers.append(scrub((response.status_code, response.json()), drop))
    await http.post(f"{API}/tasks/{held_id}/cancel")
    cleanup = (await http.post(f"{API}/tasks/cleanup/run")).json()
    answers.append(scrub(cleanup, VOLATILE | {"durationMs"}))
    answers.append((await http.delete(f"{API}/tasks/{held_id}")).status_code)
    answers.append((await http.get(f"{API}/tasks/{held_id}")).status_code)
    return scrub(answers)  # type: ignore[no-any-return]


async def test_the_api_answers_as_in_memory_mode(
    make_app: Callable[..., Litestar], redis_url: str, redis_prefix: str
) -> None:
    """The same requests get the same answers (but ids, times and how far a just-started
    task has got) on both backends."""
    memory_app = make_app(max_cancelled_tasks=0)  # the cleanup run removes the cancelled task
    redis_app = make_app(
        max_cancelled_tasks=0, task_backend=redis_url, redis_key_prefix=redis_prefix, embedded_worker=True
    )
    async with serve_in_loop(memory_app) as http:
        in_memory = await run_scenario(http, system_of(memory_app))
    async with serve_in_loop(redis_app) as http:
        in_redis = await run_scenario(http, system_of(redis_app))
        for task in (await http.get(f"{API}/tasks")).json()["tasks"]:
            ScriptExecutor.release(task["id"])
    assert in_redis == in_memory


async def test_ready_names_redis(make_app: Callable[..., Litestar], redis_url: str, redis_prefix: str) -> None:
    """/ready checks Redis: 200 while it answers, 503 naming it when it does not."""
    async with serve_in_loop(make_app(task_backend=redis_url, redis_key_prefix=redis_prefix)) as http:
        ready = await http.get("/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["redis"] == "ok"
    gone = f"redis://127.0.0.1:{free_port()}/0"
    async with serve_in_loop(make_app(task_backend=gone, redis_key_prefix=redis_prefix)) as http:
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["failing"] == ["redis"]
        response = await http.get(f"{API}/tasks")
        assert response.status_code == 503 and response.json()["error"]["code"] == "store_unavailable"


def test_start_up_refusals_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    """No SECRET_KEY with Redis, an unreachable Redis, a worker on the memory backend, a worker
    asked for an executor nobody registered: one line each."""
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("TASK_BACKEND", raising=False)
    assert serve(backend=redis_url, port=free_port()) == 2
    assert "SECRET_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("SECRET_KEY", "0123456789abcdef0123")
    gone = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    assert serve(backend=gone, port=free_port()) == 2
    err = capsys.readouterr().err
    assert err.startswith("async-tasks: Cannot reach Redis at redis://:***@127.0.0.1") and err.count("\n") == 1
    assert run_worker() == 2
    assert "needs a shared backend" in capsys.readouterr().err
    assert run_worker(backend=redis_url, app="tests.helpers:nothing") == 2
    assert "--app tests.helpers:nothing" in capsys.readouterr().err
    assert run_worker(backend=redis_url, app="tests.helpers:TEST_EXECUTORS", executors="script,reprot") == 2
    err = capsys.readouterr().err
    assert err.startswith("async-tasks: --executors / WORKER_EXECUTORS names 'reprot', which is not registered")
    assert "registered: " in err and "script" in err and err.count("\n") == 1


def test_the_worker_finds_executors_registered_in_code() -> None:
    """--app takes executors, a list of them, or a factory of a Litestar app (with its executors)."""
    assert load_app("tests.helpers:ScriptExecutor") == ([ScriptExecutor], True)
    executors, entry_points = load_app("tests.helpers:TEST_EXECUTORS")
    assert len(executors) == 2 and entry_points
    executors, entry_points = load_app("demos.integration:create_app")
    assert not entry_points and {type(e).name for e in executors} >= {"sample"}


@pytest.mark.e2e
async def test_streams_start_again_from_snapshots_after_redis_comes_back(redis_prefix: str) -> None:
    """Pub/sub loses what is published while it reconnects: after a Redis restart every
    open stream sends fresh snapshots, then follows changes again."""
    port = free_port()
    settings = Settings(secret_key="0123456789abcdef0123", task_create_rate=0.0, redis_key_prefix=redis_prefix,
                        task_backend=f"redis://127.0.0.1:{port}/0")  # fmt: skip
    server = redis_server(port=port)
    server.__enter__()
    try:
        async with TaskSystem([ScriptExecutor], settings=settings, load_entry_points=False) as system:
            bridge = StreamBridge(system.store, shared=system.backend.events)
            async with anyio.create_task_group() as tg:
                await tg.start(bridge.run)
                stream = bridge.session_stream("s", keepalive=False)
                assert await anext(stream) == OPENED
                first = await system.create_task("s", executor="script", start=False)
                frame = await anext(stream)  # snapshots are read when the consumer starts reading
                assert frame.type == "snapshot" and first.id.encode() in frame.data
                server.__exit__(None, None, None)  # Redis goes away, and comes back empty
                server = redis_server(port=port)
                server.__enter__()
                with anyio.fail_after(10):
                    while True:  # until the channel has subscribed again, nothing to read
                        try:
                            second = await system.create_task("s", executor="script", start=False)
                            break
                        except StoreUnavailable:
                            await anyio.sleep(0.05)
                    caught_up = await anext(stream)  # a snapshot, or its event if it came after
                    assert second.id.encode() in caught_up.data
                    third = await system.create_task("s", executor="script", start=False)
                    followed = await anext(stream)
                assert followed.type == "transition" and third.id.encode() in followed.data
                await stream.aclose()
                tg.cancel_scope.cancel()
    finally:
        server.__exit__(None, None, None)

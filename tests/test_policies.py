"""Idempotency keys and per-session quotas (active tasks, create rate)."""

from __future__ import annotations

from collections.abc import Callable

from litestar import Litestar

from async_tasks.testing import FakeClock, asgi_client, serve_in_loop
from tests.helpers import ScriptExecutor

API = "/api/v1"


async def test_same_idempotency_key_returns_the_same_task(make_app: Callable[..., Litestar]) -> None:
    async with serve_in_loop(make_app()) as client:
        body = {"executor": "script", "params": {"steps": 2}}
        first = await client.post(f"{API}/tasks", json=body, headers={"Idempotency-Key": "order-1"})
        again = await client.post(f"{API}/tasks", json=body, headers={"Idempotency-Key": "order-1"})
        assert first.status_code == 201 and again.status_code == 200
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["task"]["id"] == first.json()["task"]["id"]
        assert (await client.get(f"{API}/tasks/stats")).json()["stats"]["total"] == 1
        demo = await client.post(f"{API}/demo/tasks/sample", json={"delayMs": 0}, headers={"Idempotency-Key": "d"})
        demo_again = await client.post(
            f"{API}/demo/tasks/sample", json={"delayMs": 0}, headers={"Idempotency-Key": "d"}
        )
        assert demo_again.json()["task"]["id"] == demo.json()["task"]["id"]


async def test_idempotency_key_with_another_body_is_refused(make_app: Callable[..., Litestar]) -> None:
    async with serve_in_loop(make_app()) as client:
        await client.post(f"{API}/tasks", json={"executor": "script"}, headers={"Idempotency-Key": "k"})
        response = await client.post(
            f"{API}/tasks", json={"executor": "script", "params": {"steps": 9}}, headers={"Idempotency-Key": "k"}
        )
        assert response.status_code == 422 and response.json()["error"]["code"] == "idempotency_key_reused"


async def test_idempotency_keys_are_per_session(make_app: Callable[..., Litestar]) -> None:
    async with serve_in_loop(make_app()) as client:
        token = (await client.post(f"{API}/session")).json()["token"]
        client.cookies.clear()  # keep this client in its IP session
        mine = await client.post(f"{API}/tasks", json={"executor": "script"}, headers={"Idempotency-Key": "k"})
        theirs = await client.post(
            f"{API}/tasks", json={"executor": "script"}, headers={"Idempotency-Key": "k", "X-Session-Token": token}
        )
        assert theirs.status_code == 201 and theirs.json()["task"]["id"] != mine.json()["task"]["id"]


async def test_active_task_quota_is_429_with_retry_after(make_app: Callable[..., Litestar]) -> None:
    async with serve_in_loop(make_app(max_active_tasks_per_session=2)) as client:
        held = [
            (
                await client.post(f"{API}/tasks", json={"executor": "script", "start": True, "params": {"hold": True}})
            ).json()["task"]
            for _ in range(2)
        ]
        response = await client.post(f"{API}/tasks", json={"executor": "script"})
        assert response.status_code == 429 and response.json()["error"]["code"] == "quota_exceeded"
        assert int(response.headers["retry-after"]) >= 1
        await client.post(f"{API}/tasks/{held[0]['id']}/cancel")
        assert (await client.post(f"{API}/tasks", json={"executor": "script"})).status_code == 201
        ScriptExecutor.release(held[1]["id"])


async def test_reads_are_rate_limited_per_session_and_refill(make_app: Callable[..., Litestar]) -> None:
    """A session polling too fast gets 429 with Retry-After; another session is served meanwhile."""
    clock = FakeClock()
    app = make_app(clock=clock, task_read_rate=2.0, task_read_burst=3)
    async with serve_in_loop(app) as client:
        created = (await client.post(f"{API}/tasks", json={"executor": "script", "start": False})).json()["task"]
        paths = [f"{API}/tasks/{created['id']}/status", f"{API}/tasks", f"{API}/tasks/stats", f"{API}/tasks"]
        codes = [(await client.get(path)).status_code for path in paths]
        assert codes == [200, 200, 200, 429]
        refused = await client.get(f"{API}/tasks/{created['id']}")
        assert refused.json()["error"]["code"] == "rate_limited" and "TASK_READ_RATE" in str(refused.json())
        assert refused.headers["retry-after"] == "1"
        async with asgi_client(app, "10.9.9.9") as other:
            assert (await other.get(f"{API}/tasks")).status_code == 200
        clock.advance(0.5)
        assert (await client.get(f"{API}/tasks")).status_code == 200


async def test_create_rate_limit_is_429_and_refills(make_app: Callable[..., Litestar]) -> None:
    clock = FakeClock()
    async with serve_in_loop(make_app(clock=clock, task_create_rate=2.0, task_create_burst=2)) as client:
        codes = [(await client.post(f"{API}/tasks", json={"executor": "script"})).status_code for _ in range(3)]
        assert codes == [201, 201, 429]
        refused = await client.post(f"{API}/tasks", json={"executor": "script"})
        assert refused.json()["error"]["code"] == "rate_limited" and refused.headers["retry-after"] == "1"
        clock.advance(0.5)
        assert (await client.post(f"{API}/tasks", json={"executor": "script"})).status_code == 201

"""Limits answer with the contract's error body and status, and a refused flood costs
nothing: oversized bodies (413), too many batch items (400), too many active tasks in a
session (429 + Retry-After), too many creates per second (429 + Retry-After). Bodies
nested too deeply are a 400, never a 500, and body fields keep their JSON types.
"""

from __future__ import annotations

import gc
import os
import re
import tracemalloc
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from litestar import Litestar

from async_tasks.testing import FakeClock, asgi_client, serve_in_loop
from tests.helpers import memory_store_of

pytestmark = pytest.mark.battery

API = "/api/v1"
#: Refused creates in the flood test, and how many of them run under tracemalloc (slow).
FLOOD = 5000 if os.environ.get("BATTERY_EXAMPLES") else 300
TRACED = 1000 if os.environ.get("BATTERY_EXAMPLES") else 150


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


def from_ip(app: Litestar, ip: str) -> httpx.AsyncClient:
    return asgi_client(app, ip)


async def test_an_oversized_body_is_413_with_the_error_body(make_app: Callable[..., Litestar]) -> None:
    async with serve_in_loop(make_app(max_request_body_bytes=1024)) as client:
        big = {"executor": "script", "description": "x" * 2000}
        assert_error(await client.post(f"{API}/tasks", json=big), 413, "request_too_large")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit still holds
            for _ in range(8):
                yield b" " * 512

        chunked = await client.post(
            f"{API}/demo/tasks/script", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert_error(chunked, 413, "request_too_large")
        assert (await client.get(f"{API}/tasks/stats")).json()["stats"]["total"] == 0


async def test_too_many_batch_items_is_400(make_app: Callable[..., Litestar]) -> None:
    async with serve_in_loop(make_app(environ={"BATCH_MAX_ITEMS": "5"})) as client:
        error = assert_error(
            await client.post(f"{API}/demo/tasks/batch", json={"items": list(range(6))}), 400, "invalid_params"
        )
        assert "at most 5" in str(error["message"])
        # Above the schema's hard bound it is refused before the executor sees it.
        assert_error(await client.post(f"{API}/demo/tasks/batch", json={"items": [0] * 10_001}), 400, "invalid_params")
        accepted = await client.post(f"{API}/demo/tasks/batch", json={"items": list(range(5)), "itemDelayMs": 0})
        assert accepted.status_code == 201


async def test_too_many_active_tasks_is_429_with_retry_after(make_app: Callable[..., Litestar]) -> None:
    app = make_app(max_active_tasks_per_session=3)
    async with serve_in_loop(app) as client, from_ip(app, "10.9.9.9") as other:
        ids = [(await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]["id"] for _ in range(3)]
        refused = await client.post(f"{API}/tasks", json={"executor": "script"})
        assert_error(refused, 429, "quota_exceeded")
        assert int(refused.headers["Retry-After"]) >= 1
        assert_error(await client.post(f"{API}/demo/tasks/script", json={}), 429, "quota_exceeded")
        # Another session has its own quota; ending a task frees a place.
        assert (await other.post(f"{API}/tasks", json={"executor": "script"})).status_code == 201
        assert (await client.post(f"{API}/tasks/{ids[0]}/cancel")).status_code == 200
        assert (await client.post(f"{API}/tasks", json={"executor": "script"})).status_code == 201


async def test_creating_too_fast_is_429_with_retry_after(make_app: Callable[..., Litestar]) -> None:
    clock = FakeClock()
    app = make_app(clock=clock, task_create_rate=2.0, task_create_burst=3)
    async with serve_in_loop(app) as client, from_ip(app, "10.9.9.9") as other:
        for _ in range(3):
            assert (await client.post(f"{API}/tasks", json={"executor": "script"})).status_code == 201
        refused = await client.post(f"{API}/tasks", json={"executor": "script"})
        assert_error(refused, 429, "rate_limited")
        assert refused.headers["Retry-After"] == "1"  # 0.5 s, rounded up to whole seconds
        assert (await other.post(f"{API}/tasks", json={"executor": "script"})).status_code == 201
        clock.advance(0.5)  # one token back at 2 per second
        assert (await client.post(f"{API}/tasks", json={"executor": "script"})).status_code == 201
        assert_error(await client.post(f"{API}/tasks", json={"executor": "script"}), 429, "rate_limited")


@pytest.mark.parametrize("limit", ["quota", "rate"])
async def test_a_refused_flood_leaves_memory_and_the_store_unchanged(
    make_app: Callable[..., Litestar], limit: str
) -> None:
    """FLOOD refused creates add no task, session, rate bucket or live object; a window of
    them traced with tracemalloc keeps (almost) no memory."""
    settings = (
        {"max_active_tasks_per_session": 2} if limit == "quota" else {"task_create_rate": 1.0, "task_create_burst": 2}
    )
    app = make_app(clock=FakeClock(), **settings)
    code = "quota_exceeded" if limit == "quota" else "rate_limited"
    async with serve_in_loop(app) as client:
        store = memory_store_of(app)

        async def refused(times: int) -> None:
            for _ in range(times):
                response = await client.post(f"{API}/tasks", json={"executor": "script"})
                assert response.status_code == 429 and response.json()["error"]["code"] == code

        for _ in range(2):
            assert (await client.post(f"{API}/tasks", json={"executor": "script"})).status_code == 201
        await refused(100)  # warm every cache on the refusal path
        books = len(store), len(store.sessions), len(store.buckets)
        gc.collect()
        objects = len(gc.get_objects())
        await refused(FLOOD)
        gc.collect()
        assert len(gc.get_objects()) - objects < 100
        assert (len(store), len(store.sessions), len(store.buckets)) == books

        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            await refused(TRACED)
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        # `re` keeps a bounded cache of compiled patterns (other tests may have filled it).
        ignore = [tracemalloc.Filter(False, re.__file__), tracemalloc.Filter(False, tracemalloc.__file__)]
        diff = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "filename")
        kept = sum(d.size_diff for d in diff)
        assert kept < 16 * 1024, f"{kept} bytes kept after {TRACED} refused creates"


@pytest.mark.parametrize("path", ["/tasks", "/demo/tasks/sample", "/demo/tasks/batch", "/demo/tasks/unknown"])
async def test_a_deeply_nested_body_is_400_not_500(session_client: httpx.AsyncClient, path: str) -> None:
    client = session_client
    nested = "[" * 1000 + "]" * 1000  # 2 KB: msgspec refuses this depth with a RecursionError
    response = await client.post(
        f"{API}{path}", content='{"items": ' + nested + "}", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        ("/demo/tasks/sample", {"delayMs": "0"}, "delayMs"),
        ("/demo/tasks/sample", {"maxRetries": "null"}, "maxRetries"),
        ("/tasks", {"executor": "script", "start": "true"}, "start"),
        ("/tasks", {"executor": "script", "priority": "5"}, "priority"),
    ],
)
async def test_body_fields_keep_their_json_types(
    session_client: httpx.AsyncClient, path: str, body: dict[str, object], key: str
) -> None:
    """A string is not a number, a boolean or null (Litestar alone would coerce it)."""
    client = session_client
    error = assert_error(await client.post(f"{API}{path}", json=body), 400, "invalid_params")
    assert error["details"] == [{"message": error["details"][0]["message"], "key": key, "source": "body"}]  # type: ignore[index]


async def test_an_integral_float_is_an_integer(session_client: httpx.AsyncClient) -> None:
    """As in JSON Schema, 2.0 is a valid integer."""
    client = session_client
    response = await client.post(f"{API}/demo/tasks/sample", json={"delayMs": 0.0, "priority": 2.0})
    assert response.status_code == 201, response.text

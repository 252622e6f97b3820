"""Session isolation: token (header or cookie), IP mapping, and the shared mode.

Most tests share an app per module (IP mapping on: `shared_app`; off: `tokens_app`)
with sessions of their own; tests of other keys or modes build their own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from unittest import mock

import httpx
import pytest
from litestar import Litestar

from async_tasks.testing import asgi_client, serve_in_loop
from async_tasks.web.plugin import AsyncTasksPlugin
from tests.helpers import build_app, new_address, tampered

API = "/api/v1"


@pytest.fixture(scope="module")
async def tokens_app() -> AsyncIterator[Litestar]:
    """An app without IP mapping, for the module: a client without a token or cookie gets a new session."""
    app = build_app(auto_map_session_by_ip=False)
    async with app.lifespan():
        yield app


@pytest.fixture
async def tokens_client(tokens_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(tokens_app) as client:
        yield client


@asynccontextmanager
async def from_ip(app: Litestar, ip: str) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app, ip) as client:
        yield client


async def new_token(client: httpx.AsyncClient) -> str:
    response = await client.post(f"{API}/session")
    assert response.status_code == 201
    return response.json()["token"]  # type: ignore[no-any-return]


async def assert_foreign(client: httpx.AsyncClient, task_id: str, headers: dict[str, str] | None = None) -> None:
    """Every operation on another session's task is a 404, and lists and stats do not count it."""
    for method, path in [
        ("GET", ""),
        ("GET", "/status"),
        ("POST", "/start"),
        ("POST", "/cancel"),
        ("POST", "/retry"),
        ("DELETE", ""),
    ]:
        response = await client.request(method, f"{API}/tasks/{task_id}{path}", headers=headers)
        assert response.status_code == 404 and response.json()["error"]["code"] == "task_not_found", (method, path)
    listing = (await client.get(f"{API}/tasks", headers=headers)).json()
    assert task_id not in [t["id"] for t in listing["tasks"]]
    stats = (await client.get(f"{API}/tasks/stats", headers=headers)).json()["stats"]
    assert stats["total"] == listing["total"]


async def test_two_tokens_are_isolated(session_client: httpx.AsyncClient) -> None:
    client = session_client
    alice, bob = await new_token(client), await new_token(client)
    task = (await client.post(f"{API}/tasks", json={"executor": "script"}, headers={"X-Session-Token": alice})).json()[
        "task"
    ]
    assert task["sessionKey"].startswith("s_")
    await assert_foreign(client, task["id"], {"X-Session-Token": bob})
    await assert_foreign(client, task["id"])  # the IP session is a third one
    mine = await client.get(f"{API}/tasks/{task['id']}", headers={"X-Session-Token": alice})
    assert mine.status_code == 200


async def test_two_ips_are_isolated(shared_app: Litestar) -> None:
    ip = new_address()
    async with from_ip(shared_app, ip) as one, from_ip(shared_app, new_address()) as two:
        task = (await one.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
        assert task["sessionKey"].startswith("ip_") and ip not in task["sessionKey"]
        await assert_foreign(two, task["id"])
        assert (await one.get(f"{API}/tasks")).json()["total"] == 1


async def test_same_ip_is_the_same_session(shared_app: Litestar) -> None:
    ip = new_address()
    async with from_ip(shared_app, ip) as one, from_ip(shared_app, ip) as again:
        task = (await one.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
        assert (await again.get(f"{API}/tasks/{task['id']}")).status_code == 200


async def test_session_cookie_is_issued_and_honoured(tokens_client: httpx.AsyncClient) -> None:
    """Without IP mapping, a first request gets a new session: token header plus HttpOnly cookie."""
    client = tokens_client
    first = await client.post(f"{API}/tasks", json={"executor": "script"})
    cookie = first.headers["set-cookie"]
    assert "async_tasks_session=" in cookie and "HttpOnly" in cookie and "Path=/" in cookie
    assert "SameSite=lax" in cookie or "SameSite=Lax" in cookie
    assert first.headers["x-session-token"]
    # httpx keeps the cookie: the next request is in the same session.
    task_id = first.json()["task"]["id"]
    assert (await client.get(f"{API}/tasks/{task_id}")).status_code == 200
    client.cookies.clear()
    assert (await client.get(f"{API}/tasks/{task_id}")).status_code == 404


@pytest.mark.parametrize("forged", ["", "garbage", "s_abc", "a" * 5000, "eyJ.x.y", "s_x.AAAA.BBBB"])
async def test_forged_token_is_treated_as_absent(tokens_client: httpx.AsyncClient, forged: str) -> None:
    response = await tokens_client.get(f"{API}/session", headers={"X-Session-Token": forged})
    assert response.status_code == 200
    assert response.json()["sessionKey"].startswith("s_")
    assert response.headers.get("x-session-token")  # a fresh session was issued


async def test_token_from_other_key_is_not_accepted(
    make_app: Callable[..., Litestar], tokens_client: httpx.AsyncClient
) -> None:
    async with serve_in_loop(make_app(secret_key="another-secret-key-abcdefghij")) as other:
        token = await new_token(other)
    response = await tokens_client.get(f"{API}/session", headers={"X-Session-Token": token})
    assert response.headers.get("x-session-token") and response.headers["x-session-token"] != token


async def test_key_rotation_accepts_old_tokens(make_app: Callable[..., Litestar]) -> None:
    old = "old-secret-key-0123456789abcdef"
    async with serve_in_loop(make_app(secret_key=old)) as before:
        token = await new_token(before)
        key = (await before.get(f"{API}/session", headers={"X-Session-Token": token})).json()["sessionKey"]
    async with serve_in_loop(
        make_app(secret_key=f"new-secret-key-0123456789abcdef,{old}", auto_map_session_by_ip=False)
    ) as after:
        response = await after.get(f"{API}/session", headers={"X-Session-Token": token})
        assert response.json()["sessionKey"] == key and "x-session-token" not in response.headers


async def test_isolation_disabled_shares_one_session(make_app: Callable[..., Litestar]) -> None:
    app = make_app(enable_session_isolation=False)
    async with app.lifespan(), from_ip(app, "10.1.1.1") as one, from_ip(app, "10.2.2.2") as two:
        task = (await one.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
        assert task["sessionKey"] == "shared"
        assert (await two.get(f"{API}/tasks/{task['id']}")).status_code == 200


async def test_new_session_endpoint_starts_an_empty_session(session_client: httpx.AsyncClient) -> None:
    client = session_client
    await client.post(f"{API}/tasks", json={"executor": "script"})
    response = await client.post(f"{API}/session")
    body: dict[str, Any] = response.json()
    assert body["sessionKey"].startswith("s_") and body["token"]
    assert "async_tasks_session=" in response.headers["set-cookie"]
    listing = (await client.get(f"{API}/tasks", headers={"X-Session-Token": body["token"]})).json()
    assert listing["total"] == 0


async def test_a_new_session_is_one_session_with_one_token(tokens_client: httpx.AsyncClient) -> None:
    """POST /session without a token hands out exactly one session: one header, one cookie, a token that works."""
    client = tokens_client
    response = await client.post(f"{API}/session")
    assert response.status_code == 201
    assert len(response.headers.get_list("x-session-token")) == 1
    assert len(response.headers.get_list("set-cookie")) == 1
    body = response.json()
    assert response.headers["x-session-token"] == body["token"]
    assert f"async_tasks_session={body['token']}" in response.headers["set-cookie"]
    client.cookies.clear()
    again = await client.get(f"{API}/session", headers={"X-Session-Token": body["token"]})
    assert again.json()["sessionKey"] == body["sessionKey"]
    assert "x-session-token" not in again.headers and "x-session-token-status" not in again.headers


@pytest.mark.parametrize("auto_map", [True, False])
async def test_a_rejected_token_is_reported(make_app: Callable[..., Litestar], auto_map: bool) -> None:
    """A token that does not verify is answered with X-Session-Token-Status: invalid (never silently)."""
    async with serve_in_loop(make_app(auto_map_session_by_ip=auto_map)) as client:
        token = await new_token(client)
        client.cookies.clear()
        good = await client.get(f"{API}/session", headers={"X-Session-Token": token})
        assert "x-session-token-status" not in good.headers
        bad = await client.get(f"{API}/session", headers={"X-Session-Token": tampered(token)})
        assert bad.status_code == 200 and bad.headers["x-session-token-status"] == "invalid"
        assert bad.json()["sessionKey"] != good.json()["sessionKey"]


async def test_an_expired_token_is_reported_and_its_cookie_cleared(make_app: Callable[..., Litestar]) -> None:
    """An expired session cookie gets the invalid status and is deleted, so the browser stops sending it."""
    later = make_app(session_max_age=60)
    resolver = later.plugins.get(AsyncTasksPlugin).sessions
    # A token signed ten minutes ago, without waiting (itsdangerous stamps with time.time()).
    with mock.patch("itsdangerous.timed.time.time", return_value=time.time() - 600):
        token = resolver.token_for("s_expiredexpiredexpired")
    async with serve_in_loop(later) as client:
        client.cookies.set("async_tasks_session", token)
        response = await client.get(f"{API}/session")
        assert response.headers["x-session-token-status"] == "invalid"
        assert response.json()["sessionKey"].startswith("ip_")
        cookie = response.headers["set-cookie"]
        assert cookie.startswith("async_tasks_session=") and "Max-Age=0" in cookie

"""The HTTP boundary holds against other sites, rebinding, spoofed proxies and key-less
callers (issue 11), and lets listed front-end origins in.

Each attack is replayed as a browser or a local process would send it, in process
(httpx on the ASGI app; Litestar's test client for WebSockets): what used to be
accepted is now refused with the contract's error body.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import itsdangerous.timed
import pytest
from litestar import Litestar
from litestar.exceptions import WebSocketDisconnect
from litestar.testing import TestClient

from async_tasks.clients import FORWARDED_PEER
from async_tasks.settings import Settings
from async_tasks.testing import serve_in_loop
from async_tasks.web.plugin import AsyncTasksPlugin
from async_tasks.web.sessions import SessionResolver
from tests.battery.test_limits import API, assert_error
from tests.helpers import SECRET, TEST_HOST, tampered, wait_for

pytestmark = pytest.mark.battery

EVIL = "http://evil.example"
FRONT_END = "http://localhost:5173"
KEY = "demo-api-key-0123456789"


@asynccontextmanager
async def served(app: Litestar, ip: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    async with serve_in_loop(app, ip, base_url=f"http://{TEST_HOST}") as client:
        yield client


def foreign(**headers: str) -> dict[str, str]:
    return {"Origin": EVIL, **headers}


# -- other sites ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", '{"executor": "script"}'),
        ("application/x-www-form-urlencoded", "executor=script"),
        (
            "multipart/form-data; boundary=x",
            '--x\r\nContent-Disposition: form-data; name="executor"\r\n\r\nscript\r\n--x--',
        ),
        (None, '{"executor": "script"}'),
    ],
)
async def test_a_body_that_is_not_declared_json_is_415(
    session_client: httpx.AsyncClient, content_type: str | None, body: str
) -> None:
    """The "simple" bodies any site can post without a preflight are not read as JSON."""
    client = session_client  # the module's app; this client's session is its own, empty
    headers = {"Content-Type": content_type} if content_type else {}
    request = client.build_request("POST", f"{API}/tasks", content=body, headers=headers)
    if content_type is None:
        request.headers.pop("Content-Type", None)
    error = assert_error(await client.send(request), 415, "unsupported_media_type")
    assert "application/json" in str(error["message"])
    assert (await client.get(f"{API}/tasks/stats")).json()["stats"]["total"] == 0


async def test_a_foreign_origin_cannot_create_cancel_or_read(make_app: Callable[..., Litestar]) -> None:
    """The measured attack: a page elsewhere created (201) and cancelled (200) tasks in the
    presenter's IP session and read results. Writes are now 403; reads get no CORS grant,
    so the browser keeps the answer from the page."""
    async with served(make_app()) as client:
        task = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
        create = await client.post(f"{API}/tasks", json={"executor": "script"}, headers=foreign())
        error = assert_error(create, 403, "forbidden_origin")
        assert EVIL in str(error["message"]) and "CORS_ALLOW_ORIGINS" in str(error["message"])
        assert_error(await client.post(f"{API}/tasks/{task['id']}/cancel", headers=foreign()), 403, "forbidden_origin")
        assert_error(await client.delete(f"{API}/tasks/{task['id']}", headers=foreign()), 403, "forbidden_origin")
        assert_error(await client.post(f"{API}/session", headers=foreign()), 403, "forbidden_origin")
        assert_error(await client.post(f"{API}/demo/tasks/sample", json={}, headers=foreign()), 403, "forbidden_origin")
        listing = await client.get(f"{API}/tasks", headers=foreign())
        assert "access-control-allow-origin" not in listing.headers
        assert (await client.get(f"{API}/tasks/{task['id']}")).json()["task"]["status"] == "pending"
        stats = (await client.get(f"{API}/tasks/stats")).json()["stats"]
        assert stats["total"] == 1
        # The server's own origin (same host and port as Host) and no Origin at all pass.
        own = await client.post(f"{API}/tasks", json={"executor": "script"}, headers={"Origin": f"http://{TEST_HOST}"})
        assert own.status_code == 201
        assert_error(
            await client.post(f"{API}/tasks", json={"executor": "script"}, headers={"Origin": "null"}),
            403,
            "forbidden_origin",
        )


@pytest.mark.parametrize("path", [f"{API}/ws", "/ws"])
def test_a_websocket_from_a_foreign_origin_is_refused(make_app: Callable[..., Litestar], path: str) -> None:
    """``WS /ws`` used to accept any Origin (a foreign page read task params and results);
    the same at the root door."""
    app = make_app(cors_allow_origins=FRONT_END)
    with TestClient(app) as client:
        with pytest.raises(WebSocketDisconnect) as refused:
            with client.websocket_connect(path, headers={"Origin": EVIL}) as socket:
                socket.receive_text()
        assert refused.value.code == 1008
        for origin in (FRONT_END, f"http://{TEST_HOST}"):
            with client.websocket_connect(path, headers={"Origin": origin}) as socket:
                socket.send_text("hello")  # accepted: the stream is open
                socket.close()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:3000", "localhost.evil.example", "127.0.0.1.nip.io"])
async def test_a_foreign_host_header_is_400(session_client: httpx.AsyncClient, host: str) -> None:
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends its
    own name as Host. Loopback names, IP literals, HOST and ALLOWED_HOSTS pass."""
    client = session_client  # the module's app, with the default ALLOWED_HOSTS of the tests
    error = assert_error(await client.get(f"{API}/tasks", headers={"Host": host}), 400, "invalid_host")
    assert "ALLOWED_HOSTS" in str(error["message"])
    assert_error(await client.get("/", headers={"Host": host}), 400, "invalid_host")  # the dashboard too
    for good in ("localhost:3000", "LOCALHOST", "app.localhost", "127.0.0.1:3000", "[::1]:3000", "192.168.1.20"):
        assert (await client.get(f"{API}/tasks", headers={"Host": good})).status_code == 200, good


async def test_allowed_hosts_extends_the_safe_default(make_app: Callable[..., Litestar]) -> None:
    app = make_app(allowed_hosts=f"{TEST_HOST},demo.example.com,*.corp.example", host="0.0.0.0")
    async with served(app) as client:
        for good in ("demo.example.com", "a.corp.example:8443", "localhost"):
            assert (await client.get(f"{API}/tasks", headers={"Host": good})).status_code == 200, good
        for bad in ("corp.example", "example.com", "0.0.0.0.evil.example"):
            assert_error(await client.get(f"{API}/tasks", headers={"Host": bad}), 400, "invalid_host")
    async with served(make_app(allowed_hosts="*")) as client:
        assert (await client.get(f"{API}/tasks", headers={"Host": "anything.example"})).status_code == 200


# -- front-ends on listed origins -------------------------------------------------------


async def test_a_listed_origin_gets_cors_with_credentials(make_app: Callable[..., Litestar]) -> None:
    app = make_app(cors_allow_origins=f"{FRONT_END},http://127.0.0.1:*")
    async with served(app) as client:
        preflight = await client.options(
            f"{API}/tasks",
            headers={
                "Origin": FRONT_END,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-session-token,idempotency-key",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == FRONT_END
        assert preflight.headers["access-control-allow-credentials"] == "true"
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert {"x-session-token", "idempotency-key", "x-request-id", "content-type"} <= set(allowed.split(", "))
        created = await client.post(
            f"{API}/tasks", json={"executor": "script"}, headers={"Origin": FRONT_END, "Idempotency-Key": "k1"}
        )
        assert created.status_code == 201 and created.headers["access-control-allow-origin"] == FRONT_END
        exposed = created.headers["access-control-expose-headers"].lower()
        assert {"x-session-token", "x-request-id", "idempotent-replayed", "retry-after"} <= set(exposed.split(", "))
        any_port = await client.post(
            f"{API}/tasks", json={"executor": "script"}, headers={"Origin": "http://127.0.0.1:4200"}
        )
        assert any_port.headers["access-control-allow-origin"] == "http://127.0.0.1:4200"
        for other in (EVIL, "http://127.0.0.1:4200.evil.example", "https://localhost:5173"):
            refused = await client.options(
                f"{API}/tasks", headers={"Origin": other, "Access-Control-Request-Method": "POST"}
            )
            assert "access-control-allow-origin" not in refused.headers, other
            create = await client.post(f"{API}/tasks", json={"executor": "script"}, headers={"Origin": other})
            assert_error(create, 403, "forbidden_origin")


def test_cors_settings_are_checked_at_start_up() -> None:
    from async_tasks.errors import SettingsError

    for value in ("*", "null", "localhost:5173", "http://localhost:5173/app", "ftp://x"):
        with pytest.raises(SettingsError, match="CORS_ALLOW_ORIGINS"):
            Settings.from_env({"CORS_ALLOW_ORIGINS": value})


# -- stream tickets -------------------------------------------------------------------


async def test_a_stream_ticket_opens_the_token_sessions_stream(make_app: Callable[..., Litestar]) -> None:
    """EventSource cannot send X-Session-Token: a short-lived ticket in the URL stands for the
    session on the stream routes only."""
    app = make_app(auto_map_session_by_ip=False)
    async with served(app) as client:
        client.cookies.clear()
        session = (await client.post(f"{API}/session")).json()
        token = session["token"]
        client.cookies.clear()
        auth = {"X-Session-Token": token}
        body = {"executor": "script", "start": True, "params": {"steps": 0}}
        done_id = (await client.post(f"{API}/tasks", json=body, headers=auth)).json()["task"]["id"]
        await wait_for(app, done_id, "completed")
        issued = await client.post(f"{API}/session/ticket", headers=auth)
        assert issued.status_code == 201 and issued.json()["expiresIn"] == 60
        ticket = issued.json()["ticket"]
        assert token not in ticket
        client.cookies.clear()
        stream = await client.get(f"{API}/tasks/{done_id}/events", params={"ticket": ticket})
        assert stream.status_code == 200 and done_id in stream.text
        client.cookies.clear()
        listing = await client.get(f"{API}/tasks", params={"ticket": ticket})  # not a stream route: no session
        assert listing.json()["tasks"] == []
        bad = await client.get(f"{API}/tasks/{done_id}/events", params={"ticket": tampered(ticket)})
        assert_error(bad, 401, "invalid_ticket")


async def test_an_expired_ticket_is_refused(make_app: Callable[..., Litestar], monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(auto_map_session_by_ip=False, stream_ticket_ttl=30)
    resolver = app.plugins.get(AsyncTasksPlugin).sessions
    key, _ = resolver.new_session()
    a_minute_ago = int(time.time()) - 60
    monkeypatch.setattr(itsdangerous.timed.TimestampSigner, "get_timestamp", lambda self: a_minute_ago)
    old = resolver.ticket_for(key)
    monkeypatch.undo()
    async with served(app) as client:
        error = assert_error(await client.get(f"{API}/tasks/events", params={"ticket": old}), 401, "invalid_ticket")
        assert "STREAM_TICKET_TTL" in str(error["message"])


# -- API keys -----------------------------------------------------------------------------


async def test_api_keys_are_required_and_sessions_still_isolate(make_app: Callable[..., Litestar]) -> None:
    app = make_app(api_keys=f"{KEY},second-key-0123456789", auto_map_session_by_ip=False)
    async with served(app) as client:
        refused = await client.get(f"{API}/tasks")
        assert_error(refused, 401, "unauthorized")
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert_error(
            await client.get(f"{API}/tasks", headers={"X-API-Key": "wrong-key-0123456789"}), 401, "unauthorized"
        )
        assert_error(await client.get(f"{API}/tasks", headers={"Authorization": f"Basic {KEY}"}), 401, "unauthorized")
        first = await client.post(f"{API}/session", headers={"Authorization": f"Bearer {KEY}"})
        second = await client.post(f"{API}/session", headers={"X-API-Key": "second-key-0123456789"})
        one = {"Authorization": f"Bearer {KEY}", "X-Session-Token": first.json()["token"]}
        two = {"X-API-Key": KEY, "X-Session-Token": second.json()["token"]}
        client.cookies.clear()
        body = {"executor": "script", "start": True, "params": {"steps": 0}}
        task = (await client.post(f"{API}/tasks", json=body, headers=one)).json()["task"]
        client.cookies.clear()
        assert (await client.get(f"{API}/tasks/{task['id']}", headers=two)).status_code == 404
        await wait_for(app, task["id"], "completed")
        ticket = (await client.post(f"{API}/session/ticket", headers=one)).json()["ticket"]
        client.cookies.clear()
        stream = await client.get(f"{API}/tasks/{task['id']}/events", params={"ticket": ticket})
        assert stream.status_code == 200 and task["id"] in stream.text  # no key needed with a ticket
        assert (await client.get("/health")).status_code == 200  # probes stay open
        assert (await client.get("/")).status_code == 200  # the page itself is public


async def test_metrics_can_require_their_own_token(make_app: Callable[..., Litestar]) -> None:
    token = "metrics-token-0123456789"
    async with served(make_app(metrics_token=token)) as client:
        assert_error(await client.get("/metrics"), 401, "unauthorized")
        assert_error(await client.get("/metrics", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
        scraped = await client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert scraped.status_code == 200 and "async_tasks_tasks_created_total" in scraped.text


async def test_metrics_show_aggregates_only(make_app: Callable[..., Litestar]) -> None:
    """Another session's activity shows only in counts: no key, task id, name or params."""
    app = make_app(auto_map_session_by_ip=False)
    async with served(app) as client:
        body = {"executor": "script", "name": "secret-project-x", "params": {"result": "hidden-value"}}
        task = (await client.post(f"{API}/tasks", json=body)).json()["task"]
        client.cookies.clear()
        text = (await client.get("/metrics")).text
    for secret in (task["id"], task["sessionKey"], "secret-project-x", "hidden-value"):
        assert secret not in text


# -- proxy headers ---------------------------------------------------------------------------


async def test_untrusted_forwarding_headers_count_as_the_peer(make_app: Callable[..., Litestar]) -> None:
    """TRUST_PROXY_HEADERS=false: a request claiming an X-Forwarded-For is its peer's, like
    any other: the peer's IP session, never the claimed address's, never a fresh session
    per request."""
    app = make_app()
    claimed = SessionResolver(Settings(secret_key=SECRET)).key_for_ip("203.0.113.7")
    async with served(app) as client:
        keys = set()
        for _ in range(2):
            client.cookies.clear()
            response = await client.get(f"{API}/session", headers={"X-Forwarded-For": "203.0.113.7"})
            keys.add(response.json()["sessionKey"])
            assert "set-cookie" not in response.headers
        client.cookies.clear()
        plain = (await client.get(f"{API}/session")).json()["sessionKey"]
        assert claimed not in keys and keys == {plain} and plain.startswith("ip_")


async def test_an_address_a_server_put_in_from_untrusted_headers_is_one_client(
    make_app: Callable[..., Litestar],
) -> None:
    """Plain uvicorn replaces the peer with the X-Forwarded-For it believes (port 0): with
    TRUST_PROXY_HEADERS=false the app uses neither that address nor a fresh session, but
    one IP session for every such request."""
    app = make_app()
    resolver = app.plugins.get(AsyncTasksPlugin).sessions
    async with app.lifespan():
        keys = set()
        for claimed in ("203.0.113.7", "198.51.100.1"):
            transport = httpx.ASGITransport(app=cast("Any", app), client=(claimed, 0))
            async with httpx.AsyncClient(transport=transport, base_url=f"http://{TEST_HOST}") as rewritten:
                response = await rewritten.get(f"{API}/session", headers={"X-Forwarded-For": claimed})
                keys.add(response.json()["sessionKey"])
                assert resolver.key_for_ip(claimed) not in keys
        assert keys == {resolver.key_for_ip(FORWARDED_PEER)}


async def test_trusted_proxies_give_the_client_address_and_scheme(make_app: Callable[..., Litestar]) -> None:
    app = make_app(trust_proxy_headers=True, forwarded_allow_ips="10.0.0.1")
    resolver = app.plugins.get(AsyncTasksPlugin).sessions
    headers = {"X-Forwarded-For": "198.51.100.4, 10.0.0.1", "X-Forwarded-Proto": "https"}
    async with served(app, ip="10.0.0.1") as via_proxy:
        response = await via_proxy.get(f"{API}/session", headers=headers)
        assert response.json()["sessionKey"] == resolver.key_for_ip("198.51.100.4")
        issued = await via_proxy.post(f"{API}/session", headers=headers)
        assert "secure" in issued.headers["set-cookie"].lower()  # behind TLS: Secure cookies
    async with served(app, ip="192.0.2.9") as direct:  # not the proxy: its headers are ignored
        response = await direct.get(f"{API}/session", headers=headers)
        assert response.json()["sessionKey"] == resolver.key_for_ip("192.0.2.9")
        issued = await direct.post(f"{API}/session", headers=headers)
        assert "secure" not in issued.headers["set-cookie"].lower()


# -- headers --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", f"{API}/tasks", f"{API}/nope", "/dashboard/app.js"])
async def test_security_headers_on_pages_api_and_errors(session_client: httpx.AsyncClient, path: str) -> None:
    response = await session_client.get(path)
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp


async def test_the_python_client_sends_its_api_key(make_app: Callable[..., Litestar]) -> None:
    from async_tasks.client import AsyncTaskClient, TaskApiError

    app = make_app(api_keys=KEY)
    async with app.lifespan():
        transport = httpx.ASGITransport(app=cast("Any", app))
        async with AsyncTaskClient(f"http://{TEST_HOST}", transport=transport, api_key=KEY) as keyed:
            task = await keyed.demo("script", steps=0)
            done = [update async for update in keyed.watch(task["id"])]
            assert done[-1]["status"] == "completed"
        async with AsyncTaskClient(f"http://{TEST_HOST}", transport=transport) as keyless:
            with pytest.raises(TaskApiError) as refused:
                await keyless.executors()
            assert refused.value.status == 401

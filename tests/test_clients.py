"""A client is an address (issue 20): what counts as one, its budgets of new sessions,
stream tickets and streams, tickets that open one stream, shares of a full stream pool,
and streams that end with their session. (Floods: tests/battery/test_fair_shares.py.)"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

import anyio
import httpx
import pytest
from litestar import Litestar

from async_tasks.clients import LOCAL_PEER, client_address
from async_tasks.errors import QuotaExceeded
from async_tasks.settings import Settings
from async_tasks.store.base import Expiry
from async_tasks.testing import FakeClock, asgi_client, serve_in_loop
from async_tasks.web.api.streams import _unavailable
from async_tasks.web.frames import OPENED, Frame
from async_tasks.web.plugin import AsyncTasksPlugin
from async_tasks.web.sessions import SessionResolver
from async_tasks.web.stream_caps import StreamEvicted
from async_tasks.web.streams import StreamBridge
from tests.helpers import SECRET, TEST_HOST, new_address, system_of, wait_for
from tests.test_streams import bridge_of

API = "/api/v1"


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:1", "2001:db8:1:2::/64"),
        ("[2001:db8:1:2::9]", "2001:db8:1:2::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        (None, LOCAL_PEER),
        ("testclient", "testclient"),
    ],
)
def test_a_client_is_its_address_and_ipv6_its_64(host: str | None, address: str) -> None:
    assert client_address(host) == address


def test_a_client_key_hides_the_address_and_groups_a_64() -> None:
    resolver = SessionResolver(Settings(secret_key=SECRET))
    key = resolver.client_key("2001:db8:1:2::1")
    assert key.startswith("c_") and "2001" not in key
    assert key == resolver.client_key("2001:db8:1:2:ffff::7") != resolver.client_key("2001:db8:1:3::1")


async def test_a_request_without_an_address_belongs_to_one_client_not_a_fresh_session(
    make_app: Callable[..., Litestar],
) -> None:
    """A server that gives no address (a Unix socket): every such request is the local peer's,
    in one IP session, never a new session each."""
    app = make_app()
    transport = httpx.ASGITransport(app=cast("Any", app), client=cast("Any", None))
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url=f"http://{TEST_HOST}") as client:
        keys = {(await client.get(f"{API}/session")).json()["sessionKey"] for _ in range(2)}
        resolver = app.plugins.get(AsyncTasksPlugin).sessions
        assert keys == {resolver.key_for_ip(LOCAL_PEER)}


async def test_new_sessions_are_a_budget_of_the_address(make_app: Callable[..., Litestar]) -> None:
    """NEW_SESSIONS_PER_CLIENT_PER_MINUTE: then 429 with Retry-After, for that address only;
    the budget refills over the minute."""
    clock = FakeClock()
    app = make_app(clock=clock, new_sessions_per_client_per_minute=3)
    async with app.lifespan(), asgi_client(app, "192.0.2.1") as one, asgi_client(app, "192.0.2.2") as other:
        for _ in range(3):
            assert (await one.post(f"{API}/session")).status_code == 201
        refused = await one.post(f"{API}/session")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert refused.json()["error"]["details"]["setting"] == "NEW_SESSIONS_PER_CLIENT_PER_MINUTE"
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await other.post(f"{API}/session")).status_code == 201
        assert (await one.get(f"{API}/tasks")).status_code == 200  # its sessions still work
        clock.advance(20)  # a third of a minute: one more
        assert (await one.post(f"{API}/session")).status_code == 201
        assert (await one.post(f"{API}/session")).status_code == 429


async def test_without_ip_sessions_each_request_without_a_token_draws_from_the_budget(
    make_app: Callable[..., Litestar],
) -> None:
    """AUTO_MAP_SESSION_BY_IP=false: a client that never keeps its token gets a new session a
    request only while its budget lasts."""
    app = make_app(clock=FakeClock(), auto_map_session_by_ip=False, new_sessions_per_client_per_minute=2)
    async with app.lifespan(), asgi_client(app, new_address()) as client:
        for _ in range(2):
            client.cookies.clear()
            assert (await client.get(f"{API}/tasks")).status_code == 200
        client.cookies.clear()
        assert (await client.get(f"{API}/tasks")).status_code == 429
        kept = await client.post(f"{API}/session", headers={"X-Session-Token": "not a token"})
        assert kept.status_code == 429


# -- tickets ------------------------------------------------------------------------------------


async def ticket(client: httpx.AsyncClient, **headers: str) -> str:
    answer = await client.post(f"{API}/session/ticket", headers=headers)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["ticket"])


async def test_a_ticket_opens_one_stream(make_app: Callable[..., Litestar]) -> None:
    app = make_app()
    async with serve_in_loop(app) as client:
        task = (await client.post(f"{API}/tasks", json={"executor": "script", "start": True})).json()["task"]
        await wait_for(app, task["id"], "completed")  # its stream is then finite: a snapshot and the end
        issued = await ticket(client)
        first = await client.get(f"{API}/tasks/{task['id']}/events", params={"ticket": issued})
        assert first.status_code == 200 and "event: end" in first.text
        again = await client.get(f"{API}/tasks/{task['id']}/events", params={"ticket": issued})
        assert again.status_code == 401 and again.json()["error"]["code"] == "invalid_ticket"
        assert "already used" in again.json()["error"]["message"]
        fresh = await client.get(f"{API}/tasks/{task['id']}/events", params={"ticket": await ticket(client)})
        assert fresh.status_code == 200


async def test_a_ticket_is_its_sessions_from_any_address_and_counts_against_it(
    make_app: Callable[..., Litestar],
) -> None:
    """Used from another address, with X-Forwarded-For, with API keys: the stream is in the
    ticket's session (its per-session cap applies), never a fresh session."""
    app = make_app(api_keys="a-key-of-sixteen-chars", max_streams_per_session=1)
    keyed = {"X-API-Key": "a-key-of-sixteen-chars"}
    async with app.lifespan(), asgi_client(app, "192.0.2.10") as owner, asgi_client(app, "192.0.2.99") as elsewhere:
        key = (await owner.get(f"{API}/session", headers=keyed)).json()["sessionKey"]
        issued = await ticket(owner, **keyed)
        async with held_streams(bridge_of(app), key, 1):
            refused = await elsewhere.get(
                f"{API}/tasks/events", params={"ticket": issued}, headers={"X-Forwarded-For": "198.51.100.1"}
            )
        assert refused.status_code == 429 and refused.json()["error"]["details"]["setting"] == "MAX_STREAMS_PER_SESSION"


async def test_stream_tickets_are_a_budget_of_the_address(make_app: Callable[..., Litestar]) -> None:
    """As many a minute as the address may hold streams: spent tickets are remembered, so
    they are not free."""
    app = make_app(clock=FakeClock(), max_streams_per_client=2)
    async with app.lifespan(), asgi_client(app, new_address()) as client:
        await ticket(client)
        await ticket(client)
        refused = await client.post(f"{API}/session/ticket")
        assert refused.status_code == 429 and refused.json()["error"]["details"]["setting"] == "MAX_STREAMS_PER_CLIENT"


# -- streams: per client, fair shares, the end of a session --------------------------------------


@asynccontextmanager
async def held_streams(
    bridge: StreamBridge, session_key: str, count: int, client: str | None = None
) -> AsyncIterator[list[AsyncGenerator[Frame, None]]]:
    """`count` session streams of `session_key` held open (past OPENED) for `client`."""
    async with AsyncExitStack() as stack:
        streams = []
        for _ in range(count):
            stream = bridge.session_stream(session_key, client=client)
            stack.push_async_callback(stream.aclose)
            assert await anext(stream) is OPENED
            streams.append(stream)
        yield streams


async def test_an_address_holds_at_most_its_streams(make_app: Callable[..., Litestar]) -> None:
    """MAX_STREAMS_PER_CLIENT across its sessions; another address has its own."""
    app = make_app(max_streams_per_client=3)
    async with serve_in_loop(app):
        bridge = bridge_of(app)
        async with held_streams(bridge, "a", 2, client="c1"), held_streams(bridge, "b", 1, client="c1"):
            with pytest.raises(QuotaExceeded) as refused:
                await anext(bridge.session_stream("c", client="c1"))
            assert refused.value.details["setting"] == "MAX_STREAMS_PER_CLIENT"
            async with held_streams(bridge, "c", 3, client="c2"):
                pass


async def test_a_full_server_ends_the_largest_holders_oldest_stream(make_app: Callable[..., Litestar]) -> None:
    """At MAX_STREAMS, a client holding fewer gets in: the largest holder's oldest stream ends
    with `stream_evicted` (an SSE error event with a retry); the largest holder itself, or an
    equal one, is refused."""
    app = make_app(max_streams=4)
    async with serve_in_loop(app):
        bridge = bridge_of(app)
        async with held_streams(bridge, "a", 3, client="big") as big, held_streams(bridge, "b", 1, client="small"):
            async with held_streams(bridge, "c", 1, client="newcomer"):
                with anyio.fail_after(5), pytest.raises(StreamEvicted) as evicted:
                    await anext(big[0])  # (its snapshots first: none, the session is empty)
                assert bridge.open_streams == 4 and bridge.streams_evicted_total == 1
                with pytest.raises(QuotaExceeded, match="MAX_STREAMS"):
                    await anext(bridge.session_stream("a", client="big"))
                with pytest.raises(QuotaExceeded, match="MAX_STREAMS"):
                    await anext(bridge.session_stream("c", client="newcomer"))  # holds 1: nobody holds over 2
    message = _unavailable(evicted.value).decode()
    assert message.startswith("event: error\r\n") and '"code":"stream_evicted"' in message and "retry: 30000" in message


@pytest.mark.parametrize("backend", ["memory", "redis", "postgres"])
async def test_a_session_that_ends_ends_its_streams(
    make_app: Callable[..., Litestar], request: pytest.FixtureRequest, backend: str
) -> None:
    """Forgotten when idle: its streams get the removals, then end."""
    clock = FakeClock()
    settings: dict[str, Any] = {"clock": clock, "task_cleanup_interval": 86_400_000}  # expired here, not by the cleaner
    if backend == "redis":
        settings.update(task_backend=request.getfixturevalue("redis_url"),
                        redis_key_prefix=request.getfixturevalue("redis_prefix"))  # fmt: skip
    elif backend == "postgres":
        settings.update(task_backend=request.getfixturevalue("postgres_url"),
                        postgres_schema=request.getfixturevalue("postgres_schema"))  # fmt: skip
    app = make_app(**settings)
    async with serve_in_loop(app, new_address()) as client:
        task = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
        await client.post(f"{API}/tasks/{task['id']}/cancel")
        system = system_of(app)
        async with held_streams(bridge_of(app), task["sessionKey"], 1, client="c") as (stream,):
            assert (await anext(stream)).type == "snapshot"
            clock.advance(3600)
            result = await system.store.expire(Expiry(session_idle_ms=60_000))
            assert result.sessions == 1
            with anyio.fail_after(5):
                seen = [frame.type async for frame in stream if frame.type != "keep-alive"]
    assert seen == ["removed"]

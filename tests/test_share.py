"""Share links: ``POST /tasks/{id}/share`` makes a link that reads that one task, with no
session and no API key, until it expires or the task is gone (browser: tests/browser)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar

from async_tasks.testing import FakeClock, asgi_client
from tests.helpers import SECRET, build_app, new_address, tampered, wait_for

API = "/api/v1"
KEY = "a-key-of-sixteen-chars-or-more"


async def create(client: httpx.AsyncClient, **params: object) -> str:
    answer = await client.post(f"{API}/tasks", json={"executor": "script", "params": params, "start": True})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["task"]["id"])


async def share(client: httpx.AsyncClient, task_id: str) -> str:
    answer = await client.post(f"{API}/tasks/{task_id}/share")
    assert answer.status_code == 201, answer.text
    return str(answer.json()["token"])


@pytest.fixture
async def stranger(shared_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """Someone else: another address (so another session), no token."""
    async with asgi_client(shared_app, new_address()) as client:
        yield client


async def test_a_share_link_opens_its_task_for_someone_without_the_session(
    session_client: httpx.AsyncClient, stranger: httpx.AsyncClient, shared_app: Litestar
) -> None:
    """The link is a page of this server; the token reads the task (no session, params or
    history in it), resolves no session and sets no cookie."""
    task_id = await create(session_client, result={"answer": 42})
    await wait_for(shared_app, task_id, "completed")
    answer = (await session_client.post(f"{API}/tasks/{task_id}/share")).json()
    token = answer["token"]
    assert answer["url"] == f"http://localhost/share/{token}"
    assert answer["expiresAt"] > 0

    read = await stranger.get(f"{API}/shared/{token}")
    assert read.status_code == 200 and "set-cookie" not in read.headers
    task = read.json()["task"]
    assert task["id"] == task_id and task["status"] == "completed" and task["result"] == {"answer": 42}
    assert task["progress"] == 100 and task["attempts"] == 1
    assert not {"sessionKey", "params", "metadata", "history"} & set(task)
    assert read.json()["expiresAt"] == answer["expiresAt"]

    page = await stranger.get(answer["url"])
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'<meta name="share-token" content="{token}">' in page.text
    assert "set-cookie" not in page.headers

    events = await stranger.get(f"{API}/shared/{token}/events")
    assert events.status_code == 200
    assert [line for line in events.text.splitlines() if line.startswith("event:")] == [
        "event: snapshot",
        "event: end",
    ]


async def test_a_share_token_reads_nothing_else(session_client: httpx.AsyncClient, stranger: httpx.AsyncClient) -> None:
    """Not another task of the same session, not the list, not the session stream: as a
    session token, a stream ticket or a changed share token, it is refused or names
    another (empty) session."""
    shared = await create(session_client, steps=1)
    other = await create(session_client, steps=1)
    token = await share(session_client, shared)

    as_session = {"X-Session-Token": token}
    assert (await stranger.get(f"{API}/tasks/{other}", headers=as_session)).status_code == 404
    assert (await stranger.get(f"{API}/tasks/{shared}", headers=as_session)).status_code == 404
    listed = await stranger.get(f"{API}/tasks", headers=as_session)
    assert listed.json()["tasks"] == [] and listed.headers["X-Session-Token-Status"] == "invalid"
    ticketed = await stranger.get(f"{API}/tasks/events", params={"ticket": token})
    assert ticketed.status_code == 401 and ticketed.json()["error"]["code"] == "invalid_ticket"
    assert (await stranger.get(f"{API}/tasks/{other}/events", params={"ticket": token})).status_code == 401

    # The token names its task inside the signed part: naming another one breaks the signature.
    payload, _, signature = token.partition(".")
    session_key, _ = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps([session_key, other]).encode()).decode().rstrip("=")
    for bad in (f"{forged}.{signature}", tampered(token), "not-a-token"):
        refused = await stranger.get(f"{API}/shared/{bad}")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_share_link"
    # A session token or a stream ticket is no share token either.
    session_token = (await stranger.post(f"{API}/session")).json()["token"]
    ticket = (await stranger.post(f"{API}/session/ticket")).json()["ticket"]
    for other_kind in (session_token, ticket):
        assert (await stranger.get(f"{API}/shared/{other_kind}")).status_code == 401


async def test_a_share_link_dies_with_its_task(session_client: httpx.AsyncClient, shared_app: Litestar) -> None:
    task_id = await create(session_client, steps=1)
    await wait_for(shared_app, task_id, "completed")
    token = await share(session_client, task_id)
    assert (await session_client.delete(f"{API}/tasks/{task_id}")).status_code == 204
    for path in (f"{API}/shared/{token}", f"{API}/shared/{token}/events"):
        gone = await session_client.get(path)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "task_not_found"


async def test_sharing_a_task_of_another_session_is_a_404(
    session_client: httpx.AsyncClient, stranger: httpx.AsyncClient
) -> None:
    task_id = await create(session_client, steps=1)
    answer = await stranger.post(f"{API}/tasks/{task_id}/share")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "task_not_found"


async def test_a_share_link_expires() -> None:
    """SHARE_LINK_TTL seconds on the server's clock, then 401 share_link_expired."""
    clock = FakeClock()
    app = build_app(clock=clock, share_link_ttl=60)
    async with app.lifespan(), asgi_client(app, new_address()) as client:
        task_id = await create(client, steps=1)
        answer = (await client.post(f"{API}/tasks/{task_id}/share")).json()
        assert answer["expiresAt"] == (clock.now_ms() // 1000 + 60) * 1000
        clock.advance(60)
        assert (await client.get(f"{API}/shared/{answer['token']}")).status_code == 200
        clock.advance(1.5)
        expired = await client.get(f"{API}/shared/{answer['token']}")
        assert expired.status_code == 401 and expired.json()["error"]["code"] == "share_link_expired"
        assert "expired" in expired.json()["error"]["message"]
        assert (await client.get(f"{API}/shared/{answer['token']}/events")).status_code == 401


async def test_making_share_links_is_rate_limited_like_creates() -> None:
    """A bucket of its own per session, at the create rate: sharing does not eat into creating."""
    app = build_app(task_create_rate=1.0, task_create_burst=2)
    async with app.lifespan(), asgi_client(app, new_address()) as client:
        task_id = await create(client, steps=1)
        for _ in range(2):
            assert (await client.post(f"{API}/tasks/{task_id}/share")).status_code == 201
        refused = await client.post(f"{API}/tasks/{task_id}/share")
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await client.post(f"{API}/tasks", json={"executor": "script"})).status_code == 201


async def test_with_api_keys_a_share_link_needs_no_key() -> None:
    """The token is the credential of its read routes; everything else still needs a key."""
    app = build_app(api_keys=KEY, secret_key=SECRET)
    async with app.lifespan(), asgi_client(app, new_address()) as client:
        keyed = {"X-API-Key": KEY}
        created = await client.post(f"{API}/tasks", json={"executor": "script", "start": True}, headers=keyed)
        task_id = created.json()["task"]["id"]
        assert (await client.post(f"{API}/tasks/{task_id}/share")).status_code == 401
        token = (await client.post(f"{API}/tasks/{task_id}/share", headers=keyed)).json()["token"]
        assert (await client.get(f"{API}/shared/{token}")).status_code == 200
        assert (await client.get(f"/share/{token}")).status_code == 200
        assert (await client.get(f"{API}/tasks", headers={"X-Session-Token": token})).status_code == 401


async def test_viewers_never_use_up_the_owners_reads_or_streams() -> None:
    """However many open a link: their reads draw from a bucket of their own, their streams
    count against a cap of their own per session (and their own address), so the owner
    still reads and streams."""
    from async_tasks.errors import QuotaExceeded
    from async_tasks.web.frames import OPENED
    from async_tasks.web.plugin import AsyncTasksPlugin

    app = build_app(clock=FakeClock(), task_read_rate=1.0, task_read_burst=3, max_streams_per_session=1)
    bridge = app.plugins.get(AsyncTasksPlugin).streams
    async with app.lifespan(), asgi_client(app, new_address()) as owner, asgi_client(app, new_address()) as viewer:
        task_id = await create(owner, hold=True)
        token = await share(owner, task_id)
        for _ in range(3):
            assert (await viewer.get(f"{API}/shared/{token}")).status_code == 200
        assert (await viewer.get(f"{API}/shared/{token}")).status_code == 429
        assert (await owner.get(f"{API}/tasks/{task_id}")).status_code == 200
        key = (await owner.get(f"{API}/session")).json()["sessionKey"]
        watching = bridge.task_stream(key, task_id, client="viewer", shared=True)
        assert await anext(watching) is OPENED
        with pytest.raises(QuotaExceeded, match="share links"):
            await anext(bridge.task_stream(key, task_id, client="another viewer", shared=True))
        own = bridge.session_stream(key, client="owner")
        assert await anext(own) is OPENED  # the owner's own cap is untouched
        await own.aclose()
        await watching.aclose()
        await owner.post(f"{API}/tasks/{task_id}/cancel")

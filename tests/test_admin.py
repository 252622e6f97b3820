"""The admin API: every session's tasks for ADMIN_API_KEYS holders, nothing for anyone else.

What the admin sees is asked of the memory backend and of Redis (an app with an embedded
worker, on the test's own keys), as tests/execution does."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
from litestar import Litestar

from async_tasks.errors import SettingsError
from async_tasks.settings import Settings
from async_tasks.testing import asgi_client, capture_logs
from tests.helpers import new_address, wait_for

API = "/api/v1"
ADMIN_KEY = "admin-key-0123456789abcdef"
API_KEY = "api-key-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
USER = {"X-API-Key": API_KEY}


def admin_app(make_app: Callable[..., Litestar], **overrides: object) -> Litestar:
    return make_app(admin_api_keys=f"ops:{ADMIN_KEY}", api_keys=API_KEY, retry_backoff_ms=0, **overrides)


@pytest.fixture(params=["memory", "redis", "postgres"])
def on_backend(request: pytest.FixtureRequest, make_app: Callable[..., Litestar]) -> Callable[..., Litestar]:
    """`make_app` on each backend: memory, and Redis and PostgreSQL with a worker in the app's process."""
    if request.param == "memory":
        return make_app
    space: dict[str, Any] = (
        {
            "task_backend": request.getfixturevalue("redis_url"),
            "redis_key_prefix": request.getfixturevalue("redis_prefix"),
        }
        if request.param == "redis"
        else {
            "task_backend": request.getfixturevalue("postgres_url"),
            "postgres_schema": request.getfixturevalue("postgres_schema"),
        }
    )
    return functools.partial(make_app, **space, embedded_worker=True, worker_lease_ms=600)


async def test_the_admin_sees_every_session_and_a_session_only_its_own(on_backend: Callable[..., Litestar]) -> None:
    """With the key, /admin lists two sessions' tasks (with their session keys) and the
    sessions; without it, 401 in the contract's body; a session still sees only its own."""
    app = admin_app(on_backend)
    async with app.lifespan():
        async with (
            asgi_client(app, new_address()) as alice,
            asgi_client(app, new_address()) as bob,
            asgi_client(app, new_address()) as operator,
        ):
            a = (await alice.post(f"{API}/tasks", json={"executor": "script"}, headers=USER)).json()["task"]
            b = (await bob.post(f"{API}/tasks", json={"executor": "script"}, headers=USER)).json()["task"]

            listed = await operator.get(f"{API}/admin/tasks", headers=ADMIN)
            assert listed.status_code == 200
            assert {(t["id"], t["sessionKey"]) for t in listed.json()["tasks"]} == {
                (a["id"], a["sessionKey"]),
                (b["id"], b["sessionKey"]),
            }
            assert "x-session-token" not in listed.headers and "set-cookie" not in listed.headers
            only_bob = await operator.get(f"{API}/admin/tasks", params={"sessionKey": b["sessionKey"]}, headers=ADMIN)
            assert [t["id"] for t in only_bob.json()["tasks"]] == [b["id"]]
            sessions = (await operator.get(f"{API}/admin/sessions", headers=ADMIN)).json()
            assert sessions["total"] == 2
            assert {(s["sessionKey"], s["pending"]) for s in sessions["sessions"]} == {
                (a["sessionKey"], 1),
                (b["sessionKey"], 1),
            }
            found = await operator.get(f"{API}/admin/tasks/{a['id']}", headers=ADMIN)
            assert found.json()["task"]["sessionKey"] == a["sessionKey"]

            for refused in (
                await alice.get(f"{API}/admin/tasks", headers=USER),  # an API key is not an admin key
                await alice.get(f"{API}/admin/sessions"),
                await operator.get(f"{API}/admin/tasks", headers={"Authorization": "Bearer not-the-admin-key-000"}),
                await operator.post(f"{API}/admin/tasks/cancel", json={"ids": [a["id"]]}),
            ):
                assert refused.status_code == 401
                assert refused.json()["success"] is False and refused.json()["error"]["code"] == "unauthorized"
                assert "ADMIN_API_KEYS" in refused.json()["error"]["message"]

            mine = (await alice.get(f"{API}/tasks", headers=USER)).json()
            assert [t["id"] for t in mine["tasks"]] == [a["id"]] and mine["total"] == 1
            assert (await alice.get(f"{API}/tasks/{b['id']}", headers=USER)).status_code == 404
            # An admin key is no API key: it opens the admin routes only.
            assert (await operator.get(f"{API}/tasks", headers=ADMIN)).status_code == 401


async def test_bulk_retry_takes_the_dead_letter_and_names_who_did_it(on_backend: Callable[..., Litestar]) -> None:
    """POST /admin/tasks/retry {"filter": {"deadLetter": true}} runs every session's dead
    tasks again, leaves the others, and logs the key's name (never the key)."""
    app = admin_app(on_backend)
    async with app.lifespan():
        async with (
            asgi_client(app, new_address()) as alice,
            asgi_client(app, new_address()) as bob,
            asgi_client(app, new_address()) as operator,
        ):
            dead = []
            for client in (alice, bob):
                body = {"executor": "script", "params": {"failAttempts": 2}, "maxRetries": 1, "start": True}
                task = (await client.post(f"{API}/tasks", json=body, headers=USER)).json()["task"]
                dead.append(task["id"])
            done = (await alice.post(f"{API}/tasks", json={"executor": "script", "start": True}, headers=USER)).json()[
                "task"
            ]
            for task_id in dead:
                assert (await wait_for(app, task_id, "failed")).dead_lettered
            await wait_for(app, done["id"], "completed")
            letter = (await operator.get(f"{API}/admin/tasks", params={"deadLetter": "true"}, headers=ADMIN)).json()
            assert {t["id"] for t in letter["tasks"]} == set(dead)

            with capture_logs("async_tasks.admin") as logged:
                retried = await operator.post(
                    f"{API}/admin/tasks/retry", json={"filter": {"deadLetter": True}}, headers=ADMIN
                )
            assert retried.status_code == 200
            assert set(retried.json()["result"]["changed"]) == set(dead) and retried.json()["result"]["skipped"] == []
            for task_id in dead:  # the third attempt succeeds
                task = await wait_for(app, task_id, "completed")
                assert any(entry.reason == "retry requested by an administrator" for entry in task.history)
            assert [entry["message"] for entry in logged] == [
                f"Admin ops retried 2 tasks (0 skipped): {' '.join(retried.json()['result']['changed'])}"
            ]
            assert ADMIN_KEY not in str(logged)

            again = await operator.post(f"{API}/admin/tasks/retry", json={"ids": [done["id"], "nope"]}, headers=ADMIN)
            assert again.json()["result"]["changed"] == []
            assert [(s["id"], s["code"]) for s in again.json()["result"]["skipped"]] == [
                (done["id"], "invalid_transition"),
                ("nope", "task_not_found"),
            ]


async def test_bulk_cancel_by_filter_and_queue_depth(on_backend: Callable[..., Litestar]) -> None:
    """A filter cancels the matching active tasks of every session; the queues and workers
    say what waits and runs (one process: the server, or its embedded worker)."""
    app = admin_app(on_backend, max_concurrent_tasks=1)
    async with app.lifespan():
        async with asgi_client(app, new_address()) as alice, asgi_client(app, new_address()) as operator:
            holding = (
                await alice.post(f"{API}/tasks", json={"executor": "script", "params": {"hold": True}, "start": True},
                                 headers=USER)
            ).json()["task"]  # fmt: skip
            waiting = (
                await alice.post(f"{API}/tasks", json={"executor": "script", "start": True}, headers=USER)
            ).json()["task"]
            await wait_for(app, holding["id"], "running")
            queues = (await operator.get(f"{API}/admin/queues", headers=ADMIN)).json()["queues"]
            assert {"executor": "script", "running": 1, "queued": 1, "workers": 1} in queues
            assert {"executor": "sample", "running": 0, "queued": 0, "workers": 1} in queues
            workers = (await operator.get(f"{API}/admin/workers", headers=ADMIN)).json()["workers"]
            assert len(workers) == 1 and workers[0]["running"] == 1 and "script" in workers[0]["executors"]
            assert workers[0]["leaseAgeMs"] is None or 0 <= workers[0]["leaseAgeMs"] < 600

            cancelled = await operator.post(
                f"{API}/admin/tasks/cancel", json={"filter": {"executor": "script"}}, headers=ADMIN
            )
            assert set(cancelled.json()["result"]["changed"]) == {holding["id"], waiting["id"]}
            for task_id in (holding["id"], waiting["id"]):
                await wait_for(app, task_id, "cancelled")
            neither = await operator.post(f"{API}/admin/tasks/cancel", json={}, headers=ADMIN)
            assert neither.status_code == 400 and neither.json()["error"]["code"] == "invalid_params"


async def test_an_admin_offset_past_the_bound_is_a_sentence(make_app: Callable[..., Litestar]) -> None:
    """The admin lists page as GET /tasks does: an offset above a billion is a 400 that
    says so, not a 500 from the store's paging."""
    app = admin_app(make_app)
    async with app.lifespan(), asgi_client(app, new_address()) as operator:
        for path in ("tasks", "sessions"):
            refused = await operator.get(f"{API}/admin/{path}", params={"offset": str(2**63)}, headers=ADMIN)
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_params", path
            assert refused.json()["error"]["message"] == f"offset must be at most 1000000000 (got '{2**63}')."


async def test_the_admin_page_issues_no_session(make_app: Callable[..., Litestar]) -> None:
    """GET /admin answers the page (it asks for the key itself) without a session: even
    where every new caller would get one, no token or cookie comes with it."""
    app = admin_app(make_app, auto_map_session_by_ip=False)
    async with app.lifespan(), asgi_client(app, new_address()) as browser:
        page = await browser.get("/admin")
        assert page.status_code == 200 and 'id="unlock"' in page.text
        assert "x-session-token" not in page.headers and "set-cookie" not in page.headers
        dashboard = await browser.get("/")  # the dashboard, by contrast, starts a session
        assert "set-cookie" in dashboard.headers


async def test_without_admin_keys_there_is_no_admin_api(make_app: Callable[..., Litestar]) -> None:
    """The admin routes do not exist unless ADMIN_API_KEYS is set."""
    app = make_app()
    async with app.lifespan(), asgi_client(app, new_address()) as client:
        assert (await client.get(f"{API}/admin/tasks", headers=ADMIN)).status_code == 404


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("short", "needs 16"),
        (f"{ADMIN_KEY},{ADMIN_KEY}", "must differ"),
    ],
)
def test_admin_keys_are_validated(value: str, says: str) -> None:
    """A short or repeated ADMIN_API_KEYS entry stops start-up with one line."""
    with pytest.raises(SettingsError, match=says):
        Settings.from_env({"ADMIN_API_KEYS": value})


def test_an_admin_key_is_named_by_its_name_or_its_fingerprint() -> None:
    """``name:key`` logs as the name; a bare key as the start of its SHA-256, never itself."""
    keys = Settings.from_env({"ADMIN_API_KEYS": f"ops:{ADMIN_KEY}, {API_KEY}"}).admin_keys
    assert keys[ADMIN_KEY] == "ops"
    assert keys[API_KEY].startswith("key ") and len(keys[API_KEY]) == 12 and API_KEY not in keys[API_KEY]

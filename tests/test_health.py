"""Liveness (/health, /healthz) and readiness (/ready) at the app root."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from litestar import Litestar

from async_tasks.testing import asgi_client, serve_in_loop
from async_tasks.web.plugin import AsyncTasksPlugin
from tests.helpers import system_of


@pytest.mark.parametrize("path", ["/health", "/healthz"])
async def test_liveness(session_client: httpx.AsyncClient, path: str) -> None:
    """Always {"status": "ok"} while the process answers."""
    response = await session_client.get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_when_everything_runs(client: httpx.AsyncClient) -> None:
    """Runner, cleaner, event loop and task intake all report ok."""
    response = await client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready" and "failing" not in body
    assert body["checks"] == {"runner": "ok", "cleaner": "ok", "eventLoop": "ok", "accepting": "ok"}
    assert 0 <= body["loopLagMs"] < body["maxLoopLagMs"] == 500


async def test_not_ready_names_a_stopped_runner(
    client: httpx.AsyncClient, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped runner gives 503 with "runner" in `failing`."""
    with monkeypatch.context() as patch:
        patch.setattr(system_of(app).execution, "_tg", None)  # what `run` leaves when it ends
        response = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable" and body["failing"] == ["runner"]
    assert body["checks"]["runner"] == "stopped" and body["checks"]["cleaner"] == "ok"
    assert (await client.get("/health")).status_code == 200  # still alive
    assert (await client.get("/ready")).status_code == 200


async def test_not_ready_without_the_lifespan(make_app: Callable[..., Litestar]) -> None:
    """Before the app's lifespan has started nothing runs: runner and cleaner are named."""
    async with asgi_client(make_app()) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["failing"] == ["runner", "cleaner"]


async def test_not_ready_when_the_event_loop_lags(make_app: Callable[..., Litestar]) -> None:
    """A loop blocked longer than READY_MAX_LOOP_LAG_MS makes readiness fail on "eventLoop"."""
    async with serve_in_loop(make_app(ready_max_loop_lag_ms=100)) as client:
        time.sleep(0.5)  # noqa: ASYNC251 (blocking the loop past the probe's 0.37 s tick, on purpose)
        response = await client.get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["eventLoop"] and body["loopLagMs"] >= 100


async def test_not_ready_while_shutting_down(client: httpx.AsyncClient, app: Litestar) -> None:
    """Once shutdown has begun, readiness fails on "accepting" (new tasks are refused)."""
    app.plugins.get(AsyncTasksPlugin).system.request_shutdown()
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["failing"] == ["accepting"]


async def test_ops_routes_are_documented(client: httpx.AsyncClient) -> None:
    """/health, /healthz, /ready and /metrics are in the OpenAPI document, tagged "ops",
    at the app root; /ready documents its 503."""
    paths = (await client.get("/schema/openapi.json")).json()["paths"]
    for path in ("/health", "/healthz", "/ready", "/metrics"):
        (operation,) = paths[path].values()
        assert operation["tags"] == ["ops"], path
    assert "503" in paths["/ready"]["get"]["responses"]
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]
    assert "/api/v1/tasks/metrics" in paths

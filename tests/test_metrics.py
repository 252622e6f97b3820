"""Prometheus metrics (per-app registry) and the session's own figures (stats, /tasks/metrics)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import prometheus_client
import pytest
from litestar import Litestar
from prometheus_client.parser import text_string_to_metric_families

from async_tasks import cli
from async_tasks.errors import SettingsError
from async_tasks.settings import Settings
from async_tasks.testing import FakeClock, asgi_client, serve_in_loop
from async_tasks.web.metrics import opentelemetry_plugins
from async_tasks.web.plugin import AsyncTasksPlugin
from tests.helpers import ScriptExecutor, memory_store_of, wait_for
from tests.servers import free_port

API = "/api/v1"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


async def create(client: httpx.AsyncClient, start: bool = True, **params: Any) -> dict[str, Any]:
    response = await client.post(f"{API}/tasks", json={"executor": "script", "params": params, "start": start})
    assert response.status_code == 201, response.text
    return response.json()["task"]  # type: ignore[no-any-return]


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`/metrics` as {(sample name, sorted labels): value}."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_every_metric_moves_as_tasks_run(make_app: Callable[..., Litestar]) -> None:
    """Created, finished by status, durations, running/queued/sessions gauges, cleanup removals
    and request counts all move with the work done."""
    app = make_app(max_concurrent_tasks=1, max_completed_tasks=0, max_failed_tasks=0, max_cancelled_tasks=0)
    async with serve_in_loop(app) as client:
        done = await create(client, steps=1)
        await wait_for(app, done["id"], "completed")
        failed = await create(client, fail="boom")
        await wait_for(app, failed["id"], "failed")
        held = await create(client, hold=True)
        await wait_for(app, held["id"], "running")
        queued = await create(client)  # the only slot is taken by `held`
        pending = await create(client, start=False)

        before = await scrape(client)
        assert value(before, "async_tasks_tasks_created_total", executor="script") == 5
        assert value(before, "async_tasks_tasks_finished_total", executor="script", status="completed") == 1
        assert value(before, "async_tasks_tasks_finished_total", executor="script", status="failed") == 1
        assert value(before, "async_tasks_task_duration_seconds_count", executor="script") == 2
        assert value(before, "async_tasks_tasks_running") == 1
        assert value(before, "async_tasks_tasks_queued") == 1
        assert value(before, "async_tasks_sessions") == 1
        assert value(before, "async_tasks_tasks", status="pending") == 2
        assert value(before, "async_tasks_events_dropped_total") == 0

        for task in (queued, pending, held):  # the queued one first, or it takes the freed slot
            assert (await client.post(f"{API}/tasks/{task['id']}/cancel")).status_code == 200
        assert (await client.get(f"{API}/tasks/{done['id']}/status")).status_code == 200
        assert (await client.post(f"{API}/tasks/cleanup/run")).status_code == 200

        after = await scrape(client)
        assert value(after, "async_tasks_tasks_finished_total", executor="script", status="cancelled") == 3
        assert value(after, "async_tasks_task_duration_seconds_count", executor="script") == 3
        assert value(after, "async_tasks_tasks_running") == 0
        assert value(after, "async_tasks_tasks_queued") == 0
        assert value(after, "async_tasks_sessions") == 0  # retention 0 removed every finished task
        for reason, count in (("completed", 1), ("failed", 1), ("cancelled", 3)):
            assert value(after, "async_tasks_cleanup_removed_total", reason=reason) == count
        requests: dict[str, float] = {}
        for (name, labels), seen in after.items():
            if name == "async_tasks_http_requests_total":
                path = dict(labels)["path"]
                requests[path] = requests.get(path, 0) + seen
        assert requests["/api/v1/tasks"] == 5
        assert requests["/api/v1/tasks/{task_id}/status"] == 1
        assert requests["/api/v1/tasks/{task_id}/cancel"] == 3
        assert "/metrics" not in requests  # scrapes and probes are not counted


async def test_events_dropped_is_read_from_the_streams_bridge(make_app: Callable[..., Litestar]) -> None:
    """The push-stream bridge's `events_dropped_total` is read at scrape time (0 without one)."""
    app = make_app()
    async with serve_in_loop(app) as client:
        assert value(await scrape(client), "async_tasks_events_dropped_total") == 0
        app.plugins.get(AsyncTasksPlugin).streams.events_dropped_total = 7
        assert value(await scrape(client), "async_tasks_events_dropped_total") == 7


async def test_no_label_carries_a_session_key_or_task_id(make_app: Callable[..., Litestar]) -> None:
    """Labels are bounded: executor, status, reason, method, route template; never ids or keys."""
    app = make_app()
    async with serve_in_loop(app) as client:
        tasks = [await create(client, steps=1) for _ in range(3)]
        for task in tasks:
            await wait_for(app, task["id"], "completed")
            await client.get(f"{API}/tasks/{task['id']}")
        await client.get(f"{API}/tasks/{tasks[0]['id']}/nope")  # 404: not even a template
        await client.post(f"{API}/tasks/cleanup/run")
        response = await client.get("/metrics")
    secrets = {tasks[0]["sessionKey"], *(task["id"] for task in tasks)}
    label_values = [
        label
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        for label in sample.labels.values()
    ]
    assert label_values
    for label in label_values:
        assert not UUID.search(label), label
        assert not any(secret in label for secret in secrets), label
    assert tasks[0]["sessionKey"] not in response.text


async def test_each_app_has_its_own_registry(make_app: Callable[..., Litestar]) -> None:
    """Two apps in one process count separately, and nothing lands in the global registry."""
    first, second = make_app(), make_app()
    async with serve_in_loop(first) as one, serve_in_loop(second) as two:
        task = await create(one, steps=0)
        await wait_for(first, task["id"], "completed")
        a, b = await scrape(one), await scrape(two)
    assert value(a, "async_tasks_tasks_created_total", executor="script") == 1
    assert value(b, "async_tasks_tasks_created_total", executor="script") == 0
    assert any(name == "async_tasks_http_requests_total" for name, _ in a)
    assert not any(
        name == "async_tasks_http_requests_total" and dict(labels)["path"] == "/api/v1/tasks" for (name, labels) in b
    )
    global_names = {metric.name for metric in prometheus_client.REGISTRY.collect()}
    assert not any(name.startswith("async_tasks") for name in global_names)


async def test_metrics_can_be_switched_off(make_app: Callable[..., Litestar]) -> None:
    """METRICS_ENABLED=false: no /metrics route and no request instrumentation."""
    async with serve_in_loop(make_app(metrics_enabled=False)) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get(f"{API}/tasks/stats")).status_code == 200


async def test_scrapes_and_probes_get_no_session(client: httpx.AsyncClient) -> None:
    """Ops routes skip session resolution: no cookie is issued to a scraper."""
    for path in ("/metrics", "/health", "/ready"):
        response = await client.get(path, headers={"X-Forwarded-For": "203.0.113.9"})
        assert "set-cookie" not in response.headers, path


async def test_session_figures_in_stats_and_task_processor_shape(make_app: Callable[..., Litestar]) -> None:
    """stats.averageDurationMs and GET /tasks/metrics ({totalTasks, completedTasks,
    averageProcessingTimeMs}) come from the session's completed tasks, kept in O(1)."""
    clock = FakeClock()
    app = make_app(clock=clock, max_completed_tasks=2)
    async with serve_in_loop(app) as client:
        empty = (await client.get(f"{API}/tasks/metrics")).json()
        assert empty == {"success": True, "totalTasks": 0, "completedTasks": 0, "averageProcessingTimeMs": 0.0}
        durations = [0.1, 0.3]
        for seconds in durations:
            task = await create(client, hold=True)
            await wait_for(app, task["id"], "running")
            clock.advance(seconds)
            ScriptExecutor.release(task["id"])
            await wait_for(app, task["id"], "completed")
        await create(client, start=False)

        stats = (await client.get(f"{API}/tasks/stats")).json()["stats"]
        assert stats["completed"] == 2 and stats["averageDurationMs"] == 200.0
        metrics = (await client.get(f"{API}/tasks/metrics")).json()
        assert metrics == {"success": True, "totalTasks": 3, "completedTasks": 2, "averageProcessingTimeMs": 200.0}

        # A third completed task makes retention remove the oldest: the figures follow
        # what the session holds.
        task = await create(client, hold=True)
        await wait_for(app, task["id"], "running")
        clock.advance(0.5)
        ScriptExecutor.release(task["id"])
        await wait_for(app, task["id"], "completed")
        metrics = (await client.get(f"{API}/tasks/metrics")).json()
        assert metrics == {"success": True, "totalTasks": 3, "completedTasks": 2, "averageProcessingTimeMs": 400.0}
        (session,) = memory_store_of(app).sessions.values()
        assert session.duration_total_ms == 800


def _otel_installed() -> bool:
    """Whether the `otel` extra is complete (another package may bring opentelemetry-api alone)."""
    try:
        import litestar.plugins.opentelemetry  # noqa: F401
    except ImportError:
        return False
    return True


OTEL_INSTALLED = _otel_installed()


def test_opentelemetry_is_off_by_default() -> None:
    """OTEL_ENABLED defaults to false: no OpenTelemetry plugin."""
    settings = Settings.from_env({})
    assert settings.otel_enabled is False
    assert opentelemetry_plugins(settings) == []


@pytest.mark.skipif(OTEL_INSTALLED, reason="the otel extra is installed")
def test_opentelemetry_enabled_but_missing_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """OTEL_ENABLED=true without the `otel` extra: one line naming OTEL_ENABLED, exit status 2."""
    settings = Settings.from_env({"OTEL_ENABLED": "true"})
    with pytest.raises(SettingsError, match="OTEL_ENABLED"):
        opentelemetry_plugins(settings)
    monkeypatch.setenv("OTEL_ENABLED", "true")
    monkeypatch.setenv("SECRET_KEY", "0123456789abcdef0123")
    assert cli.main(["serve", "--port", str(free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("async-tasks: ") and "OTEL_ENABLED" in err


@pytest.mark.skipif(not OTEL_INSTALLED, reason="needs the otel extra")
def test_opentelemetry_plugin_is_added_when_enabled() -> None:
    from litestar.plugins.opentelemetry import OpenTelemetryPlugin

    (plugin,) = opentelemetry_plugins(Settings.from_env({"OTEL_ENABLED": "true"}))
    assert isinstance(plugin, OpenTelemetryPlugin)


async def test_tasks_and_attempts_are_counted_apart(make_app: Callable[..., Litestar]) -> None:
    """Automatic retries add attempts, not finished tasks: finished <= created + retries by hand."""
    app = make_app(retry_backoff_ms=0)
    async with serve_in_loop(app) as client:
        response = await client.post(
            f"{API}/tasks",
            json={"executor": "script", "params": {"failAttempts": 2}, "maxRetries": 2, "start": True},
        )
        flaky = response.json()["task"]
        await wait_for(app, flaky["id"], "completed")
        failed = await create(client, fail="boom")
        await wait_for(app, failed["id"], "failed")
        assert (await client.post(f"{API}/tasks/{failed['id']}/retry")).status_code == 200
        await wait_for(app, failed["id"], "failed")

        samples = await scrape(client)
        created = value(samples, "async_tasks_tasks_created_total", executor="script")
        finished = {
            status: value(samples, "async_tasks_tasks_finished_total", executor="script", status=status)
            for status in ("completed", "failed", "cancelled")
        }
        attempts = {
            outcome: value(samples, "async_tasks_task_attempts_total", executor="script", outcome=outcome)
            for outcome in ("completed", "failed", "cancelled")
        }
        retries = {
            kind: value(samples, "async_tasks_task_retries_total", executor="script", kind=kind)
            for kind in ("automatic", "manual")
        }
        assert created == 2
        assert finished == {"completed": 1, "failed": 2, "cancelled": 0}  # the failed one settled twice
        assert attempts == {"completed": 1, "failed": 4, "cancelled": 0}  # 2 automatic retries, 2 failures
        assert retries == {"automatic": 2, "manual": 1}
        assert sum(finished.values()) <= created + retries["manual"]
        assert sum(attempts.values()) == created + retries["automatic"] + retries["manual"]


async def test_room_made_for_another_address_is_counted(make_app: Callable[..., Litestar]) -> None:
    """A task removed to make room in a full pool, and the bridge's evicted streams, show up."""
    app = make_app(max_tasks=2)
    async with serve_in_loop(app, "192.0.2.1") as big, asgi_client(app, "192.0.2.2") as newcomer:
        for _ in range(2):
            assert (await big.post(f"{API}/tasks", json={"executor": "script"})).status_code == 201
        assert value(await scrape(big), "async_tasks_tasks_evicted_total") == 0
        assert (await newcomer.post(f"{API}/tasks", json={"executor": "script"})).status_code == 201
        app.plugins.get(AsyncTasksPlugin).streams.streams_evicted_total = 3
        scraped = await scrape(big)
        assert value(scraped, "async_tasks_tasks_evicted_total") == 1
        assert value(scraped, "async_tasks_streams_evicted_total") == 3

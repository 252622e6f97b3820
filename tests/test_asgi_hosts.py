"""The task system inside other ASGI frameworks (`async_tasks.web.asgi`): mounted in a
FastAPI app under a path, and wrapped around a plain ASGI app (as Django's is), each on
a real uvicorn server with its lifespan."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from async_tasks.settings import Settings
from async_tasks.web.asgi import TasksApp
from tests.helpers import SECRET, TEST_EXECUTORS, ScriptExecutor
from tests.live import serve_in_thread

pytestmark = pytest.mark.e2e

API_KEY = "host-api-key-0123456789abcdef"
API = "/tasks/api/v1"


def tasks_app() -> TasksApp:
    settings = Settings(secret_key=SECRET, task_create_rate=0.0, api_keys=API_KEY, shutdown_grace_ms=1000)
    return TasksApp(TEST_EXECUTORS, settings=settings, environ={}, load_entry_points=False)


def fastapi_app(tasks: TasksApp) -> FastAPI:
    """The guide's FastAPI example: the engine's lifespan, the app mounted at /tasks, and a
    route of the host's own that creates a task."""
    app = FastAPI(lifespan=tasks.lifespan)
    app.mount("/tasks", tasks)

    @app.post("/reports")
    async def start_report(request: Request) -> dict[str, Any]:
        task = await tasks.task_system.create_task("reports", executor="script", params={"steps": 1})
        return {"taskId": task.id}

    return app


@pytest.fixture(scope="module")
def fastapi_server() -> Iterator[str]:
    with serve_in_thread(fastapi_app(tasks_app())) as url:
        yield url


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) of each message of a Server-Sent Events response."""
    event = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            yield event, json.loads(line[len("data: ") :])


def test_fastapi_hosts_the_api_under_a_path_create_stream_cancel(fastapi_server: str) -> None:
    """Under FastAPI's /tasks: a task is created, its SSE stream follows it running, a
    cancel ends it, and the stream says so; the API key and the host's routes still hold."""
    headers = {"X-API-Key": API_KEY}
    with httpx.Client(base_url=fastapi_server, headers=headers, timeout=10) as http:
        created = http.post(f"{API}/tasks", json={"executor": "script", "params": {"hold": True}, "start": True})
        assert created.status_code == 201, created.text
        task_id = created.json()["task"]["id"]
        seen = []
        with http.stream("GET", f"{API}/tasks/{task_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for event, data in sse_events(stream):
                seen.append((event, data.get("status") or data.get("reason")))
                if data.get("status") == "running" and data.get("progress", 0) >= 90:  # holding: cancel it
                    cancelled = http.post(f"{API}/tasks/{task_id}/cancel")
                    assert cancelled.status_code == 200 and cancelled.json()["task"]["status"] == "cancelled"
                if event == "end":
                    break
        ScriptExecutor.release(task_id)
        assert ("transition", "cancelled") in seen and seen[-1] == ("end", "cancelled")

        refused = httpx.get(f"{fastapi_server}{API}/tasks")  # no API key: the boundary holds under the mount
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"

        page = http.get("/tasks/")  # the dashboard's links carry the mount
        assert 'content="/tasks/api/v1"' in page.text and "/tasks/dashboard/main.js" in page.text
        executors = http.get(f"{API}/executors").json()["executors"]
        assert {e["demoPath"] for e in executors} >= {f"{API}/demo/tasks/script"}

        report = http.post("/reports")  # the host's own route, creating a task through the engine
        assert report.status_code == 200 and "taskId" in report.json()


def test_fastapi_share_links_point_under_the_mount(fastapi_server: str) -> None:
    """A share link made under FastAPI's /tasks opens a page there whose script and style
    load from the mount, and the task it names reads without the session or API key."""
    with httpx.Client(base_url=fastapi_server, headers={"X-API-Key": API_KEY}, timeout=10) as http:
        created = http.post(f"{API}/tasks", json={"executor": "script", "params": {"steps": 1}})
        assert created.status_code == 201, created.text
        task_id = created.json()["task"]["id"]
        shared = http.post(f"{API}/tasks/{task_id}/share")
        assert shared.status_code == 201, shared.text
        link, token = shared.json()["url"], shared.json()["token"]
    assert link == f"{fastapi_server}/tasks/share/{token}"
    with httpx.Client(base_url=fastapi_server, timeout=10) as stranger:  # no key, no session
        page = stranger.get(link)
        assert page.status_code == 200 and 'content="/tasks/api/v1"' in page.text
        for asset in ("/tasks/kit/share.js", "/tasks/kit/share.css"):
            assert asset in page.text
            assert stranger.get(asset).status_code == 200, asset
        task = stranger.get(f"{API}/shared/{token}")
        assert task.status_code == 200 and task.json()["task"]["id"] == task_id


async def plain_host(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app that knows nothing of lifespans (Django's ASGI handler refuses them)."""
    if scope["type"] != "http":
        raise ValueError(f"only HTTP, not {scope['type']}")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"host page"})


def test_around_serves_a_host_without_mount_or_lifespan() -> None:
    """`tasks.around(host, path=...)`: the task system under the path (its engine started by
    the server's lifespan), everything else to the host, which never sees a lifespan."""
    tasks = tasks_app()
    with serve_in_thread(tasks.around(plain_host, path="/tasks")) as url:
        with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=10) as http:
            assert http.get("/anything").text == "host page"
            created = http.post(f"{API}/tasks", json={"executor": "script", "start": True})
            assert created.status_code == 201, created.text
            task_id = created.json()["task"]["id"]
            with http.stream("GET", f"{API}/tasks/{task_id}/events") as stream:
                last = list(sse_events(stream))[-1]
            assert last == ("end", {"type": "end", "taskId": task_id, "reason": "completed"})

"""Request ids: accepted or generated, echoed on every response, recorded on the task
and carried by every log line of the request and of the task it created.

The tests share one app (`shared_app`), each with a session of its own.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import httpx
import pytest
from litestar import Litestar

from async_tasks.context import request_id_var, task_id_var
from async_tasks.logs import ContextFilter
from tests.helpers import ScriptExecutor, wait_for

API = "/api/v1"
GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture
def app(shared_app: Litestar) -> Litestar:
    return shared_app


@pytest.fixture
def client(session_client: httpx.AsyncClient) -> httpx.AsyncClient:
    return session_client


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(ContextFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def about(self, task_id: str) -> list[logging.LogRecord]:
        return [r for r in self.records if getattr(r, "task_id", None) == task_id]


@pytest.fixture
def logs(app: Litestar) -> Iterator[Capture]:
    """The `async_tasks` log records of the test (added after the app configured logging)."""
    handler = Capture()
    logger = logging.getLogger("async_tasks")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_a_valid_request_id_is_echoed_and_recorded_on_the_task(
    client: httpx.AsyncClient, app: Litestar, logs: Capture
) -> None:
    """The client's X-Request-ID comes back, is stored on the task it creates, and tags
    every log line of that task (with its id, session and executor)."""
    response = await client.post(
        f"{API}/tasks",
        json={"executor": "script", "start": True, "params": {"steps": 2}},
        headers={"X-Request-ID": "demo-42:a.b_c"},
    )
    assert response.status_code == 201
    assert response.headers["x-request-id"] == "demo-42:a.b_c"
    task = response.json()["task"]
    assert task["requestId"] == "demo-42:a.b_c"
    await wait_for(app, task["id"], "completed")

    lines = logs.about(task["id"])
    messages = [r.getMessage() for r in lines]
    assert any(m.startswith(f"Starting execution of task {task['id']}") for m in messages)
    assert any(m.startswith(f"Completed execution of task {task['id']}") for m in messages)
    for record in lines:
        assert record.request_id == "demo-42:a.b_c"  # type: ignore[attr-defined]
        assert record.session_key == task["sessionKey"]  # type: ignore[attr-defined]
        assert record.executor == "script"  # type: ignore[attr-defined]
    assert request_id_var.get() is None and task_id_var.get() is None  # nothing leaks out of the request


async def test_a_task_keeps_its_creators_request_id_when_started_later(
    client: httpx.AsyncClient, app: Litestar, logs: Capture
) -> None:
    """Started (and cancelled) by other requests, the task's own lines carry the creating
    request's id; the cancel line, logged by the cancel request, carries that request's id."""
    create = await client.post(
        f"{API}/tasks",
        json={"executor": "script", "params": {"hold": True, "steps": 1}},
        headers={"X-Request-ID": "create-1"},
    )
    task_id = create.json()["task"]["id"]
    started = await client.post(f"{API}/tasks/{task_id}/start", headers={"X-Request-ID": "start-2"})
    assert started.headers["x-request-id"] == "start-2"
    await wait_for(app, task_id, progress=90)  # the executor is running and holds
    await client.post(f"{API}/tasks/{task_id}/cancel", headers={"X-Request-ID": "cancel-3"})
    await wait_for(app, task_id, "cancelled")
    ScriptExecutor.release(task_id)

    by_message = {r.getMessage().split(" of task")[0]: r for r in logs.about(task_id)}
    assert by_message["Starting execution"].request_id == "create-1"  # type: ignore[attr-defined]
    assert by_message["Cancelled execution"].request_id == "cancel-3"  # type: ignore[attr-defined]
    assert by_message["Cancelled execution"].status == "cancelled"  # type: ignore[attr-defined]
    assert by_message["Cancelled execution"].reason == "cancelled by request"  # type: ignore[attr-defined]


async def test_an_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    """Without X-Request-ID each response carries a fresh uuid4 hex."""
    first = (await client.get(f"{API}/tasks")).headers["x-request-id"]
    second = (await client.get(f"{API}/tasks")).headers["x-request-id"]
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second) and first != second


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "semi;colon", "a/b", "<script>", "naïve"])
async def test_an_invalid_id_is_replaced(client: httpx.AsyncClient, bad: str) -> None:
    """Anything but 1-128 characters of [A-Za-z0-9._:-] is replaced by a generated id."""
    response = await client.post(
        f"{API}/tasks", json={"executor": "script", "start": False}, headers=[(b"X-Request-ID", bad.encode())]
    )
    assert response.status_code == 201
    echoed = response.headers["x-request-id"]
    assert GENERATED.fullmatch(echoed)
    assert response.json()["task"]["requestId"] == echoed


async def test_the_longest_valid_id_is_kept(client: httpx.AsyncClient) -> None:
    """128 characters are accepted as sent."""
    request_id = "A1._:-" * 21 + "zz"
    assert len(request_id) == 128
    response = await client.get(f"{API}/tasks", headers={"X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/no/such/route", 404),  # unmatched: app middleware does not run
        ("PUT", f"{API}/tasks/stats", 405),
        ("GET", f"{API}/tasks/00000000-0000-4000-8000-000000000000", 404),  # domain error
        ("POST", f"{API}/tasks", 400),  # validation error
        ("GET", "/health", 200),
        ("GET", "/metrics", 200),
    ],
)
async def test_every_response_echoes_the_id(client: httpx.AsyncClient, method: str, path: str, status: int) -> None:
    """Errors and ops routes included."""
    response = await client.request(method, path, headers={"X-Request-ID": "trace-7"}, json={})
    assert response.status_code == status
    assert response.headers.get_list("x-request-id") == ["trace-7"]
    generated = await client.request(method, path, json={})
    assert GENERATED.fullmatch(generated.headers["x-request-id"])

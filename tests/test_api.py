"""The HTTP contract: every endpoint's shape and every client mistake's error body.

The tests share one app (`shared_app`), each with a session of its own: what they
check is a request, its answer and the session's own tasks. Tests of a setting
build their own app.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from litestar import Litestar

from tests.helpers import ScriptExecutor, wait_for

API = "/api/v1"


@pytest.fixture
def app(shared_app: Litestar) -> Litestar:
    return shared_app


@pytest.fixture
def client(session_client: httpx.AsyncClient) -> httpx.AsyncClient:
    return session_client


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text
    return body  # type: ignore[no-any-return]


async def test_create_is_pending_unless_started(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{API}/tasks", json={"executor": "script", "name": "Mine", "tags": ["a"]})
    assert response.status_code == 201
    body = response.json()
    assert body["success"] is True
    task = body["task"]
    assert (task["status"], task["progress"], task["name"], task["tags"], task["attempts"]) == (
        "pending",
        0,
        "Mine",
        ["a"],
        0,
    )
    assert task["params"] == {"steps": 3, "hold": False, "fail": None, "failAttempts": 0, "result": None}
    full_fields = {
        "id",
        "name",
        "executor",
        "status",
        "progress",
        "createdAt",
        "completedAt",
        "description",
        "params",
        "metadata",
        "tags",
        "currentStep",
        "currentStepDescription",
        "result",
        "error",
        "attempts",
        "sessionKey",
        "startedAt",
        "updatedAt",
        "history",
    }
    assert full_fields <= set(task)


async def test_start_then_status_has_the_seed_shape(client: httpx.AsyncClient, app: Litestar) -> None:
    task = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
    started = await client.post(f"{API}/tasks/{task['id']}/start")
    assert started.status_code == 200 and started.json()["task"]["status"] in ("running", "completed")
    await wait_for(app, task["id"], "completed")
    status = (await client.get(f"{API}/tasks/{task['id']}/status")).json()
    assert list(status) == [
        "success",
        "status",
        "progress",
        "currentStep",
        "currentStepDescription",
        "startedAt",
        "completedAt",
        "error",
    ]
    assert status["status"] == "completed" and status["progress"] == 100 and status["error"] is None


async def test_get_task_includes_history(client: httpx.AsyncClient) -> None:
    task = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
    body = (await client.get(f"{API}/tasks/{task['id']}")).json()
    assert body["task"]["history"][0]["status"] == "pending"


async def test_list_filters_and_pages(client: httpx.AsyncClient, app: Litestar) -> None:
    ids = []
    for i in range(5):
        body = {"executor": "script", "start": i < 2, "tags": ["even"] if i % 2 == 0 else []}
        ids.append((await client.post(f"{API}/tasks", json=body)).json()["task"]["id"])
    for task_id in ids[:2]:
        await wait_for(app, task_id, "completed")
    listing = (await client.get(f"{API}/tasks")).json()
    assert [t["id"] for t in listing["tasks"]] == ids[::-1]  # newest first
    assert listing["count"] == listing["total"] == 5
    assert set(listing["tasks"][0]) >= {"id", "name", "executor", "status", "progress", "createdAt", "completedAt"}
    completed = (await client.get(f"{API}/tasks", params={"status": "completed"})).json()
    assert sorted(t["id"] for t in completed["tasks"]) == sorted(ids[:2])
    tagged = (await client.get(f"{API}/tasks", params={"tag": "even"})).json()
    assert sorted(t["id"] for t in tagged["tasks"]) == sorted([ids[0], ids[2], ids[4]])
    page = (await client.get(f"{API}/tasks", params={"limit": 2, "offset": 1})).json()
    assert [t["id"] for t in page["tasks"]] == [ids[3], ids[2]] and page["count"] == 2 and page["total"] == 5
    by_executor = (await client.get(f"{API}/tasks", params={"executor": "blocking"})).json()
    assert by_executor["tasks"] == [] and by_executor["total"] == 0


async def test_a_list_item_carries_what_a_card_shows(client: httpx.AsyncClient, app: Litestar) -> None:
    """The contract's summary fields first, then the step description, the error, attempts and
    the retry state: a page polling the list needs no request per task."""
    body = {"executor": "script", "start": True, "params": {"fail": "out of paper"}, "maxRetries": 0}
    task_id = (await client.post(f"{API}/tasks", json=body)).json()["task"]["id"]
    await wait_for(app, task_id, "failed")
    (item,) = (await client.get(f"{API}/tasks")).json()["tasks"]
    assert list(item)[:7] == ["id", "name", "executor", "status", "progress", "createdAt", "completedAt"]
    whole = (await client.get(f"{API}/tasks/{task_id}")).json()["task"]
    for field in ("currentStep", "currentStepDescription", "error", "attempts", "startedAt", "updatedAt",
                  "maxRetries", "autoRetries", "deadLettered"):  # fmt: skip
        assert item[field] == whole[field], field
    assert item["error"] and "out of paper" in item["error"] and item["attempts"] == 1


def test_a_summary_takes_each_field_from_its_task() -> None:
    """Each summary field holds its task's field of that name (the summary is built by position)."""
    import msgspec

    from async_tasks.estimates import Estimate
    from async_tasks.outlook import Outlook
    from async_tasks.task import Task, TaskStatus
    from async_tasks.task_log import LogLine
    from async_tasks.web.api.schemas import TaskSummary

    logs = [LogLine(n=n, at=n, message=f"line {n}") for n in range(1, 6)]
    task = Task(
        id="t", session_key="s", executor="script", name="Script", params=None, status=TaskStatus.FAILED,
        progress=42, current_step="Step", current_step_description="Doing", error="Boom", attempts=3,
        max_retries=4, auto_retries=2, dead_lettered=True, created_at=1, updated_at=5, started_at=2, completed_at=4,
        scheduled_at=7, waiting_reason="why", logs=logs,
    )  # fmt: skip
    outlook = Outlook(queue_position=9, eta=Estimate(starts_in_ms=10, finishes_in_ms=20))
    summary = TaskSummary.of(task, outlook)
    for field in msgspec.structs.fields(TaskSummary):
        value = getattr(summary, field.name)
        if field.name == "logs":
            assert value == logs[-3:]
        elif field.name in ("queue_position", "eta"):
            assert value == getattr(outlook, field.name)
        else:
            assert value == getattr(task, field.name), field.name


async def test_stats_count_by_status(client: httpx.AsyncClient, app: Litestar) -> None:
    done = (await client.post(f"{API}/tasks", json={"executor": "script", "start": True})).json()["task"]
    await wait_for(app, done["id"], "completed")
    pending = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
    await client.post(f"{API}/tasks/{pending['id']}/cancel")
    await client.post(f"{API}/tasks", json={"executor": "script"})
    stats = (await client.get(f"{API}/tasks/stats")).json()["stats"]
    assert {k: stats[k] for k in ("total", "pending", "running", "completed", "failed", "cancelled")} == {
        "total": 3,
        "pending": 1,
        "running": 0,
        "completed": 1,
        "failed": 0,
        "cancelled": 1,
    }


async def test_delete(client: httpx.AsyncClient, app: Litestar) -> None:
    running = (
        await client.post(f"{API}/tasks", json={"executor": "script", "start": True, "params": {"hold": True}})
    ).json()["task"]
    assert_error(await client.delete(f"{API}/tasks/{running['id']}"), 409, "invalid_transition")
    await client.post(f"{API}/tasks/{running['id']}/cancel")
    assert (await client.delete(f"{API}/tasks/{running['id']}")).status_code == 204
    assert_error(await client.get(f"{API}/tasks/{running['id']}"), 404, "task_not_found")
    pending = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
    assert (await client.delete(f"{API}/tasks/{pending['id']}")).status_code == 204
    assert (await client.get(f"{API}/tasks/stats")).json()["stats"]["total"] == 0
    ScriptExecutor.release(running["id"])


async def test_demo_endpoint_matches_the_seed(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{API}/demo/tasks/sample", json={"delayMs": 0, "description": "My first"})
    assert response.status_code == 201
    body = response.json()
    assert list(body) == ["success", "message", "task", "note"]
    assert body["message"] == "Sample Long-Running Task created and started"
    assert set(body["task"]) == {"id", "name", "status", "progress", "sessionKey"}
    assert body["task"]["sessionKey"].startswith("ip_")


async def test_generic_demo_route_runs_any_executor(client: httpx.AsyncClient, app: Litestar) -> None:
    response = await client.post(f"{API}/demo/tasks/script", json={"steps": 1, "priority": 3})
    assert response.status_code == 201
    task = await wait_for(app, response.json()["task"]["id"], "completed")
    assert task.priority == 3 and task.params.steps == 1


async def test_executors_are_listed_with_schemas(client: httpx.AsyncClient) -> None:
    body = (await client.get(f"{API}/executors")).json()
    by_name = {e["name"]: e for e in body["executors"]}
    assert {"sample", "file-processing", "api-call", "batch", "script", "blocking"} <= set(by_name)
    script = by_name["script"]
    assert script["title"] == "Scripted Task" and script["demoPath"] == "/api/v1/demo/tasks/script"
    assert [s["name"] for s in script["steps"]] == ["Warming Up", "Working"]
    assert "steps" in script["paramsSchema"]["$defs"]["ScriptParams"]["properties"]
    assert by_name["blocking"]["blocking"] is True


async def test_openapi_documents_each_executor_params(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/api/v1/demo/tasks/sample" in schema["paths"]
    components = schema["components"]["schemas"]
    sample = next(v for k, v in components.items() if k.endswith("SampleDemoRequest"))
    assert "delayMs" in sample["properties"] and "description" in sample["properties"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/tasks", b"{not json", 400, "malformed_json"),
        ("POST", "/tasks", {"executor": 5}, 400, "invalid_params"),
        ("POST", "/tasks", {"executor": "script", "bogus": 1}, 400, "invalid_params"),
        ("POST", "/tasks", {}, 400, "invalid_params"),
        ("POST", "/tasks", {"executor": "nope"}, 400, "unknown_executor"),
        ("POST", "/tasks", {"executor": "script", "params": {"steps": "many"}}, 400, "invalid_params"),
        ("POST", "/tasks", {"executor": "script", "params": {"steps": 101}}, 400, "invalid_params"),
        ("POST", "/tasks", {"executor": "script", "params": {"unknown": 1}}, 400, "invalid_params"),
        ("POST", "/tasks", {"executor": "script", "priority": 10**6}, 400, "invalid_params"),
        ("POST", "/tasks", {"executor": "script", "timeoutMs": 0}, 400, "invalid_params"),
        ("POST", "/tasks", {"executor": "script", "timeoutMs": 86_400_000}, 400, "invalid_params"),
        ("POST", "/tasks", {"executor": "script", "maxRetries": 11}, 400, "invalid_params"),
        ("POST", "/tasks", {"executor": "script", "tags": ["x" * 65]}, 400, "invalid_params"),
        ("POST", "/demo/tasks/sample", {"delayMs": -1}, 400, "invalid_params"),
        ("POST", "/demo/tasks/sample", {"delayMs": 10**9}, 400, "invalid_params"),
        ("POST", "/demo/tasks/sample", {"delayMs": "soon"}, 400, "invalid_params"),
        ("POST", "/demo/tasks/sample", {"colour": "red"}, 400, "invalid_params"),
        ("POST", "/demo/tasks/sample", [1, 2], 400, "invalid_params"),
        ("POST", "/demo/tasks/nope", {}, 404, "unknown_executor"),
        ("POST", "/demo/tasks/script", {"priority": "high"}, 400, "invalid_params"),
        ("GET", "/tasks?status=sleeping", None, 400, "invalid_params"),
        ("GET", "/tasks?limit=0", None, 400, "invalid_params"),
        ("GET", "/tasks?offset=-1", None, 400, "invalid_params"),
        ("GET", "/tasks/does-not-exist", None, 404, "task_not_found"),
        ("GET", "/tasks/does-not-exist/status", None, 404, "task_not_found"),
        ("POST", "/tasks/does-not-exist/start", None, 404, "task_not_found"),
        ("POST", "/tasks/does-not-exist/cancel", None, 404, "task_not_found"),
        ("POST", "/tasks/does-not-exist/retry", None, 404, "task_not_found"),
        ("DELETE", "/tasks/does-not-exist", None, 404, "task_not_found"),
        ("GET", "/nowhere", None, 404, "not_found"),
        ("PUT", "/tasks", None, 405, "method_not_allowed"),
    ],
)
async def test_client_mistakes_get_the_error_body(
    client: httpx.AsyncClient, method: str, path: str, body: Any, status: int, code: str
) -> None:
    kwargs: dict[str, Any] = {}
    if isinstance(body, bytes):
        kwargs = {"content": body, "headers": {"content-type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    assert_error(await client.request(method, f"{API}{path}", **kwargs), status, code)


@pytest.mark.parametrize(
    ("method", "path", "body", "key", "message"),
    [
        ("POST", "/demo/tasks/sample", {"delayMs": 999_999}, "delayMs", "delayMs must be at most 120000."),
        ("POST", "/demo/tasks/sample", {"delayMs": "soon"}, "delayMs", "delayMs must be an integer (got a string)."),
        ("POST", "/demo/tasks/sample", {"title": "x"}, "title", "The request body has no field 'title'; the fields"),
        ("POST", "/tasks", {}, "executor", "executor is required."),
        ("POST", "/tasks", {"executor": "script", "tags": ["x" * 65]}, "tags[0]", "tags[0] must be at most 64 char"),
        ("POST", "/tasks", {"executor": "script", "params": {"steps": 101}}, "params.steps", "params.steps must be at"),
        ("POST", "/tasks", {"executor": "script", "params": {"x": 1}}, "params.x", "params has no field 'x'; the fie"),
        ("POST", "/demo/tasks/api-call", {"endpoint": "http://a", "method": "BREW"}, "method", "method must be one of"),
        ("POST", "/demo/tasks/script", {"priority": "high"}, "priority", "priority must be an integer (got a string)."),
        ("GET", "/tasks?status=processing", None, "status", "status must be one of pending, running, completed, f"),
        ("GET", "/tasks?deadLetter=maybe", None, "deadLetter", "deadLetter must be true or false (got 'maybe')."),
        ("GET", "/tasks?limit=0", None, "limit", "limit must be at least 1 (got '0')."),
        ("GET", "/tasks/" + "x" * 101, None, "task_id", "The task id in the path must be at most 100 characters"),
    ],
)
async def test_mistakes_read_as_sentences_naming_the_clients_field(
    client: httpx.AsyncClient, method: str, path: str, body: Any, key: str, message: str
) -> None:
    """One code (invalid_params) for every field mistake, a sentence in the client's own words and names."""
    kwargs: dict[str, Any] = {"json": body} if body is not None else {}
    error = assert_error(await client.request(method, f"{API}{path}", **kwargs), 400, "invalid_params")["error"]
    assert str(error["message"]).startswith(message), error
    assert "`" not in error["message"] and "Expected" not in error["message"]
    assert not re.search(r"\bdata\b", error["message"]), "an internal name leaked"
    assert [d["key"] for d in error["details"]] == [key]


async def test_valid_values_and_fields_are_listed(client: httpx.AsyncClient) -> None:
    """An enum lists every valid value; an unknown field lists the real fields."""
    error = (await client.get(f"{API}/tasks?status=processing")).json()["error"]
    assert all(status in error["message"] for status in ("pending", "running", "completed", "failed", "cancelled"))
    error = (await client.post(f"{API}/demo/tasks/sample", json={"title": "x"})).json()["error"]
    assert "delayMs" in error["message"] and "description" in error["message"]
    error = (await client.post(f"{API}/tasks", content=b"", headers={"content-type": "application/json"})).json()
    assert error["error"]["message"] == "A JSON request body is required."


async def test_params_error_names_the_field(client: httpx.AsyncClient) -> None:
    body = assert_error(
        await client.post(f"{API}/tasks", json={"executor": "script", "params": {"steps": "x"}}), 400, "invalid_params"
    )
    assert body["error"]["details"][0]["key"] == "params.steps"
    body = assert_error(await client.post(f"{API}/demo/tasks/sample", json={"delayMs": "x"}), 400, "invalid_params")
    assert body["error"]["details"][0]["key"] == "delayMs"


async def test_oversized_body_is_413(make_app: Any) -> None:
    from async_tasks.testing import serve_in_loop

    async with serve_in_loop(make_app(max_request_body_bytes=2048)) as client:
        response = await client.post(f"{API}/tasks", json={"executor": "script", "description": "x" * 5000})
        assert_error(response, 413, "request_too_large")


@pytest.mark.parametrize(
    ("action", "setup"),
    [
        ("start", "running"),
        ("start", "completed"),
        ("cancel", "completed"),
        ("retry", "pending"),
        ("retry", "running"),
        ("retry", "completed"),
    ],
)
async def test_illegal_actions_are_409(client: httpx.AsyncClient, app: Litestar, action: str, setup: str) -> None:
    params = {"hold": setup == "running"}
    task = (
        await client.post(f"{API}/tasks", json={"executor": "script", "params": params, "start": setup != "pending"})
    ).json()["task"]
    if setup == "completed":
        await wait_for(app, task["id"], "completed")
    body = assert_error(await client.post(f"{API}/tasks/{task['id']}/{action}"), 409, "invalid_transition")
    assert body["error"]["details"]["status"] == setup
    ScriptExecutor.release(task["id"])


async def test_retry_of_cancelled_task_runs_it_again(client: httpx.AsyncClient, app: Litestar) -> None:
    task = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]
    await client.post(f"{API}/tasks/{task['id']}/cancel")
    response = await client.post(f"{API}/tasks/{task['id']}/retry")
    assert response.status_code == 200
    done = await wait_for(app, task["id"], "completed")
    assert [h.status.value for h in done.history] == ["pending", "cancelled", "pending", "running", "completed"]


async def test_the_batch_limit_advertised_is_the_limit_applied(client: httpx.AsyncClient) -> None:
    """The OpenAPI document, GET /executors and the error all say 1000 items, and 1000 are taken."""
    document = (await client.get("/schema/openapi.json")).json()
    batch_body = document["components"]["schemas"]["BatchDemoRequest"]
    assert batch_body["properties"]["items"]["maxItems"] == 1000
    executors = (await client.get(f"{API}/executors")).json()["executors"]
    (batch,) = [e for e in executors if e["name"] == "batch"]
    assert batch["paramsSchema"]["$defs"]["BatchParams"]["properties"]["items"]["maxItems"] == 1000
    error = assert_error(
        await client.post(f"{API}/demo/tasks/batch", json={"items": [0] * 1001, "itemDelayMs": 0}),
        400,
        "invalid_params",
    )
    assert error["error"]["message"] == "items must hold at most 1000 items."
    accepted = await client.post(f"{API}/demo/tasks/batch", json={"items": [0] * 1000, "itemDelayMs": 0})
    assert accepted.status_code == 201, accepted.text


async def test_history_keeps_the_error_of_a_failed_attempt(make_app: Any) -> None:
    """A task that failed once and then succeeded shows the failure's error in its history."""
    from async_tasks.testing import serve_in_loop

    app = make_app(retry_backoff_ms=0)
    async with serve_in_loop(app) as client:
        body = {"executor": "script", "params": {"failAttempts": 1}, "maxRetries": 1, "start": True}
        task = (await client.post(f"{API}/tasks", json=body)).json()["task"]
        await wait_for(app, task["id"], "completed")
        history = (await client.get(f"{API}/tasks/{task['id']}")).json()["task"]["history"]
        failed = [entry for entry in history if entry["status"] == "failed"]
        assert [(e.get("attempt", 1), e["error"], e["reason"]) for e in failed] == [
            (1, "RuntimeError: attempt 1 failed on purpose", "attempt failed")
        ]
        assert all("error" not in entry for entry in history if entry["status"] != "failed")


async def test_an_offset_past_the_bound_is_a_sentence_and_the_bound_an_empty_page(
    session_client: httpx.AsyncClient,
) -> None:
    """?offset= takes at most a billion: above, a 400 that says so (not a 500 from the
    store's paging); at the bound, an empty page of a session that has tasks."""
    await session_client.post(f"{API}/tasks", json={"executor": "script"})
    page = await session_client.get(f"{API}/tasks", params={"offset": 1_000_000_000})
    assert page.status_code == 200 and page.json()["tasks"] == [] and page.json()["total"] == 1
    for offset in ("1000000001", str(2**63), "99999999999999999999"):
        error = assert_error(await session_client.get(f"{API}/tasks?offset={offset}"), 400, "invalid_params")
        assert error["error"]["message"] == f"offset must be at most 1000000000 (got '{offset}')."


async def test_start_at_delays_a_task_and_its_status_says_when(client: httpx.AsyncClient, app: Litestar) -> None:
    """``startAt`` makes a pending task with ``scheduledAt`` (also in /status and the list);
    POST /start with another ``startAt`` moves it, without a body starts it now; a time past
    MAX_START_DELAY_MS is a 400 sentence; a demo route takes ``startAt`` too."""
    at = int(time.time() * 1000) + 3_600_000
    created = await client.post(f"{API}/tasks", json={"executor": "script", "startAt": at})
    assert created.status_code == 201 and created.json()["queuePosition"] is None
    task = created.json()["task"]
    assert (task["status"], task["scheduledAt"], task["waitingReason"]) == ("pending", at, None)
    status = (await client.get(f"{API}/tasks/{task['id']}/status")).json()
    assert (status["status"], status["scheduledAt"]) == ("pending", at) and "waitingReason" not in status
    assert (await client.get(f"{API}/tasks")).json()["tasks"][0]["scheduledAt"] == at
    moved = await client.post(f"{API}/tasks/{task['id']}/start", json={"startAt": at + 1000})
    assert moved.status_code == 200 and moved.json()["task"]["scheduledAt"] == at + 1000
    assert (await client.post(f"{API}/tasks/{task['id']}/start")).status_code == 200
    assert (await wait_for(app, task["id"], "completed")).scheduled_at is None

    too_far = await client.post(f"{API}/tasks", json={"executor": "script", "startAt": at + 8 * 86_400_000})
    error = assert_error(too_far, 400, "invalid_params")["error"]
    assert re.fullmatch(
        r"startAt is 8\.04 days ahead; a task can start at most 7 days ahead \(MAX_START_DELAY_MS is 604800000\)\.",
        error["message"],
    )
    assert [d["key"] for d in error["details"]] == ["startAt"]
    assert_error(await client.post(f"{API}/tasks/{task['id']}/start", json={"startAt": "soon"}), 400, "invalid_params")

    demo = (await client.post(f"{API}/demo/tasks/script", json={"startAt": at})).json()
    assert demo["task"]["scheduledAt"] == at and demo["task"]["status"] == "pending"
    assert demo["message"].startswith("Scripted Task created; it starts at ") and demo["message"].endswith("Z")

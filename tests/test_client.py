"""`async_tasks.client`: the sync and async clients against the app in-process (its
event stream included), plus the stream parsing and fallbacks against scripted
transports."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest

from async_tasks.client import AsyncTaskClient, TaskApiError, TaskClient
from async_tasks.client._flows import BaseClient
from async_tasks.client._ops import Done, Send, resume
from async_tasks.web.plugin import AsyncTasksPlugin
from tests.inprocess import PortalTransport, StreamingASGITransport, streaming_transport, sync_transport
from tests.live import live_app

WATCH_TIMEOUT = 20.0
URL = "http://localhost"  # in-process; a loopback name passes the Host check


@pytest.fixture(scope="module")
def transport() -> Iterator[PortalTransport]:
    """One app for the module, in-process; each client without a token is its own session."""
    with sync_transport(live_app(retry_backoff_ms=0)) as transport:
        yield transport


@pytest.fixture
def client(transport: PortalTransport) -> Iterator[TaskClient]:
    with TaskClient(URL, transport=transport) as tasks:
        yield tasks


@pytest.fixture
async def tasks() -> AsyncIterator[AsyncTaskClient]:
    async with (
        streaming_transport(live_app(retry_backoff_ms=0)) as transport,
        AsyncTaskClient(URL, transport=transport) as tasks,
    ):
        yield tasks


def test_demo_task_runs_to_completion_while_watched(client: TaskClient) -> None:
    task = client.demo("sample", delayMs=0)
    assert task["status"] in ("pending", "running", "completed")
    updates = list(client.watch(task["id"], timeout=WATCH_TIMEOUT))
    assert updates, "watch yields at least the final status"
    assert updates[-1]["status"] == "completed"
    assert updates[-1]["progress"] == 100
    assert all(u["taskId"] == task["id"] and u["source"] in ("events", "poll") for u in updates)
    progress = [u["progress"] for u in updates]
    assert progress == sorted(progress)
    full = client.get_task(task["id"])
    assert full["result"] == {"message": "Sample task completed", "delayMs": 0, "steps": 5}
    assert [h["status"] for h in full["history"]][-1] == "completed"


def test_watch_by_polling_only(client: TaskClient) -> None:
    task = client.demo("sample", delayMs=0)
    updates = list(client.watch(task["id"], events=False, interval=0.05, timeout=WATCH_TIMEOUT))
    assert updates[-1]["status"] == "completed"
    assert {u["source"] for u in updates} == {"poll"}
    # Polling shows the log too: every line once, in order.
    said = [line["message"] for u in updates for line in u.get("lines", ())]
    logs = client.get_task(task["id"])["logs"]
    assert logs and said == [line["message"] for line in logs]


def test_the_client_keeps_the_session_the_server_issued(transport: PortalTransport) -> None:
    with TaskClient(URL, transport=transport) as first, TaskClient(URL, transport=transport) as second:
        task = first.demo("sample", delayMs=0)
        assert first.token, "the live server maps no IPs, so it issued a token"
        assert first.session()["sessionKey"] == task["sessionKey"]
        assert [t["id"] for t in first.list_tasks()] == [task["id"]]
        # Another client is another session: the task is invisible there (404).
        assert second.list_tasks() == []
        with pytest.raises(TaskApiError) as missing:
            second.status(task["id"])
        assert (missing.value.status, missing.value.code) == (404, "task_not_found")
        # The same token is the same session.
        with TaskClient(URL, token=first.token, transport=transport) as again:
            assert again.get_task(task["id"])["id"] == task["id"]


def test_new_session_starts_empty_and_is_kept(client: TaskClient) -> None:
    seen: list[str] = []
    client.on_token = seen.append
    client.demo("sample", delayMs=0)
    old_key = client.session()["sessionKey"]
    info = client.new_session()
    assert info["sessionKey"] != old_key and info["token"]
    assert seen[-1] == info["token"] == client.token
    assert client.list_tasks() == []
    assert client.session()["sessionKey"] == info["sessionKey"]


def test_create_start_cancel_retry_delete(client: TaskClient) -> None:
    task = client.create_task("script", {"hold": True}, name="held", tags=["demo"], max_retries=0)
    assert (task["status"], task["name"], task["tags"]) == ("pending", "held", ["demo"])
    assert client.start(task["id"])["status"] in ("pending", "running")
    cancelled = client.cancel(task["id"])
    assert cancelled["status"] == "cancelled"
    with pytest.raises(TaskApiError) as refused:
        client.cancel(task["id"])
    assert refused.value.status == 409
    assert refused.value.code == "invalid_transition"
    assert "cancel" in refused.value.message.lower()
    assert str(refused.value).endswith("(invalid_transition, HTTP 409)")
    assert client.retry(task["id"])["status"] in ("pending", "running")
    assert client.cancel(task["id"])["status"] == "cancelled"
    client.delete(task["id"])
    with pytest.raises(TaskApiError) as gone:
        client.get_task(task["id"])
    assert gone.value.code == "task_not_found"


def test_a_failing_task_ends_failed_with_its_error(client: TaskClient) -> None:
    task = client.demo("script", fail="boom on purpose")
    last = list(client.watch(task["id"], timeout=WATCH_TIMEOUT))[-1]
    assert last["status"] == "failed"
    assert "boom on purpose" in last["error"]
    assert "boom on purpose" in client.status(task["id"])["error"]


def test_watch_follows_automatic_retries_to_the_end(client: TaskClient) -> None:
    task = client.create_task("script", {"failAttempts": 1}, max_retries=1)
    watching = client.watch(task["id"], timeout=WATCH_TIMEOUT)
    first = next(watching)  # the stream is open now: nothing that follows can be missed
    assert first["status"] == "pending"
    client.start(task["id"])
    updates = [first, *watching]
    statuses = [u["status"] for u in updates]
    assert statuses[-1] == "completed"
    # The failed attempt is seen on the stream, and watching goes on through the retry.
    assert "failed" in statuses
    assert any(u["source"] == "events" for u in updates)
    assert client.get_task(task["id"])["attempts"] == 2


def test_leaving_a_watch_early_closes_its_stream(client: TaskClient, transport: PortalTransport) -> None:
    """A watch the caller stops iterating closes its event stream (the server forgets the subscriber)."""
    inner = transport.transport
    assert isinstance(inner, StreamingASGITransport)
    bridge = inner.app.plugins.get(AsyncTasksPlugin).streams
    before = bridge.subscriber_count
    held = client.demo("script", hold=True)
    watching = client.watch(held["id"])
    next(watching)
    assert bridge.subscriber_count == before + 1

    async def until_closed() -> None:
        with anyio.fail_after(5):
            while bridge.subscriber_count != before:
                await anyio.wait_all_tasks_blocked()

    watching.close()
    transport.portal.call(until_closed)
    client.cancel(held["id"])


async def test_async_watch_follows_automatic_retries_to_the_end(tasks: AsyncTaskClient) -> None:

    task = await tasks.create_task("script", {"failAttempts": 1}, maxRetries=1)
    watching = tasks.watch(task["id"], timeout=WATCH_TIMEOUT)
    first = await anext(watching)
    await tasks.start(task["id"])
    statuses = [first["status"]] + [u["status"] async for u in watching]
    assert "failed" in statuses and statuses[-1] == "completed"


def test_list_filters_stats_and_status_shape(client: TaskClient) -> None:
    done = client.demo("sample", delayMs=0)
    client.wait(done["id"], timeout=WATCH_TIMEOUT)
    held = client.demo("script", hold=True)
    try:
        assert [t["id"] for t in client.list_tasks("completed")] == [done["id"]]
        assert {t["id"] for t in client.list_tasks()} == {done["id"], held["id"]}
        assert [t["id"] for t in client.list_tasks(executor="script")] == [held["id"]]
        stats = client.stats()
        assert stats["total"] == 2 and stats["completed"] == 1
        assert set(client.status(done["id"])) == {
            "status",
            "progress",
            "currentStep",
            "currentStepDescription",
            "startedAt",
            "completedAt",
            "error",
        }
    finally:
        client.cancel(held["id"])


def test_validation_errors_raise_with_the_servers_message(client: TaskClient) -> None:
    with pytest.raises(TaskApiError) as bad:
        client.demo("sample", delayMs=-1)
    assert bad.value.status == 400
    assert bad.value.code == "invalid_params"
    assert "delayMs" in bad.value.message
    with pytest.raises(TaskApiError) as unknown:
        client.create_task("no-such-executor")
    assert unknown.value.status == 400


def test_executors_and_cleanup(client: TaskClient) -> None:
    executors = {e["name"]: e for e in client.executors()}
    assert {"sample", "script"} <= set(executors)
    assert executors["sample"]["demoPath"].endswith("/demo/tasks/sample")
    assert "$defs" in executors["sample"]["paramsSchema"]
    status = client.cleanup_status()
    assert status["isActive"] is True
    assert status["options"]["maxCompletedTasks"] >= 0
    result = client.run_cleanup()
    assert result["removed"] >= 0


async def test_async_client(tasks: AsyncTaskClient) -> None:

    task = await tasks.demo("sample", delayMs=0)
    updates = [u async for u in tasks.watch(task["id"], timeout=WATCH_TIMEOUT)]
    assert updates[-1]["status"] == "completed"
    polled = [u async for u in tasks.watch(task["id"], events=False, timeout=WATCH_TIMEOUT)]
    assert [u["status"] for u in polled] == ["completed"]
    assert (await tasks.wait(task["id"], timeout=WATCH_TIMEOUT))["progress"] == 100
    assert (await tasks.stats())["completed"] == 1
    held = await tasks.create_task("script", {"hold": True}, start=True)
    assert (await tasks.cancel(held["id"]))["status"] == "cancelled"
    with pytest.raises(TaskApiError) as refused:
        await tasks.start(held["id"])
    assert refused.value.code == "invalid_transition"
    await tasks.new_session()
    assert await tasks.list_tasks() == []


# -- the stream and its fallbacks, against scripted transports -----------------------

TASK_ID = "00000000-0000-4000-8000-000000000001"
STATUS_RUNNING = {
    "success": True,
    "status": "running",
    "progress": 10,
    "currentStep": "Working",
    "currentStepDescription": None,
    "startedAt": 1,
    "completedAt": None,
    "error": None,
}


def sse(*events: tuple[str, dict[str, object]]) -> bytes:
    out = [": connected\r\n\r\n"]
    for number, (kind, data) in enumerate(events, 1):
        out.append(f"id: {number}\r\nevent: {kind}\r\ndata: {json.dumps(data)}\r\n\r\n")
    return "".join(out).encode()


def event(kind: str, status: str, progress: float, step: str | None = None) -> tuple[str, dict[str, object]]:
    return kind, {
        "type": kind,
        "taskId": TASK_ID,
        "sessionKey": "s_x",
        "status": status,
        "progress": progress,
        "currentStep": step,
        "currentStepDescription": None,
        "error": None,
        "at": 1,
    }


def error_response(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"success": False, "error": {"code": code, "message": message}})


def scripted(events_response: httpx.Response, statuses: list[dict[str, object]]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/events"):
            return events_response
        if request.url.path.endswith("/status"):
            body = statuses.pop(0) if len(statuses) > 1 else statuses[0]
            return httpx.Response(200, json=body)
        if request.url.path.endswith(f"/tasks/{TASK_ID}"):  # polling reads the full task
            body = statuses.pop(0) if len(statuses) > 1 else statuses[0]
            return httpx.Response(200, json={"success": True, "task": body})
        return error_response(404, "not_found", "no")

    return httpx.MockTransport(handle)


def test_watch_reads_the_event_stream() -> None:
    body = sse(
        event("snapshot", "running", 10, "Working"),
        event("progress", "running", 50, "Working"),
        ("progress", {"type": "progress", "taskId": "someone-else", "status": "failed", "progress": 1}),
        event("progress", "running", 90, "Finishing"),
        event("transition", "completed", 100, "Finishing"),
        event("progress", "running", 1, "never read"),
    )
    transport = scripted(
        httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}), [STATUS_RUNNING]
    )
    with TaskClient("http://test", transport=transport) as tasks:
        updates = list(tasks.watch(TASK_ID))
    assert [(u["source"], u["status"], u["progress"]) for u in updates] == [
        ("events", "running", 10),  # the stream's snapshot is the starting point
        ("events", "running", 50),
        ("events", "running", 90),
        ("events", "completed", 100),
    ]
    assert updates[-1]["event"] == "transition"


def test_watch_yields_each_log_line_once_and_where_the_task_stands() -> None:
    """A snapshot's log, then `log` events (a line seen again is not yielded again) as
    `lines` on the last state; `eta` events as `queuePosition` and `eta`, kept while the
    status stays and forgotten when it changes."""
    snapshot = event("snapshot", "pending", 0)
    snapshot[1]["logs"] = [{"n": 1, "at": 5, "message": "queued"}]
    waiting = {"type": "eta", "taskId": TASK_ID, "status": "pending", "attempt": 0, "at": 1, "queuePosition": 2,
               "eta": {"startsInMs": 8000, "finishesInMs": 12000, "typicalMs": 4000, "samples": 3}}  # fmt: skip
    lines = [{"n": 1, "at": 5, "message": "queued"}, {"n": 2, "at": 6, "message": "read", "data": {"rows": 3}}]
    log = {"type": "log", "taskId": TASK_ID, "status": "running", "attempt": 1, "at": 6, "lines": lines}
    body = sse(
        snapshot,
        ("eta", waiting),
        ("eta", waiting),  # the same again: nothing new
        event("transition", "running", 0, "Working"),
        ("log", log),
        ("log", log),  # a line seen twice: yielded once
        event("transition", "completed", 100, "Working"),
    )
    transport = scripted(
        httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}), [STATUS_RUNNING]
    )
    with TaskClient("http://test", transport=transport) as tasks:
        updates = list(tasks.watch(TASK_ID))
    said = [
        (u["status"], u.get("event"), [line["n"] for line in u.get("lines", [])], u["queuePosition"]) for u in updates
    ]
    assert said == [
        ("pending", "snapshot", [1], None),
        ("pending", "eta", [], 2),
        ("running", "transition", [], None),
        ("running", "log", [2], None),
        ("completed", "transition", [], None),
    ]
    assert updates[1]["eta"]["startsInMs"] == 8000 and updates[2]["eta"] is None
    assert updates[3]["lines"][0]["data"] == {"rows": 3} and updates[3]["progress"] == 0


def test_watch_polls_when_the_server_has_no_stream() -> None:
    missing_route = error_response(404, "not_found", "No route")
    done = {**STATUS_RUNNING, "status": "completed", "progress": 100, "completedAt": 2}
    transport = scripted(missing_route, [STATUS_RUNNING, done])
    with TaskClient("http://test", transport=transport) as tasks:
        updates = list(tasks.watch(TASK_ID, interval=0))
    assert [(u["source"], u["status"]) for u in updates] == [("poll", "running"), ("poll", "completed")]


def test_watch_polls_when_the_stream_breaks() -> None:
    done = {**STATUS_RUNNING, "status": "completed", "progress": 100, "completedAt": 2}
    half = sse(event("progress", "running", 40))
    transport = scripted(httpx.Response(200, content=half, headers={"content-type": "text/event-stream"}), [done])
    with TaskClient("http://test", transport=transport) as tasks:
        updates = list(tasks.watch(TASK_ID, interval=0))
    assert [(u["source"], u["progress"]) for u in updates] == [("events", 40), ("poll", 100)]


def test_watch_of_a_missing_task_raises() -> None:
    gone = error_response(404, "task_not_found", "Not here")
    with (
        TaskClient("http://test", transport=scripted(gone, [STATUS_RUNNING])) as tasks,
        pytest.raises(TaskApiError) as error,
    ):
        list(tasks.watch(TASK_ID))
    assert (error.value.status, error.value.code, error.value.message) == (404, "task_not_found", "Not here")


def test_non_json_errors_still_raise_task_api_error() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(502, text="Bad gateway"))
    with TaskClient("http://test", transport=transport) as tasks, pytest.raises(TaskApiError) as error:
        tasks.stats()
    assert (error.value.status, error.value.code, error.value.message) == (502, "http_502", "Bad gateway")


def test_the_token_goes_out_as_a_header_and_issued_tokens_are_adopted() -> None:
    seen: list[str | None] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("X-Session-Token"))
        return httpx.Response(200, json={"success": True, "stats": {}}, headers={"X-Session-Token": "issued"})

    with TaskClient("http://test", transport=httpx.MockTransport(handle)) as tasks:
        tasks.stats()
        tasks.stats()
        assert tasks.token == "issued"
    with TaskClient("http://test", token="mine", transport=httpx.MockTransport(handle)) as tasks:
        tasks.stats()
    assert seen == [None, "issued", "mine"]


def test_task_ids_are_quoted_into_paths() -> None:
    paths: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path.decode())
        return httpx.Response(200, json={"success": True, "task": {}})

    with TaskClient("http://test", transport=httpx.MockTransport(handle)) as tasks:
        tasks.get_task("../stats?x=1")
    assert paths == ["/api/v1/tasks/..%2Fstats%3Fx%3D1"]


def test_an_answer_of_the_wrong_shape_raises_task_api_error() -> None:
    """A server that answers without the expected object raises TaskApiError, not a KeyError."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={"success": True}))
    with TaskClient("http://test", transport=transport) as tasks, pytest.raises(TaskApiError) as error:
        tasks.get_task(TASK_ID)
    assert error.value.code == "invalid_response"
    assert "'task'" in error.value.message


def test_a_flow_is_the_api_without_io_the_same_for_both_clients() -> None:
    """An operation is written once as a flow: it asks for a request and reads the answer
    it is handed, with no HTTP client at all (the sync and async clients only perform it)."""
    client = BaseClient("http://test/", token=None, timeout=1.0, api_path="/api/v1", on_token=None)
    flow = client._status("a b")
    asked = resume(flow)
    assert isinstance(asked, Send)
    assert (asked.request.method, asked.request.path) == ("GET", "/api/v1/tasks/a%20b/status")
    answer = httpx.Response(200, json={"success": True, "status": "running"}, headers={"X-Session-Token": "t1"})
    assert resume(flow, answer) == Done({"status": "running"})
    assert client.token == "t1"

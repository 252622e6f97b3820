"""Task logs: what an executor writes with `progress.log` (and ``data=``), through the
reporter's checks, the store's bounds, the API and the push streams (in memory; the
bounds on both stores are in tests/store, the Redis worker's coalescing in
tests/test_redis_execution.py)."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import anyio
import httpx
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from async_tasks import Progress, SyncProgress, Task, TaskExecutor, TaskParams
from async_tasks.progress import AttemptEnded, ProgressReporter
from async_tasks.settings import Settings
from async_tasks.task_log import LogLine, SharedTexts, make_line
from async_tasks.testing import FakeClock, run_executor
from async_tasks.web.frames import OPENED
from tests.helpers import TEST_EXECUTORS, build_app, system_of, wait_for
from tests.test_streams import GUARD, bridge_of, parse_sse

API = "/api/v1"


class TalkParams(TaskParams):
    lines: int = 3
    hold: bool = False


class TalkExecutor(TaskExecutor[TalkParams]):
    """Logs `lines` lines (``said 1``, ...), the last with data, then holds until released if asked."""

    name = "talk"
    released: ClassVar[dict[str, anyio.Event]] = {}

    async def execute(self, task: Task[TalkParams], progress: Progress) -> str:
        for i in range(1, task.params.lines + 1):
            await progress.log(f"said {i}", data={"i": i} if i == task.params.lines else None)
        if task.params.hold:
            await self.released.setdefault(task.id, anyio.Event()).wait()
        return "done"


class MumbleExecutor(TaskExecutor[TalkParams]):
    """A blocking executor: logs from its worker thread, waits on a gate, logs again."""

    name = "mumble"
    gates: ClassVar[dict[str, threading.Event]] = {}

    def execute(self, task: Task[TalkParams], progress: SyncProgress) -> str:
        progress.log("from a thread")
        self.gates.setdefault(task.id, threading.Event()).wait(5)
        progress(50, "Halfway", data={"rows": 2})
        progress.log("after the gate")
        return "done"


EXECUTORS = [*TEST_EXECUTORS, TalkExecutor, MumbleExecutor]


@pytest.fixture(scope="module")
async def talk_app() -> Any:
    app = build_app(EXECUTORS, task_log_lines=5)
    async with app.lifespan():
        yield app


@pytest.fixture
async def http(talk_app: Litestar) -> Any:
    from async_tasks.testing import asgi_client
    from tests.helpers import new_address

    async with asgi_client(talk_app, new_address()) as client:
        yield client


async def create(http: httpx.AsyncClient, executor: str = "talk", **params: Any) -> dict[str, Any]:
    response = await http.post(f"{API}/tasks", json={"executor": executor, "params": params, "start": True})
    assert response.status_code == 201, response.text
    return response.json()["task"]  # type: ignore[no-any-return]


# -- the reporter ----------------------------------------------------------------------


async def test_a_line_is_stamped_checked_and_copied() -> None:
    """A line gets the engine's time; its data is copied through JSON (the executor may change its own)."""
    clock = FakeClock()
    lines: list[LogLine] = []

    async def keep(line: LogLine) -> bool:
        lines.append(line)
        return True

    async def accept(percent: float, step: str | None, description: str | None) -> bool:
        return True

    reporter = ProgressReporter(accept, log_sink=keep, now_ms=clock.now_ms)
    rows = [1, 2]
    await reporter.log("read", data={"rows": rows})
    rows.append(3)
    clock.advance(2)
    await reporter(40, "Loading", "reading", data={"seen": 3})
    assert lines == [
        LogLine(at=clock.now_ms() - 2000, message="read", data={"rows": [1, 2]}),
        LogLine(at=clock.now_ms(), message="reading", data={"seen": 3}),  # a report's data: its description
    ]


def test_a_long_message_is_cut_and_data_too_large_is_refused() -> None:
    """TASK_LOG_LINE_BYTES: the message is cut short (ending in …) to fit beside the data; data
    that alone does not fit, or is not JSON, is the executor's error."""
    line = make_line("é" * 300, {"k": "v"}, 1, 256)
    assert line.message.endswith("…") and len(line.message.encode()) + len(b'{"k":"v"}') <= 256
    assert make_line("short", None, 1, 256).message == "short"
    with pytest.raises(ValueError, match="TASK_LOG_LINE_BYTES"):
        make_line("x", {"blob": "x" * 300}, 1, 256)
    with pytest.raises(ValueError, match="JSON-encodable"):
        make_line("x", {"when": object()}, 1, 256)
    with pytest.raises(TypeError, match="must be a str"):
        make_line(42, None, 1, 256)  # type: ignore[arg-type]


def test_shared_texts_hold_one_copy_of_recurring_messages_within_bounds() -> None:
    """Equal short messages share one string; long ones are not kept, and the table never
    holds more than its size (so messages of removed tasks cannot pile up in it)."""
    texts = SharedTexts(size=2, longest=10)
    first = texts.share("".join(["Load", "ing"]))
    again = texts.share("".join(["Loa", "ding"]))
    assert again is first
    long = "x" * 11
    assert texts.share(long) is long and texts.share("x" * 11) is not long
    texts.share("b")
    texts.share("c")  # the table was full: it starts again
    assert texts.share("".join(["Load", "ing"])) is not first


async def test_a_refused_line_ends_the_attempt() -> None:
    """Like a late progress report: once the store refuses a line, the executor's next call raises."""

    async def refuse(line: LogLine) -> bool:
        return False

    async def accept(percent: float, step: str | None, description: str | None) -> bool:
        return True

    reporter = ProgressReporter(accept, log_sink=refuse)
    with pytest.raises(AttemptEnded):
        await reporter.log("too late")
    with pytest.raises(AttemptEnded):
        await reporter(10)


async def test_reports_that_never_sleep_still_let_others_run_and_stop_once_closed() -> None:
    """An executor reporting (and logging) in a tight loop yields to the event loop now and
    then, so another task gets in; once its reporter is closed (a cancel), the next report raises."""

    async def accept(percent: float, step: str | None, description: str | None) -> bool:
        return True

    reporter = ProgressReporter(accept)
    reports = 0

    async def cancel_from_outside() -> None:
        reporter.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_from_outside)
        with pytest.raises(AttemptEnded):
            while True:
                await reporter(min(reports, 100))
                await reporter.log("spinning")
                reports += 1
    assert reports > 0


async def test_run_executor_records_an_executors_log() -> None:
    """The test helper users run their executors with keeps the lines they wrote."""
    run = await run_executor(TalkExecutor, {"lines": 2})
    assert run.messages == ["said 1", "said 2"] and run.logs[-1].data == {"i": 2}


def test_task_log_settings_are_checked_at_start() -> None:
    """TASK_LOG_BYTES below TASK_LOG_LINE_BYTES (a line that could never be kept) stops start-up."""
    from async_tasks.errors import SettingsError

    with pytest.raises(SettingsError, match="TASK_LOG_BYTES"):
        Settings.from_env({"TASK_LOG_LINE_BYTES": "4096", "TASK_LOG_BYTES": "2048"})
    with pytest.raises(SettingsError, match="TASK_LOG_LINES"):
        Settings.from_env({"TASK_LOG_LINES": "0"})
    assert Settings.from_env({"TASK_LOG_LINES": "7"}).log_limits.lines == 7


# -- the API -------------------------------------------------------------------------------


async def test_the_full_task_has_its_log_and_list_items_its_latest_lines(
    http: httpx.AsyncClient, talk_app: Litestar
) -> None:
    """GET /tasks/{id}: every kept line (TASK_LOG_LINES: 5 here) and how many were dropped;
    GET /tasks: the latest 3; /status keeps its documented shape."""
    task = await create(http, lines=7)
    await wait_for(talk_app, task["id"], "completed")
    full = (await http.get(f"{API}/tasks/{task['id']}")).json()["task"]
    assert [(line["n"], line["message"]) for line in full["logs"]] == [(n, f"said {n}") for n in range(3, 8)]
    assert full["logs"][-1]["data"] == {"i": 7} and "data" not in full["logs"][0]
    assert full["logsDropped"] == 2
    (item,) = (await http.get(f"{API}/tasks")).json()["tasks"]
    assert [line["n"] for line in item["logs"]] == [5, 6, 7]
    status = (await http.get(f"{API}/tasks/{task['id']}/status")).json()
    assert set(status) == {"success", "status", "progress", "currentStep", "currentStepDescription",
                           "startedAt", "completedAt", "error"}  # fmt: skip


async def test_a_blocking_executor_logs_from_its_thread(http: httpx.AsyncClient, talk_app: Litestar) -> None:
    """The sync form: `progress.log(...)` and `progress(..., data=...)` from a worker thread."""
    task = await create(http, "mumble")
    await wait_for(talk_app, task["id"], progress=0)
    with anyio.fail_after(GUARD):
        while not (await http.get(f"{API}/tasks/{task['id']}")).json()["task"]["logs"]:
            await anyio.wait_all_tasks_blocked()
    MumbleExecutor.gates.setdefault(task["id"], threading.Event()).set()
    await wait_for(talk_app, task["id"], "completed")
    logs = (await http.get(f"{API}/tasks/{task['id']}")).json()["task"]["logs"]
    assert [(line["message"], line.get("data")) for line in logs] == [
        ("from a thread", None),
        ("Halfway", {"rows": 2}),
        ("after the gate", None),
    ]


# -- the streams -----------------------------------------------------------------------------


async def test_a_task_stream_carries_log_events_and_a_reconnect_gets_the_whole_log(
    http: httpx.AsyncClient, talk_app: Litestar
) -> None:
    """Lines arrive as `log` events (each with its number) while the task runs, before its
    end; a stream opened later starts with a snapshot holding the whole log."""
    bridge = bridge_of(talk_app)
    session_key = (await http.get(f"{API}/session")).json()["sessionKey"]
    task = await create(http, lines=0, hold=True)
    await wait_for(talk_app, task["id"], "running")
    frames = bridge.task_stream(session_key, task["id"])
    assert await anext(frames) is OPENED
    seen: list[tuple[str, Any]] = []
    with anyio.fail_after(GUARD):
        async for frame in frames:
            data = msgspec.json.decode(frame.data)
            seen.append((frame.type, data))
            if frame.type == "snapshot":  # subscribed: write two lines, then let it finish
                await system_of(talk_app).store.add_logs(session_key, task["id"], 1, [line("one"), line("two")])
                TalkExecutor.released.setdefault(task["id"], anyio.Event()).set()
    kinds = [kind for kind, _ in seen if kind != "eta"]
    assert kinds == ["snapshot", "log", "transition"]
    (log,) = [data for kind, data in seen if kind == "log"]
    assert [(entry["n"], entry["message"]) for entry in log["lines"]] == [(1, "one"), (2, "two")]
    assert (log["status"], log["attempt"], log["logsDropped"]) == ("running", 1, 0)
    text = (await http.get(f"{API}/tasks/{task['id']}/events")).text
    (snapshot, _end) = parse_sse(text)
    assert [entry["message"] for entry in snapshot["data"]["logs"]] == ["one", "two"]


def line(message: str) -> LogLine:
    return LogLine(at=1, message=message)


async def test_log_lines_are_batched_on_the_session_stream(http: httpx.AsyncClient, talk_app: Litestar) -> None:
    """A flood of lines reaches a session stream as a few `log` events (at most about ten a
    second per task), every line numbered once, none repeated, before the task's end."""
    bridge = bridge_of(talk_app)
    session_key = (await http.get(f"{API}/session")).json()["sessionKey"]
    frames = bridge.session_stream(session_key, keepalive=False)
    assert await anext(frames) is OPENED
    logs: list[dict[str, Any]] = []
    with anyio.fail_after(GUARD):
        task = await create(http, lines=500)
        async for frame in frames:
            data = msgspec.json.decode(frame.data)
            if frame.type == "log":
                logs.append(data)
            if frame.type == "transition" and data["taskId"] == task["id"] and data["status"] == "completed":
                break
    await frames.aclose()
    numbers = [entry["n"] for event in logs for entry in event["lines"]]
    assert numbers == list(range(1, 501))  # each line once, in order (the task keeps only 5)
    assert 1 <= len(logs) < 50, len(logs)


def test_the_websocket_carries_log_events() -> None:
    """The session WebSocket sends the same `log` JSON as the event stream."""
    app = build_app(EXECUTORS)
    with TestClient(app, base_url="http://testserver.local") as client:
        with client.websocket_connect(f"{API}/ws") as ws:
            client.post(f"{API}/tasks", json={"executor": "talk", "params": {"lines": 2}, "start": True})
            found: list[dict[str, Any]] = []
            while not any(event["type"] == "transition" and event["status"] == "completed" for event in found):
                found.append(ws.receive_json(timeout=GUARD))
    logs = [event for event in found if event["type"] == "log"]
    assert [line["message"] for event in logs for line in event["lines"]] == ["said 1", "said 2"]
    assert set(logs[0]) == {"type", "taskId", "sessionKey", "status", "attempt", "at", "lines", "logsDropped"}
    assert msgspec.json.decode(msgspec.json.encode(logs[0]["lines"][0]))["n"] == 1
    assert system_of(app) is not None

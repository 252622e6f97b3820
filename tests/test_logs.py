"""Log formats: the seed's text lines by default, one JSON object per line with LOG_FORMAT=json."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import pytest
from litestar import Litestar

from async_tasks.errors import SettingsError
from async_tasks.logs import ContextFilter, JsonFormatter, TextFormatter
from async_tasks.settings import Settings
from async_tasks.testing import serve_in_loop
from async_tasks.web.app import create_app
from tests.helpers import SECRET, wait_for

API = "/api/v1"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


class Lines(logging.Handler):
    """Formats `async_tasks` records as the app's handler would, in the logging call's context."""

    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter)
        self.addFilter(ContextFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def json(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


@contextmanager
def capture(formatter: logging.Formatter) -> Iterator[Lines]:
    handler = Lines(formatter)
    logger = logging.getLogger("async_tasks")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_json_lines_carry_request_task_status_and_duration(make_app: Callable[..., Litestar]) -> None:
    """Task lines have timestamp, level, logger, message, request id, session key, task id,
    executor, and at the end status and duration (plus the error of a failure)."""
    app = make_app(log_format="json")
    with capture(JsonFormatter()) as out:
        async with serve_in_loop(app) as client:
            ok = (
                await client.post(
                    f"{API}/tasks", json={"executor": "script", "start": True}, headers={"X-Request-ID": "req-ok"}
                )
            ).json()["task"]
            bad = (
                await client.post(
                    f"{API}/tasks", json={"executor": "script", "start": True, "params": {"fail": "kaput"}}
                )
            ).json()["task"]
            await wait_for(app, ok["id"], "completed")
            await wait_for(app, bad["id"], "failed")
    lines = out.json()
    completed = next(line for line in lines if str(line["message"]).startswith("Completed execution"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(completed["timestamp"]))
    assert completed["level"] == "info" and completed["logger"] == "async_tasks.execution"
    assert completed["request_id"] == "req-ok"
    assert completed["session_key"] == ok["sessionKey"] and completed["task_id"] == ok["id"]
    assert completed["executor"] == "script" and completed["status"] == "completed"
    assert isinstance(completed["duration_ms"], int) and completed["duration_ms"] >= 0
    assert str(completed["message"]).endswith(f" in {completed['duration_ms']} ms")
    starting = next(line for line in lines if line.get("task_id") == ok["id"] and "Starting" in str(line["message"]))
    assert starting["request_id"] == "req-ok" and "status" not in starting  # only fields that apply
    failed = next(line for line in lines if str(line["message"]).startswith("Failed execution"))
    assert failed["level"] == "error" and failed["status"] == "failed" and failed["task_id"] == bad["id"]
    assert failed["error"] == "RuntimeError: kaput" and isinstance(failed["duration_ms"], int)
    assert re.fullmatch(r"[0-9a-f]{32}", str(failed["request_id"]))  # generated for that request
    system = next(line for line in lines if str(line["message"]).startswith("Task system initialized"))
    assert set(system) == {"timestamp", "level", "logger", "message"}


async def test_the_json_setting_selects_the_json_formatter(make_app: Callable[..., Litestar]) -> None:
    """LOG_FORMAT=json puts `JsonFormatter` (and the context filter) on the app's log handler;
    the default keeps the seed's text formatter; a bad value names the variable."""
    make_app(log_format="json")
    (handler,) = logging.getLogger("async_tasks").handlers
    assert isinstance(handler.formatter, JsonFormatter)
    assert any(isinstance(f, ContextFilter) for f in handler.filters)
    make_app()
    (handler,) = logging.getLogger("async_tasks").handlers
    assert isinstance(handler.formatter, TextFormatter)
    assert Settings.from_env({"LOG_FORMAT": "json"}).log_format == "json"
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "xml"})


async def test_text_lines_are_the_seeds(make_app: Callable[..., Litestar]) -> None:
    """`<date> <time> info: Starting execution of task <id> for session <key>`, the debug
    progress line, and the completion line with its duration."""
    app = make_app(log_level="debug")
    with capture(TextFormatter()) as out:
        async with serve_in_loop(app) as client:
            task = (
                await client.post(f"{API}/tasks", json={"executor": "sample", "start": True, "params": {"delayMs": 0}})
            ).json()["task"]
            await wait_for(app, task["id"], "completed")
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    key = re.escape(task["sessionKey"])
    tid = re.escape(task["id"])
    assert re.fullmatch(UUID, task["id"])
    text = "\n".join(out.lines)
    # A task a request created: its lines end with that request's id.
    rid = rf" \[request_id={re.escape(task['requestId'])}\]"
    assert re.search(rf"^{stamp} info: Starting execution of task {tid} for session {key}{rid}$", text, re.M)
    assert re.search(rf"^{stamp} debug: Task {tid} progress: \d+(\.\d+)?%{rid}$", text, re.M)
    assert re.search(rf"^{stamp} info: Completed execution of task {tid} for session {key} in \d+ ms{rid}$", text, re.M)


def test_a_text_line_outside_a_request_has_no_request_id() -> None:
    """The seed's line exactly, when no request is involved (start-up, the cleaner)."""
    record = logging.LogRecord("async_tasks", logging.INFO, __file__, 1, "Task system initialized %s", ("ok",), None)
    ContextFilter().filter(record)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d info: Task system initialized ok", TextFormatter().format(record)
    )


def test_plain_uvicorn_writes_the_documented_format(capsys: pytest.CaptureFixture[str]) -> None:
    """Under ``uvicorn async_tasks.web:create_app --factory`` (uvicorn configures its own logging
    first), the app's config takes uvicorn's loggers over: errors in our format, no access log."""
    import logging.config

    import uvicorn.config

    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)  # what uvicorn does before the factory
    create_app(Settings(secret_key=SECRET), environ={}, load_entry_points=False)
    logging.getLogger("uvicorn.error").error("[Errno 98] address already in use")
    logging.getLogger("uvicorn.error").info("Uvicorn running on http://127.0.0.1:3000")
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "203.0.113.7", "GET", "/", "1.1", 200)
    for handler in logging.getLogger("uvicorn").handlers:  # written by a queue listener's thread
        handler.listener.queue.join()  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d error: \[Errno 98\] address already in use$", err, re.M)
    assert "Uvicorn running" not in err and "203.0.113.7" not in err and "INFO:" not in err


async def test_nothing_sensitive_is_logged(make_app: Callable[..., Litestar]) -> None:
    """No session token, secret key or client IP in any line, whatever the format."""
    app = make_app(log_format="json", log_level="debug", auto_map_session_by_ip=False)
    with capture(JsonFormatter()) as out:
        async with serve_in_loop(app) as client:
            session = await client.post(f"{API}/session")
            token = session.json()["token"]
            client.headers["X-Session-Token"] = token
            created = await client.post(
                f"{API}/tasks", json={"executor": "script", "start": True}, headers={"X-Forwarded-For": "203.0.113.7"}
            )
            await wait_for(app, created.json()["task"]["id"], "completed")
            await client.post(f"{API}/tasks/cleanup/run")
            await client.get("/no/such/route")
            await anyio.lowlevel.checkpoint()
    text = "\n".join(out.lines)
    assert "Completed execution" in text
    for secret in (token, SECRET, "127.0.0.1", "203.0.113.7"):
        assert secret not in text


def test_json_formatter_shape_outside_any_context() -> None:
    """A plain record: the four base fields only; exceptions are one escaped string."""
    record = logging.LogRecord("async_tasks.x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    ContextFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert set(line) == {"timestamp", "level", "logger", "message"}
    assert line["message"] == "hello world" and line["level"] == "warning"
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        import sys

        failing = logging.LogRecord("async_tasks.x", logging.ERROR, __file__, 1, "oops", None, sys.exc_info())
    text = JsonFormatter().format(failing)
    assert "\n" not in text and "ValueError: bad" in json.loads(text)["exception"]


async def test_an_app_with_the_plugin_logs_as_the_server_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``logging_config=logging_config()`` in an app of one's own with `AsyncTasksPlugin`:
    task lines in the documented format ending ``[request_id=...]``, and uvicorn's access
    log (client addresses) off, as under `create_app`."""
    import logging.config

    import uvicorn.config

    from async_tasks import AsyncTasksPlugin, logging_config
    from tests.helpers import ScriptExecutor

    logging.config.dictConfig(uvicorn.config.LOGGING_CONFIG)  # what uvicorn does before loading the app
    settings = Settings(secret_key=SECRET, task_create_rate=0.0)
    app = Litestar(
        plugins=[AsyncTasksPlugin([ScriptExecutor], settings=settings, load_entry_points=False)],
        logging_config=logging_config(settings),
    )
    async with serve_in_loop(app) as client:
        created = await client.post(
            f"{API}/tasks", json={"executor": "script", "start": True}, headers={"X-Request-ID": "plugin-7"}
        )
        task_id = created.json()["task"]["id"]
        await wait_for(app, task_id, "completed")
    logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "203.0.113.7", "GET", "/", "1.1", 200)
    for handler in logging.getLogger("async_tasks").handlers:  # written by a queue listener's thread
        handler.listener.queue.join()  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert re.search(
        rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d info: Starting execution of task {task_id} for session \S+ "
        r"\[request_id=plugin-7\]$",
        err,
        re.M,
    ), err
    assert "203.0.113.7" not in err and "INFO:" not in err

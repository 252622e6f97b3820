"""The ``async-tasks`` command: its client commands against the app in-process, and
once, the installed command in a subprocess against a real server."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from litestar import Litestar
from rich.console import Console

from async_tasks.cli import main, parse_params
from async_tasks.client.tokens import load_session_token, session_file
from async_tasks.console import Outlook, RunTime, ordinal, progress_bar
from async_tasks.settings import Settings
from async_tasks.testing import FakeClock, wait_for
from async_tasks.web.app import create_app
from tests.helpers import SECRET, TEST_EXECUTORS, ScriptExecutor, system_of
from tests.inprocess import PortalTransport, sync_transport
from tests.live import live_app, live_server  # noqa: F401 - the fixture

URL = "http://localhost"  # in-process; a loopback name passes the Host check
Run = Callable[..., tuple[int, str, str]]
COMMANDS = ("serve", "submit", "list", "status", "watch", "cancel", "retry", "start", "delete", "executors", "session")


@pytest.fixture(scope="module")
def transport() -> Iterator[PortalTransport]:
    """One app for the module, in-process; each test has its own session file, so its own session."""
    with sync_transport(live_app(retry_backoff_ms=0)) as transport:
        yield transport


@pytest.fixture(autouse=True)
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Each test: its own session file (so its own session), the app as default URL."""
    session = tmp_path / "session.json"
    monkeypatch.setenv("ASYNC_TASKS_SESSION_FILE", str(session))
    monkeypatch.setenv("ASYNC_TASKS_URL", URL)
    monkeypatch.setenv("COLUMNS", "200")  # rich: no wrapping in captured output
    monkeypatch.delenv("NO_COLOR", raising=False)
    return session


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], transport: PortalTransport) -> Iterator[Run]:
    """``run(*argv)``: the command's exit status, stdout and stderr."""

    def run(*argv: str, via: httpx.BaseTransport | None = transport) -> tuple[int, str, str]:
        code = main(list(argv), transport=via)
        out, err = capsys.readouterr()
        return code, out, err

    yield run


def submit_json(run: Run, *argv: str) -> dict[str, object]:
    code, out, err = run("submit", *argv, "--json")
    assert code == 0, err
    task: dict[str, object] = json.loads(out)
    return task


def test_submit_and_watch_until_completed(run: Run) -> None:
    code, out, err = run("submit", "sample", "--param", "delayMs=0", "--watch")
    assert code == 0, err
    assert "Created task" in out
    assert "completed" in out
    assert "100%" in out
    assert '"delayMs": 0' in out  # the result


def test_a_failing_task_exits_non_zero_and_prints_its_error(run: Run) -> None:
    code, _, err = run("submit", "script", "--param", "fail=it broke on purpose", "--watch")
    assert code == 1
    assert "failed" in err
    assert "it broke on purpose" in err


def test_submit_without_watch_returns_at_once(run: Run) -> None:
    code, out, _ = run("submit", "sample", "-p", "delayMs=0", "-d", "from the CLI")
    assert code == 0
    assert "Created task" in out and "async-tasks watch" in out


def test_submit_can_start_later(run: Run) -> None:
    """--start-in: the task waits pending with its time; a negative delay is a usage error."""
    code, out, err = run("submit", "sample", "-p", "delayMs=0", "--start-in", "120")
    assert code == 0, err
    assert "It waits until" in out and "120 s from now" in out
    task_id = out.split("Created task ")[1].split()[0]
    code, out, err = run("status", task_id, "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["status"] == "pending"
    assert status["scheduledAt"] > time.time() * 1000 + 100_000
    with pytest.raises(SystemExit) as usage:
        run("submit", "sample", "--start-in", "-1")
    assert usage.value.code == 2


def test_list_status_and_the_kept_session(
    run: Run,
    cli_env: Path,
) -> None:
    task = submit_json(run, "sample", "--param", "delayMs=0")
    task_id = str(task["id"])
    # The session file now holds the token the server issued, so the next commands
    # (separate invocations) see the same session.
    assert load_session_token(URL)
    assert session_file(URL) == cli_env
    assert oct(cli_env.stat().st_mode & 0o777) == "0o600"
    assert run("watch", task_id)[0] == 0

    code, out, _ = run("list", "--json")
    assert code == 0
    assert [t["id"] for t in json.loads(out)] == [task_id]
    code, out, _ = run("list")
    assert code == 0 and task_id[:8] in out and "completed" in out
    code, out, _ = run("list", "--status", "running")
    assert code == 0 and "No tasks" in out

    code, out, _ = run("status", task_id, "--json")
    assert code == 0
    status = json.loads(out)
    assert status["status"] == "completed" and status["progress"] == 100
    code, out, _ = run("status", task_id[:8])  # a prefix, as `list` shows it
    assert code == 0 and "completed" in out and "Finalizing" in out


def test_cancel_retry_and_delete(run: Run) -> None:
    task_id = str(submit_json(run, "script", "--param", "hold=true")["id"])
    code, out, _ = run("cancel", task_id)
    assert code == 0 and "cancelled" in out
    code, out, err = run("watch", task_id)
    assert code == 1 and "cancelled" in err
    code, out, err = run("cancel", task_id)
    assert code == 1
    assert "invalid_transition" in err and "HTTP 409" in err
    code, out, _ = run("retry", task_id, "--json")
    assert code == 0 and json.loads(out)["status"] in ("pending", "running")
    assert run("cancel", task_id)[0] == 0
    code, out, _ = run("delete", task_id)
    assert code == 0 and "Deleted" in out
    code, _, err = run("status", task_id)
    assert code == 1 and "task_not_found" in err


def test_submit_with_json_params(run: Run) -> None:
    code, out, err = run(
        "submit", "batch", "--param", 'items=["a", 2, {"fail": true}]', "--param", "itemDelayMs=0", "--watch"
    )
    assert code == 0, err
    assert '"total": 3' in out and '"failed": 1' in out


def test_errors_are_one_line_messages(run: Run) -> None:
    code, _, err = run("submit", "sample", "--param", "delayMs=-5")
    assert code == 1
    assert "delayMs must be at least 0" in err and "invalid_params" in err
    assert "Traceback" not in err
    code, _, err = run("submit", "no-such-executor")
    assert code == 1 and "no-such-executor" in err
    code, _, err = run("submit", "sample", "--param", "delayMs")
    assert code == 2 and "key=value" in err
    code, _, err = run("list", "--url", "http://127.0.0.1:9", via=None)
    assert code == 1 and "cannot reach the server" in err


def test_executors(run: Run) -> None:
    code, out, _ = run("executors")
    assert code == 0
    assert "sample" in out and "delayMs=3000" in out and "script" in out
    code, out, _ = run("executors", "--json")
    assert {e["name"] for e in json.loads(out)} >= {"sample", "batch", "script"}


def test_session_new_and_forget(run: Run) -> None:
    submit_json(run, "sample", "--param", "delayMs=0")
    first = load_session_token(URL)
    code, out, _ = run("session", "--new")
    assert code == 0 and "(new)" in out
    assert load_session_token(URL) not in (None, first)
    code, out, _ = run("list", "--json")
    assert json.loads(out) == []
    code, out, _ = run("session", "--forget")
    assert code == 0 and load_session_token(URL) is None


def test_parse_params() -> None:
    assert parse_params(
        ["delayMs=2000", 'items=["a","b"]', "name=plain text", "flag=true", "empty=", "eq=a=b", 'quoted="123"']
    ) == {
        "delayMs": 2000,
        "items": ["a", "b"],
        "name": "plain text",
        "flag": True,
        "empty": "",
        "eq": "a=b",
        "quoted": "123",
    }


def test_the_url_goes_before_or_after_the_command(run: Run) -> None:
    """--url is accepted before the command as well as after it; the one after wins."""
    for argv, named in (
        (["--url", "http://127.0.0.1:8", "list"], "http://127.0.0.1:8"),
        (["list", "--url", "http://127.0.0.1:7"], "http://127.0.0.1:7"),
        (["--url", "http://127.0.0.1:8", "list", "--url", "http://127.0.0.1:7"], "http://127.0.0.1:7"),
    ):
        code, _, err = run(*argv, via=None)  # nothing listens there: the error names the URL used
        assert code == 1 and f"cannot reach the server at {named}" in err, argv
    code, out, _ = run("--url", URL, "list", "--json")
    assert code == 0 and json.loads(out) == []


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """--help of the command and of each subcommand shows no reST markup."""
    for argv in (["--help"], *([name, "--help"] for name in COMMANDS)):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith("usage: async-tasks") and "`" not in text, argv
    assert "--url URL" in text


def test_errors_stay_on_one_line_in_a_narrow_terminal(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error is one line however narrow the terminal: rich does not wrap it."""
    monkeypatch.setenv("COLUMNS", "40")
    code, _, err = run("list", "--url", "http://127.0.0.1:9", via=None)
    assert code == 1 and len(err.strip().splitlines()) == 1, err


def test_the_bar_stays_put_as_step_names_change() -> None:
    """Step and description change, the bar keeps its place and length (an 80-column terminal)."""
    console = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    bars = set()
    with progress_bar(console, RunTime()) as progress:
        bar = progress.add_task("task", total=100, step="", detail="")
        for step, detail in (
            ("Init", ""),
            ("Processing item 1 of 6", 'Item 1: "a"'),
            ("A step name far longer than the column is wide", "and a description far longer than the line " * 3),
        ):
            progress.update(bar, completed=40, step=step, detail=detail)
            console.print(progress.get_renderable())
            line = console.export_text().splitlines()[-1]
            bars.add((line.index("━"), line.count("━") + line.count("╸") + line.count("╺")))
    assert len(bars) == 1, bars
    assert "A step name far" in line and line.count("…") == 2 and len(line) <= 80


def test_watch_shows_the_tasks_log_under_the_bar(run: Run) -> None:
    """The executor's log lines, with their partial results, under the progress bar."""
    code, out, err = run("submit", "batch", "-p", 'items=["a", {"fail": true}]', "-p", "itemDelayMs=0", "--watch")
    assert code == 0, err
    lines = out.splitlines()
    bar = max(i for i, line in enumerate(lines) if "100%" in line)
    below = "\n".join(lines[bar + 1 :])
    assert 'Item 1: "a" — ok  {"index": 0, "status": "ok"' in below
    assert 'Item 2: {"fail":true} — failed: item asked to fail' in below
    assert below.index("Item 1") < below.index("Item 2") < below.index("Done: 1 succeeded, 1 failed")


def test_the_outlook_says_where_a_task_stands() -> None:
    """A waiting task's place in line and when it should start; a running one's time left."""
    outlook = Outlook()
    outlook.observe({"status": "pending", "queuePosition": 3, "eta": {"startsInMs": 12_400, "finishesInMs": 16_000}})
    assert outlook.text() == "3rd in line · starts in about 12 s"
    outlook.observe({"status": "pending", "queuePosition": 1, "eta": None})
    assert outlook.text() == "1st in line"
    outlook.observe({"status": "running", "queuePosition": None, "eta": {"startsInMs": None, "finishesInMs": 185_000}})
    assert outlook.text() == "about 3 min left"
    outlook.observe({"status": "completed"})
    assert outlook.text() == ""
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th",
    ]  # fmt: skip


def test_log_lines_sit_under_the_bar() -> None:
    """The latest log lines render under the bar, in the live display."""
    console = Console(file=io.StringIO(), width=80, record=True, color_system=None)
    with progress_bar(console, RunTime(), Outlook(), ["09:00:00  first", "09:00:01  second"]) as progress:
        progress.add_task("task", total=100, step="Working", detail="")
        console.print(progress.get_renderable())
    text = console.export_text().splitlines()
    bar = next(i for i, line in enumerate(text) if "Working" in line)
    assert [line.strip() for line in text[bar + 1 : bar + 3]] == ["09:00:00  first", "09:00:01  second"]


def clocked_app(clock: FakeClock) -> Litestar:
    settings = Settings(secret_key=SECRET, task_create_rate=0.0, auto_map_session_by_ip=False)
    return create_app(settings, TEST_EXECUTORS, environ={}, clock=clock)


def test_watch_shows_the_run_time_the_server_measured(run: Run) -> None:
    """The run time comes from the task's startedAt and completedAt, not from when watching began."""
    clock = FakeClock()
    app = clocked_app(clock)
    with sync_transport(app) as transport:
        task = json.loads(run("submit", "script", "-p", "hold=true", "--json", via=transport)[1])
        system = system_of(app)
        transport.portal.call(wait_for, system, task["sessionKey"], task["id"], "running")
        clock.advance(75.5)
        transport.portal.call(ScriptExecutor.release, task["id"])
        transport.portal.call(wait_for, system, task["sessionKey"], task["id"], "completed")
        code, out, err = run("watch", task["id"], via=transport)
    assert code == 0, err
    assert f"Task {task['id']} completed in 1m15s" in out
    assert "0:00:00" not in out


def test_a_watch_ended_by_server_shutdown_says_why(run: Run) -> None:
    """A --watch that a server shutdown ends prints "cancelled (shutdown)"."""
    app = clocked_app(FakeClock())
    system = system_of(app)

    async def shut_down_once_running() -> None:
        running = anyio.Event()
        unsubscribe = system.store.events.subscribe(lambda event: running.set() if event.status == "running" else None)
        try:
            await running.wait()
        finally:
            unsubscribe()
        system.request_shutdown()

    with sync_transport(app) as transport:
        shutting_down = transport.portal.start_task_soon(shut_down_once_running)
        code, _, err = run("submit", "script", "-p", "hold=true", "--watch", via=transport)
        shutting_down.result(5)
    assert code == 1
    assert "cancelled (shutdown)" in err
    assert "cannot reach" not in err


def test_serve_on_a_taken_port_says_so_first_and_only(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve on a port in use prints one line naming the address, nothing else, and exits 1."""
    monkeypatch.setenv("SECRET_KEY", SECRET)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--host", "127.0.0.1", "--port", str(port)])
    out, err = capfd.readouterr()
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"async-tasks: cannot listen on 127.0.0.1:{port}: address already in use"
        " (is another server running there? set PORT or --port)"
    ]


@pytest.mark.e2e
def test_the_installed_command_runs_in_a_subprocess(live_server: str) -> None:  # noqa: F811
    """The installed async-tasks script, against a real server: submit, follow, and the session kept."""
    command = Path(sys.executable).with_name("async-tasks")
    env = {**os.environ, "COLUMNS": "200"}  # the test's own session file (cli_env)
    env.pop("ASYNC_TASKS_URL")
    done = subprocess.run(
        [command, "--url", live_server, "submit", "sample", "--param", "delayMs=0", "--watch"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "completed in" in done.stdout
    assert load_session_token(live_server)

"""Graceful shutdown: refuse new work at once, cancel every task with reason "shutdown",
and exit within SHUTDOWN_GRACE_MS even when executors ignore cancellation.

The process tests start the real server (`python -m async_tasks.cli serve`, or the
launcher with test-only stubborn executors, through the same `run_server`), send it
a signal and read its JSON log.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar

from async_tasks.web.plugin import AsyncTasksPlugin
from tests.helpers import SECRET, wait_for
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
API = "/api/v1"
#: Start-up and exit of a Python process on a slow CI machine, beyond the grace period.
EXIT_MARGIN = 1.5


# -- in process: the shutdown starts when the signal arrives -------------------------------------------


async def test_shutdown_starts_at_the_request_not_at_the_end_of_the_lifespan(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    """`request_shutdown` (what the signal handler calls) refuses new tasks at once and
    cancels running and queued ones with reason shutdown while the app still serves
    (uvicorn may still be waiting for open connections then)."""
    held = []
    for _ in range(2):
        response = await client.post(
            f"{API}/tasks", json={"executor": "script", "start": True, "params": {"hold": True, "steps": 1}}
        )
        held.append(response.json()["task"]["id"])
    waiting = (await client.post(f"{API}/tasks", json={"executor": "script"})).json()["task"]["id"]
    for task_id in held:
        await wait_for(app, task_id, progress=90)

    app.plugins.get(AsyncTasksPlugin).system.request_shutdown()
    refused = await client.post(f"{API}/tasks", json={"executor": "script", "start": True})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "shutting_down"
    for task_id in held:
        task = await wait_for(app, task_id, "cancelled")
        assert task.history[-1].reason == "shutdown"
    assert (await client.post(f"{API}/tasks/{waiting}/start")).status_code == 503
    assert (await client.get("/health")).status_code == 200


# -- real processes -------------------------------------------------------------------------------------


class Server:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, base_url: str, grace_ms: int) -> None:
        self.process = process
        self.log = log
        self.http = httpx.Client(base_url=base_url, timeout=10)
        self.grace = grace_ms / 1000

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines (the banner line is plain text)."""
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def create(self, executor: str, **params: Any) -> str:
        response = self.http.post(f"{API}/tasks", json={"executor": executor, "start": True, "params": params})
        assert response.status_code == 201, response.text
        return str(response.json()["task"]["id"])

    def stats(self) -> dict[str, int]:
        return self.http.get(f"{API}/tasks/stats").json()["stats"]  # type: ignore[no-any-return]

    def wait_until(self, condition: Any, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out waiting for the server"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Send `sig`; (exit status, seconds until the process ended)."""
        self.http.close()
        began = time.monotonic()
        self.process.send_signal(sig)
        status = self.process.wait(timeout=self.grace + 10)
        return status, time.monotonic() - began


@contextmanager
def server(tmp_path: Path, *command: str, grace_ms: int, **env: str) -> Iterator[Server]:
    port = free_port()
    environ = {
        **os.environ,
        "PORT": str(port),
        "SECRET_KEY": SECRET,
        "LOG_FORMAT": "json",
        "TASK_CREATE_RATE": "0",
        "SHUTDOWN_GRACE_MS": str(grace_ms),
        **env,
    }
    log = tmp_path / "server.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, *command], cwd=ROOT, env=environ, stderr=stderr, stdout=subprocess.DEVNULL
        )
    running = Server(process, log, f"http://127.0.0.1:{port}", grace_ms)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"the server exited early:\n{log.read_text()}"
            try:
                if running.http.get("/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the server did not become ready:\n{log.read_text()}"
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def shutdown_accounting(lines: list[dict[str, Any]]) -> tuple[set[str], set[str]]:
    """(ids cancelled with reason shutdown, ids reported abandoned)."""
    cancelled = {
        str(line["task_id"])
        for line in lines
        if str(line["message"]).startswith("Cancelled") and line.get("reason") == "shutdown"
    }
    abandoned = {str(line["task_id"]) for line in lines if str(line["message"]).startswith("Abandoned task")}
    return cancelled, abandoned


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_cancels_hundreds_of_tasks_and_the_server_exits_in_time(tmp_path: Path, sig: int) -> None:
    """300 long tasks (250 running, 50 queued): after the signal every one is cancelled with
    reason shutdown, in the log, and the process exits 0 well within SHUTDOWN_GRACE_MS."""
    with server(
        tmp_path, "-m", "async_tasks.cli", "serve", grace_ms=5000, MAX_CONCURRENT_TASKS_PER_SESSION="250"
    ) as srv:
        ids = {srv.create("sample", delayMs=120_000) for _ in range(300)}
        srv.wait_until(lambda: srv.stats()["running"] == 250)
        assert srv.stats()["pending"] == 50
        status, elapsed = srv.stop(sig)
    assert status == 0, srv.log.read_text()[-3000:]
    assert elapsed < srv.grace + EXIT_MARGIN
    lines = srv.lines()
    cancelled, abandoned = shutdown_accounting(lines)
    assert cancelled == ids and not abandoned
    running_lines = [line for line in lines if str(line["message"]).startswith("Cancelled execution")]
    assert len(running_lines) == 250
    assert all(line["status"] == "cancelled" and line["executor"] == "sample" for line in running_lines)
    assert any(str(line["message"]).startswith("Shutting down: cancelling 250 running and 50 queued") for line in lines)
    # The story in order: the request, the plan, then the cancellations.
    messages = [str(line["message"]) for line in lines]
    requested = next(i for i, m in enumerate(messages) if m.startswith("Shutdown requested"))
    planned = next(i for i, m in enumerate(messages) if m.startswith("Shutting down: cancelling"))
    first_cancel = next(i for i, m in enumerate(messages) if m.startswith("Cancelled"))
    assert requested < planned < first_cancel, messages[requested - 2 : planned + 3]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("stubborn", "forced_line"),
    [
        # A shielded attempt never unwinds: the lifespan cannot end, the watchdog ends the process.
        ("stubborn-shield", "Shutdown did not finish within SHUTDOWN_GRACE_MS"),
        # A blocked worker thread lets the lifespan end but would keep the interpreter alive.
        ("stubborn-thread", "Exiting with 2 abandoned tasks"),
    ],
)
def test_executors_that_ignore_cancellation_cannot_hold_the_process(
    tmp_path: Path, stubborn: str, forced_line: str
) -> None:
    """The process still exits (status 1) within SHUTDOWN_GRACE_MS; the stubborn tasks are
    reported abandoned and every task is accounted for in the log."""
    with server(tmp_path, "-m", "tests.serve_with_stubborn", grace_ms=1000) as srv:
        stuck = {srv.create(stubborn) for _ in range(2)}
        ordinary = {srv.create("sample", delayMs=120_000) for _ in range(50)}
        srv.wait_until(lambda: srv.stats()["running"] == 52)
        status, elapsed = srv.stop()
    assert status == 1, srv.log.read_text()[-3000:]
    assert elapsed < srv.grace + EXIT_MARGIN
    lines = srv.lines()
    cancelled, abandoned = shutdown_accounting(lines)
    assert cancelled == stuck | ordinary
    assert abandoned == stuck
    assert any(str(line["message"]).startswith(forced_line) for line in lines)

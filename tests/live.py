"""A real uvicorn server in a thread, for tests that need real HTTP (client, CLI, browser).

    from tests.live import live_server  # the fixture; yields the base URL

The server listens on 127.0.0.1 on a free port (port 0), serves `create_app(...)`
with the test executors beside the installed ones, and stops at the end of the
module. Session isolation is on and IP mapping off, so every client without a
token gets its own session (as two browsers or two notebooks would).
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from litestar import Litestar

from async_tasks.settings import Settings
from async_tasks.web.app import create_app
from tests.helpers import SECRET, TEST_EXECUTORS

#: The project's root: server processes start there (as the docs' commands do).
ROOT = Path(__file__).resolve().parent.parent

START_TIMEOUT_S = 15.0


def live_app(executors: Any = TEST_EXECUTORS, **overrides: Any) -> Litestar:
    """The app a live server runs; keyword arguments override `Settings` fields."""
    fields: dict[str, Any] = {
        "secret_key": SECRET,
        "task_create_rate": 0.0,
        "auto_map_session_by_ip": False,
        "shutdown_grace_ms": 1000,
    }
    fields.update(overrides)
    return create_app(Settings(**fields), executors, environ={})


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", **options: Any) -> Iterator[str]:
    """Run `app` (an ASGI app) with uvicorn in a daemon thread; yield its base URL; stop it.
    `options` override the uvicorn config (``ws="auto"`` for WebSockets)."""
    config = uvicorn.Config(
        app,
        **{
            "host": host,
            "port": 0,
            "lifespan": "on",
            "ws": "none",
            "log_config": None,
            "access_log": False,
            "timeout_graceful_shutdown": 2,
            **options,
        },
    )
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.run()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=run, name="live-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    # uvicorn offers no start event: poll its `started` flag with short waits, bounded.
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError(f"the live server did not start: {errors[0] if errors else 'exited'}")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the live server did not start within {START_TIMEOUT_S} s")
        thread.join(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        if thread.is_alive():  # pragma: no cover - a hung shutdown
            server.force_exit = True
            thread.join(5)


@pytest.fixture(scope="module")
def live_server() -> Iterator[str]:
    """The base URL of a real server running `live_app()` for this test module."""
    with serve_in_thread(live_app()) as url:
        yield url


def start_server_process(
    command: list[str], env: dict[str, str], port: int, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start a server process (run from `cwd`, the project's root unless given) and return once it listens on
    `port`. Another process binding its port sends no event this one could wait on, so
    this tries to connect in short steps, bounded: raises with the server's output if it
    exits first, or after 20 s. The output goes to a file, never a pipe nobody reads (a
    full pipe would stop a talkative server mid-test)."""
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=output)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                output.seek(0)
                raise RuntimeError(f"{command} exited: {output.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return process
            except OSError:
                time.sleep(0.05)
        process.kill()
        process.wait()
    raise RuntimeError(f"{command} did not start listening on {port}")

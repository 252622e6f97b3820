"""Servers the project's tests (and benchmarks) start: a free port, a throwaway Redis.

Project plumbing, not the user's helpers (those are `async_tasks.testing`):

- `free_port`: a TCP port nothing listens on, for a test that starts a real server;
- `redis_server`: a ``redis-server`` of its own (no persistence) on a free port, for the
  Redis backend's tests; stopped by its PID when the block ends.
"""

from __future__ import annotations

import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for a test that starts a real server)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(executable: str = "redis-server", *, port: int | None = None, timeout: float = 10) -> Iterator[str]:
    """Run a ``redis-server`` of its own on a loopback port (a free one by default),
    without persistence, and give its URL (``redis://127.0.0.1:<port>/0``); it is stopped
    (by PID) when the block ends. Raises `FileNotFoundError` when it is not installed.

    Safe beside other test processes doing the same (xdist workers): the server must say
    itself that it is ready, and a free port taken meanwhile by another is given up for a
    new one."""
    path = shutil.which(executable)
    if path is None:
        raise FileNotFoundError(f"{executable} is not installed (Debian: apt-get install redis-server)")
    for _ in range(1 if port else 3):
        chosen = port or free_port()
        process = subprocess.Popen(
            [path, "--port", str(chosen), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            bufsize=0,  # unbuffered: what `select` says is there is all there is
        )
        try:
            if _ready(process, time.monotonic() + timeout):
                yield f"redis://127.0.0.1:{chosen}/0"
                return
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    raise RuntimeError(f"redis-server did not start on port {chosen} (status {process.returncode})")


def _ready(process: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait for the redis-server `process` to say it accepts connections (its own log line,
    so the server that answers is ours); False if it exited first (its port was taken).
    Its later lines are read and dropped, so its log never fills the pipe."""
    assert process.stdout is not None
    output = process.stdout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([output], [], [], remaining)[0]:
            raise RuntimeError("redis-server did not say it was ready in time")
        line = output.readline()
        if not line:
            return False
        if b"Ready to accept connections" in line:
            threading.Thread(target=output.read, daemon=True).start()
            return True

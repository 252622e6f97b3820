"""Servers the project's tests (and benchmarks) start: a free port, a throwaway Redis.

Project plumbing, not the user's helpers (those are `async_tasks.testing`):

- `free_port`: a TCP port nothing listens on, for a test that starts a real server;
- `redis_server`: a ``redis-server`` of its own (no persistence) on a free port, for the
  Redis backend's tests; stopped by its PID when the block ends.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
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

    Safe beside other test processes doing the same (xdist workers): the server that
    answers must report this process's PID, and a free port taken meanwhile by another
    is given up for a new one."""
    path = shutil.which(executable)
    if path is None:
        raise FileNotFoundError(f"{executable} is not installed (Debian: apt-get install redis-server)")
    for _ in range(1 if port else 3):
        chosen = port or free_port()
        process = subprocess.Popen(
            [path, "--port", str(chosen), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if _answers(process, chosen, time.monotonic() + timeout):
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


def _answers(process: subprocess.Popen[bytes], port: int, deadline: float) -> bool:
    """Wait until the redis-server `process` answers on `port`; False if it exited (the port was taken)."""
    while True:  # the server's own start-up
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"INFO server\r\n")
                reply = b""
                while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    reply += chunk
                found = re.search(rb"process_id:(\d+)", reply)
                if found is not None:
                    return int(found.group(1)) == process.pid or _gone(process)
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not answer on port {port}")
        time.sleep(0.01)


def _gone(process: subprocess.Popen[bytes]) -> bool:
    """Another server holds the port: ours is exiting (False once it has)."""
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return False

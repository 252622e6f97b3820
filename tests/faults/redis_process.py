"""A throwaway redis-server that a test can hang, kill and restart.

    with RedisProcess(appendonly=True) as redis:
        ...                      # clients use redis.url
        redis.kill()             # SIGKILL: what a crash or an OOM kill does
        redis.restart()          # same port, same directory: the AOF brings the data back

Readiness is not polled: the server runs under systemd's notify protocol
(``--supervised systemd``) and says ``READY=1`` on a socket of ours once it accepts
connections, its AOF loaded; its exit (a port taken meanwhile) is seen on a pidfd.
The server is stopped by its PID, never by name.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tests.servers import free_port


class RedisProcess:
    """A redis-server on a loopback port (a free one by default) with a temporary
    directory of its own, without persistence unless `appendonly` (AOF, ``appendfsync
    everysec``: Redis writes the file before it replies, so a SIGKILL loses no answered
    write unless a slow disk made it postpone writing). `arguments` are added to its
    command line. A context manager; or `start`
    and `close`. Raises `FileNotFoundError` when redis-server is not installed."""

    def __init__(
        self,
        *,
        appendonly: bool = False,
        port: int | None = None,
        executable: str = "redis-server",
        arguments: Sequence[str] = (),
        timeout: float = 10,
    ) -> None:
        path = shutil.which(executable)
        if path is None:
            raise FileNotFoundError(f"{executable} is not installed (Debian: apt-get install redis-server)")
        self.executable = path
        self.appendonly = appendonly
        self.port = port or 0
        self.arguments = list(arguments)
        self.timeout = timeout
        self.directory: Path | None = None
        self._fixed_port = port is not None
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the redis-server is not started")
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """What the server wrote (every run of it), for a failing test's message."""
        path = self.directory / "redis.log" if self.directory else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def start(self) -> RedisProcess:
        """Start it and return once it accepts connections."""
        if self.directory is not None:
            raise RuntimeError("the redis-server was already started: restart() it")
        self.directory = Path(tempfile.mkdtemp(prefix="redis-"))
        for _ in range(1 if self._fixed_port else 3):
            # A free port can be taken by another process before the server binds it.
            port = self.port if self._fixed_port else free_port()
            if self._launch(port):
                self.port = port
                return self
        raise RuntimeError(f"redis-server did not start on port {port}:\n{self.log()}")

    def pause(self) -> None:
        """SIGSTOP: a hung Redis; connections are accepted by the kernel, nothing answers.
        Returns once it has stopped."""
        if not self._paused:
            os.kill(self.pid, signal.SIGSTOP)
            os.waitid(os.P_PID, self.pid, os.WSTOPPED)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT: it runs what it received meanwhile and answers. Returns once it runs."""
        if self._paused:
            os.kill(self.pid, signal.SIGCONT)
            os.waitid(os.P_PID, self.pid, os.WCONTINUED)
            self._paused = False

    def kill(self) -> None:
        """SIGKILL, and reap it: every connection drops, nothing is written on the way out."""
        if self.alive:
            os.kill(self.pid, signal.SIGKILL)
        if self._process is not None:
            self._process.wait()
        self._paused = False

    def stop(self) -> None:
        """SIGTERM (resumed first if paused), SIGKILL if it has not exited within 5 s."""
        if not self.alive or self._process is None:
            return
        self.resume()
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, *, graceful: bool = False) -> None:
        """Start it again on the same port and directory (so an AOF restores the data);
        a server still running is killed first (`stop`ped if `graceful`)."""
        if self.directory is None:
            raise RuntimeError("the redis-server was never started: start() it")
        if graceful:
            self.stop()
        else:
            self.kill()
        if not self._launch(self.port):
            raise RuntimeError(f"redis-server did not start again on port {self.port}:\n{self.log()}")

    def close(self) -> None:
        """Stop it and remove its directory."""
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _launch(self, port: int) -> bool:
        """Run the server on `port` until it is ready; False if it exited first (the port taken)."""
        assert self.directory is not None
        notify_path = self.directory / "notify"
        notify_path.unlink(missing_ok=True)
        command = [self.executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        command += ["--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec"]
        # DEBUG SLEEP is how a test makes one slow command (only from loopback clients).
        command += ["--enable-debug-command", "local", "--supervised", "systemd", *self.arguments]
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
            open(self.directory / "redis.log", "ab") as log,
        ):
            notify.bind(str(notify_path))
            environ = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
            process = self._process = subprocess.Popen(command, env=environ, stdout=log, stderr=subprocess.STDOUT)
            exited = os.pidfd_open(process.pid)
            try:
                deadline = time.monotonic() + self.timeout
                while (left := deadline - time.monotonic()) > 0:
                    readable, _, _ = select.select([notify.fileno(), exited], [], [], left)
                    if notify.fileno() in readable and b"READY=1" in notify.recv(4096):
                        return True
                    if exited in readable:
                        process.wait()
                        return False
            finally:
                os.close(exited)
        self.kill()
        raise RuntimeError(f"redis-server did not get ready within {self.timeout} s:\n{self.log()}")

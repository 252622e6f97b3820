"""A throwaway PostgreSQL cluster that a test can hang, kill and restart.

    with PostgresProcess() as postgres:
        ...                      # clients use postgres.url
        postgres.pause()         # SIGSTOP to every process of the cluster: a hung server
        postgres.kill()          # SIGKILL to every process: a crash (the data stays on disk)
        postgres.restart()       # same port, same directory: recovery brings the data back

`initdb` makes a cluster in a temporary directory (trust authentication, no fsync: a
test's data needs no durability across power cuts, only across process deaths) once per
test process; every later cluster starts as a copy of that one (initdb costs a second of
CPU, a copy a tenth of it). The server is started directly (no pg_ctl), in a process group of its own, on a loopback
port. Readiness is not polled: the server runs under systemd's notify protocol and says
``READY=1`` on a socket of ours once it accepts connections. Run as root, the cluster
belongs to the ``postgres`` user (initdb refuses root). The server is stopped by its PID,
never by name.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.servers import free_port


def binary(name: str) -> str:
    """Where PostgreSQL's `name` (initdb, postgres) is: on PATH, or in Debian's versioned
    directory (the newest). `FileNotFoundError` when PostgreSQL is not installed."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if versions:
        return versions[-1]
    raise FileNotFoundError(f"{name} is not installed (Debian: apt-get install postgresql)")


#: This process's freshly made cluster, copied by each `PostgresProcess.start` (see `_template`).
_TEMPLATE: Path | None = None


class PostgresProcess:
    """A PostgreSQL cluster of its own on a loopback port (a free one by default), in a
    temporary directory. A context manager; or `start` and `close`."""

    def __init__(self, *, port: int | None = None, timeout: float = 20) -> None:
        self.initdb = binary("initdb")
        self.postgres = binary("postgres")
        self.port = port or 0
        self.timeout = timeout
        self.directory: Path | None = None
        self._fixed_port = port is not None
        self._process: subprocess.Popen[bytes] | None = None
        self._paused: list[int] = []
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                raise FileNotFoundError("initdb refuses to run as root, and there is no postgres user") from None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the server is not started")
        return self._process.pid

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        path = self.directory / "postgres.log" if self.directory else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def start(self) -> PostgresProcess:
        """Make the cluster and start the server; return once it accepts connections."""
        if self.directory is not None:
            raise RuntimeError("the server was already started: restart() it")
        self.directory = self._new_directory()
        # Copied by the cluster's owner, keeping the modes (0700) the server insists on.
        subprocess.run(
            ["cp", "-a", str(self._template()), str(self.directory / "data")],
            check=True, stderr=subprocess.PIPE, user=self._uid, group=self._gid, extra_groups=self._groups,
        )  # fmt: skip
        for _ in range(1 if self._fixed_port else 3):
            # A free port can be taken by another process before the server binds it.
            port = self.port if self._fixed_port else free_port()
            if self._launch(port):
                self.port = port
                return self
        raise RuntimeError(f"postgres did not start on port {port}:\n{self.log()}")

    def processes(self) -> list[int]:
        """The server and its children (backends, background workers)."""
        found = [self.pid]
        try:
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        except OSError:
            children = []
        return found + [int(child) for child in children]

    def pause(self) -> None:
        """SIGSTOP every process of the cluster: connections are accepted by the kernel,
        nothing answers. Returns once they have stopped."""
        if self._paused:
            return
        self._paused = self.processes()
        for pid in self._paused:
            _signal(pid, signal.SIGSTOP)
        for pid in self._paused:
            _wait_state(pid, stopped=True)

    def resume(self) -> None:
        """SIGCONT: it answers what it received meanwhile."""
        paused, self._paused = self._paused, []
        for pid in paused:
            _signal(pid, signal.SIGCONT)
        for pid in paused:
            _wait_state(pid, stopped=False)

    def kill(self) -> None:
        """SIGKILL every process of the cluster, and reap the server: every connection drops."""
        if self.alive:
            for pid in self.processes():
                _signal(pid, signal.SIGKILL)
        if self._process is not None:
            self._process.wait()
        self._paused = []

    def stop(self) -> None:
        """A fast shutdown (SIGINT: sessions ended, data written), SIGKILL if not done within 10 s."""
        if not self.alive or self._process is None:
            return
        self.resume()
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, *, graceful: bool = False) -> None:
        """Start it again on the same port and data (a crash is recovered from); a server
        still running is killed first (`stop`ped if `graceful`)."""
        if self.directory is None:
            raise RuntimeError("the server was never started: start() it")
        if graceful:
            self.stop()
        else:
            self.kill()
        if not self._launch(self.port):
            raise RuntimeError(f"postgres did not start again on port {self.port}:\n{self.log()}")

    def close(self) -> None:
        """Stop it and remove its directory."""
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def _new_directory(self) -> Path:
        directory = Path(tempfile.mkdtemp(prefix="postgres-"))
        if self._user is not None:
            os.chown(directory, self._user.pw_uid, self._user.pw_gid)
        return directory

    def _template(self) -> Path:
        """A cluster made by initdb for this process, once (removed when the process exits)."""
        global _TEMPLATE
        if _TEMPLATE is None:
            directory = self._new_directory()
            atexit.register(shutil.rmtree, directory, ignore_errors=True)
            subprocess.run(
                [self.initdb, "-D", str(directory / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                 "--locale=C", "--no-sync", "--no-instructions"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, user=self._uid, group=self._gid,
                extra_groups=self._groups,
            )  # fmt: skip
            _TEMPLATE = directory / "data"
        return _TEMPLATE

    @property
    def _uid(self) -> int | None:
        return None if self._user is None else self._user.pw_uid

    @property
    def _gid(self) -> int | None:
        return None if self._user is None else self._user.pw_gid

    @property
    def _groups(self) -> list[int] | None:
        return None if self._user is None else []

    def _launch(self, port: int) -> bool:
        """Run the server on `port` until it is ready; False if it exited first (the port taken)."""
        assert self.directory is not None
        notify_path = self.directory / "notify"
        notify_path.unlink(missing_ok=True)
        command = [self.postgres, "-D", str(self.directory / "data"), "-p", str(port), "-k", str(self.directory)]
        for setting in ("listen_addresses=127.0.0.1", "fsync=off", "synchronous_commit=off", "full_page_writes=off",
                        "shared_buffers=16MB", "max_connections=200", "log_min_messages=warning"):  # fmt: skip
            command += ["-c", setting]
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify,
            open(self.directory / "postgres.log", "ab") as log,
        ):
            notify.bind(str(notify_path))
            if self._user is not None:
                os.chown(notify_path, self._user.pw_uid, self._user.pw_gid)
                os.chown(self.directory / "postgres.log", self._user.pw_uid, self._user.pw_gid)
            environ = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
            process = self._process = subprocess.Popen(
                command,
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=self._uid,
                group=self._gid,
                extra_groups=self._groups,
            )
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
        raise RuntimeError(f"postgres did not get ready within {self.timeout} s:\n{self.log()}")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_state(pid: int, *, stopped: bool, timeout: float = 5) -> None:
    """Until process `pid` is stopped (or runs again), read from /proc."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            return  # gone
        if (state == "T") == stopped:
            return
        time.sleep(0.001)
    raise RuntimeError(f"process {pid} did not {'stop' if stopped else 'continue'}")

"""The measured processes: servers started from the project's root, each pinned to the
server core, and the CPU time they and other processes take (from /proc).

`app_server` is the task server (its app factory named once, in `bench.TASK_APP_FACTORY`;
settings from `bench.inproc.TUNED_ENV`), `hello_server` the bare Litestar anchor,
`peer_server` a peer of `bench/peers/`; `run_inproc` runs one in-process measurement of
`bench.inproc` in a fresh interpreter on the same core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import TASK_APP_FACTORY
from bench.api import API
from bench.inproc import TUNED_ENV, rss_bytes
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"

SERVER_CORE = "0"
CLIENT_CORE = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
UVICORN_OPTS = [
    "--loop",
    "uvloop",
    "--http",
    "httptools",
    "--no-access-log",
    "--log-level",
    "warning",
    "--host",
    "127.0.0.1",
]

#: The peers measured beside the task server in every HTTP round: key -> (label, what it is, uvicorn app).
PEERS = {
    "minimal": (
        "minimal tracked app",
        "bare Litestar, a dict of msgspec records, one anyio task group for the app's life",
        "bench.peers.minimal_app:app",
    ),
    "fastapi": (
        "FastAPI + BackgroundTasks",
        "pydantic records in a dict, response models",
        "bench.peers.fastapi_app:app",
    ),
}
#: Every system of the ratio tables, in table order: key -> label.
SYSTEMS = {**{key: label for key, (label, _, _) in PEERS.items()}, "app": "async-tasks (all defaults on)"}


def run_key(system: str, kind: str) -> str:
    """Name of a wrk run: the task server keeps its historical names (`status`, `create`...)."""
    return kind if system == "app" else f"{system}_{kind}"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def core_busy_seconds(core: str) -> float:
    """Busy time of one core (all processes), from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if line.startswith(f"cpu{core} "):
                values = [int(v) for v in line.split()[1:]]
                idle = values[3] + values[4]  # idle + iowait
                return (sum(values[:8]) - idle) / CLK_TCK
    raise RuntimeError(f"no cpu{core} in /proc/stat")


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    health: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    #: The tree the server's code comes from (`bench.ab` runs an earlier commit's).
    cwd: Path = ROOT

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, log_dir: Path) -> Server:
        self.log_path = log_dir / f"{self.name}.log"
        argv = ["taskset", "-c", SERVER_CORE, *[a.replace("{port}", str(self.port)) for a in self.argv]]
        env = {**os.environ, **self.env, "PYTHONPATH": str(self.cwd)}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + self.health, timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer {self.health} within 60 s; see {self.log_path}")

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def rss(self) -> int:
        return rss_bytes(self.pid)


@contextlib.contextmanager
def running(*servers: Server, log_dir: Path) -> Iterator[None]:
    try:
        for server in servers:
            server.start(log_dir)
        yield
    finally:
        for server in servers:
            server.stop()


def app_server(
    args: argparse.Namespace, name: str = "app", factory: str | None = None, extra_env: dict[str, str] | None = None
) -> Server:
    env = {**TUNED_ENV, **(extra_env or {})}
    if factory is None and args.app_via == "serve":
        argv = [sys.executable, "-m", "async_tasks.cli", "serve", "--host", "127.0.0.1", "--port", "{port}"]
    else:
        argv = [
            sys.executable,
            "-m",
            "uvicorn",
            factory or TASK_APP_FACTORY,
            "--factory",
            *UVICORN_OPTS,
            "--port",
            "{port}",
        ]
    return Server(name, argv, env, health="/health")


def hello_server() -> Server:
    argv = [sys.executable, "-m", "uvicorn", "bench.hello_app:app", *UVICORN_OPTS, "--port", "{port}"]
    return Server("hello", argv, {}, health="/")


def peer_server(key: str) -> Server:
    argv = [sys.executable, "-m", "uvicorn", PEERS[key][2], *UVICORN_OPTS, "--port", "{port}"]
    return Server(key, argv, {}, health=f"{API}/tasks?limit=1")


def run_inproc(*argv: str) -> dict[str, Any]:
    """``python -m bench.inproc ARGV`` in a fresh interpreter pinned to the server core: its figures."""
    log("in-process: " + " ".join(argv))
    out = subprocess.run(
        ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "bench.inproc", *argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    ).stdout
    match = re.search(r"^BENCH_JSON (.*)$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"bench.inproc {argv} printed no result:\n{out}")
    result: dict[str, Any] = json.loads(match.group(1))
    return result

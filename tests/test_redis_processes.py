"""The Redis backend with real processes: redis-server, two API servers and a worker,
started from the lines of the demo script's scale-out step (ports rewritten), and that
step's curl blocks run as written. The ``async-tasks`` lines run the CLI's entry
point in processes forked from a server that imported the project once
(`tests.forked`), so starting and restarting them is quick. Every process is started
here and stopped by its PID; waits poll the HTTP API with deadlines. One cluster serves
every test of the module: session-scoped, so that however xdist orders the module's
tests (one group of `tests.scheduling`, one worker) it starts once."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from tests import forked
from tests.doc_pages import blocks
from tests.servers import free_port
from tests.test_demo_guide import SCALE_OUT, SEPARATOR

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("curl") is None or shutil.which("redis-server") is None, reason="needs curl and redis-server"
    ),
]
ROOT = Path(__file__).resolve().parent.parent
API = "/api/v1"
PROCESSES = "# scale-out: each command in its own terminal"
ADMIN_KEY = "cluster-admin-key-0123456789"


def scale_out_blocks() -> tuple[list[str], list[str]]:
    """The scale-out step's process lines (redis-server, two servers, a worker of every
    executor, a worker of `sample` only) and curl blocks (not those it runs by hand)."""
    scale_out = [b for b in blocks("bash") if b.startswith(SCALE_OUT)]
    processes = [b for b in scale_out if b.startswith(PROCESSES)]
    assert len(processes) == 1, "the scale-out section starts its processes in one block"
    lines = [line for line in processes[0].splitlines()[1:] if line.strip()]
    assert len(lines) == 5 and "redis-server" in lines[0], lines
    assert "worker" in lines[3] and "--executors" not in lines[3] and "--executors sample " in lines[4], lines
    return lines, [b for b in scale_out if not b.startswith(SCALE_OUT + ":")]


class Process:
    """One process of the guide, started from its command line, its output in a file:
    redis-server through bash as written, ``async-tasks`` lines forked (`tests.forked`)."""

    def __init__(self, name: str, line: str, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.name, self.line, self.env, self.log, self.port = name, line, env, log, port
        self.popen: subprocess.Popen[bytes] | None = None
        self.forked: BaseProcess | None = None

    def start(self) -> Process:
        if self.line.startswith("redis-server"):
            out = self.log.open("ab")
            # `exec env LINE`: the process started is the guide's command itself (stopped by its PID).
            self.popen = subprocess.Popen(
                ["bash", "-c", "exec env " + self.line], cwd=ROOT, env=self.env, stdout=out, stderr=out
            )
            out.close()
        else:
            self.forked = forked.start(self.line, self.env, self.log)
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else self.forked.pid if self.forked is not None else None

    @property
    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.forked is not None and self.forked.is_alive()

    def wait_ready(self, deadline: float) -> None:
        """Until the server answers /health, the worker has said it runs, or Redis listens."""
        while time.monotonic() < deadline:  # the process's own start-up
            if not self.alive:
                raise RuntimeError(f"{self.name} exited: {self.output()}")
            if self.name.startswith("worker"):
                if "async-tasks worker:" in self.output():
                    return
            else:
                try:
                    if self.name == "redis":
                        with socket.create_connection(("127.0.0.1", self.port or 0), timeout=0.2):
                            return
                    elif httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=0.5).status_code == 200:
                        return
                except (OSError, httpx.TransportError):
                    pass
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not start: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def send(self, sig: int) -> None:
        if self.alive and self.pid is not None:
            # A forked process is reaped by the fork server, which tells us a moment later:
            # `alive` can still say yes about a PID that is gone.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if not self.alive:
            return
        self.send(sig)
        if self.popen is not None:
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        elif self.forked is not None:
            self.forked.join(timeout=10)
            if self.forked.is_alive():
                self.forked.kill()
                self.forked.join()


class Cluster:
    def __init__(self, logs: Path) -> None:
        self.ports = {"6379": free_port(), "3000": free_port(), "3001": free_port()}
        self.lines, self.blocks = scale_out_blocks()
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            # Faster than the defaults, so the tests wait less for what they check.
            "WORKER_LEASE_MS": "600",
            "RETRY_BACKOFF_MS": "0",
            "SHUTDOWN_GRACE_MS": "300",
            "TASK_CREATE_RATE": "0",
            "API_CALL_ALLOW_HOSTS": "127.0.0.1",
            "ADMIN_API_KEYS": ADMIN_KEY,
        }
        self.logs = logs
        self.redis = Process("redis", self.rewrite(self.lines[0]), self.env, logs / "redis.log", self.ports["6379"])
        self.apis = [
            Process(f"api{i}", self.rewrite(self.lines[1 + i]), self.env, logs / f"api{i}.log", self.ports[port])
            for i, port in enumerate(("3000", "3001"))
        ]
        self.workers: list[Process] = []
        self.new_worker()
        #: The guide's worker of `sample` only.
        self.sample_worker = self.new_worker(self.lines[4])

    def rewrite(self, text: str) -> str:
        """The guide's text with this cluster's ports."""
        return re.sub(
            r"(localhost:|--port )(6379|3000|3001)\b", lambda m: m.group(1) + str(self.ports[m.group(2)]), text
        )

    def start(self, *processes: Process) -> None:
        for process in processes:
            process.start()
        deadline = time.monotonic() + 30
        for process in processes:
            process.wait_ready(deadline)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.apis[i].port}"

    def new_worker(self, line: str | None = None) -> Process:
        """A worker from the guide's line (by default the one of every executor)."""
        name = f"worker{len(self.workers)}"
        worker = Process(name, self.rewrite(line or self.lines[3]), self.env, self.logs / f"{name}.log")
        self.workers.append(worker)
        return worker

    def stop(self, *processes: Process, sig: int = signal.SIGTERM) -> None:
        """Signal them all, then wait for each."""
        for process in processes:
            process.send(sig)
        for process in processes:
            process.stop(sig)

    def kill(self) -> None:
        """The end of the tests: every process killed by its PID (nothing left to check)."""
        self.stop(*self.apis, *self.workers, self.redis, sig=signal.SIGKILL)

    def live_workers(self) -> list[Process]:
        return [w for w in self.workers if w.alive]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    forked.warm_up()  # imports while Redis starts
    made = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        made.start(made.redis)
        made.start(*made.apis, *made.workers)
        yield made
    finally:
        made.kill()


def test_the_guide_s_scale_out_section_runs_as_written(cluster: Cluster) -> None:
    """The demo script's curl blocks: create on one server, poll and stream on the other, cancel across them,
    /ready."""
    script = ["set -eu"]
    for block in cluster.blocks:
        script += [f"echo '{SEPARATOR}'", cluster.rewrite(block)]
    result = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    outputs = result.stdout.split(SEPARATOR + "\n")[1:]
    assert len(outputs) == len(cluster.blocks)
    for block, output in zip(cluster.blocks, outputs, strict=True):
        assert output.strip() and '"success":false' not in output, f"{block}\n->\n{output}"
    status, stream, control = outputs
    assert '"status":"pending"' in status or '"status":"running"' in status
    assert "event: snapshot" in stream and '"status":"completed"' in stream and "event: end" in stream
    assert '"status":"cancelled"' in control and '"redis":"ok"' in control


@pytest.fixture
async def clients(cluster: Cluster) -> Any:
    """A client on each API process, sharing one session token."""
    async with httpx.AsyncClient(base_url=cluster.url(0)) as a, httpx.AsyncClient(base_url=cluster.url(1)) as b:
        token = (await a.post(f"{API}/session")).json()["token"]
        a.headers["X-Session-Token"] = b.headers["X-Session-Token"] = token
        yield a, b


async def until(check: Callable[[], Any], limit: float = 5.0, every: float = 0.02) -> Any:
    """Poll `check` (an async callable) until it returns something truthy: the state is in
    other processes, and polling the HTTP API is what a client of them does."""
    with anyio.fail_after(limit):
        while not (result := await check()):  # noqa: ASYNC110
            await anyio.sleep(every)
    return result


async def create(client: httpx.AsyncClient, executor: str = "sample", **body: Any) -> dict[str, Any]:
    response = await client.post(f"{API}/demo/tasks/{executor}", json=body)
    assert response.status_code == 201, response.text
    return response.json()["task"]  # type: ignore[no-any-return]


async def task_of(client: httpx.AsyncClient, task_id: str) -> dict[str, Any]:
    response = await client.get(f"{API}/tasks/{task_id}")
    assert response.status_code == 200, response.text
    return response.json()["task"]  # type: ignore[no-any-return]


def in_status(client: httpx.AsyncClient, task_id: str, *statuses: str, attempts: int = 1) -> Callable[[], Any]:
    async def check() -> dict[str, Any] | None:
        task = await task_of(client, task_id)
        return task if task["status"] in statuses and task["attempts"] >= attempts else None

    return check


async def test_a_task_made_on_one_api_is_polled_and_streamed_on_the_other(clients: Any) -> None:
    """Create on A, follow the SSE stream and poll on B: the same events and state, the
    worker's log lines each once; lists and stats match."""
    a, b = clients
    task = await create(a, delayMs=600)
    events: list[dict[str, Any]] = []
    async with b.stream("GET", f"{API}/tasks/{task['id']}/events", timeout=10) as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    lines = [entry["n"] for e in events for entry in e.get("lines", []) + e.get("logs", [])]
    assert sorted(set(lines)) == [1, 2, 3, 4, 5]  # the sample's five steps, from the worker
    events = [e for e in events if e["type"] not in ("end", "log", "eta")]  # the task's states
    assert events[0]["type"] == "snapshot" and events[-1]["status"] == "completed"
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 100
    status = (await b.get(f"{API}/tasks/{task['id']}/status")).json()
    assert status["status"] == "completed" and status["progress"] == 100
    for path in ("/tasks", "/tasks/stats", "/tasks?status=completed&limit=1"):
        assert (await a.get(API + path)).json() == (await b.get(API + path)).json()
    stranger = (await b.get(f"{API}/tasks/{task['id']}/status", headers={"X-Session-Token": ""})).status_code
    assert stranger == 404


async def test_cancel_on_one_api_stops_the_attempt_on_its_worker(clients: Any, cluster: Cluster) -> None:
    """Cancelled at once, progress frozen, and the worker stops the executor within a second."""
    a, b = clients
    task = await create(a, delayMs=20_000)
    running = await until(in_status(b, task["id"], "running"))
    response = await b.post(f"{API}/tasks/{task['id']}/cancel")
    asked = time.monotonic()
    assert response.status_code == 200 and response.json()["task"]["status"] == "cancelled"
    frozen = response.json()["task"]["progress"]
    assert frozen >= running["progress"]
    line = f"Cancelled execution of task {task['id']}"

    async def stopped() -> bool:
        return any(line in worker.output() for worker in cluster.workers)

    await until(stopped, limit=1)
    assert time.monotonic() - asked < 1
    assert (await task_of(a, task["id"]))["progress"] == frozen


async def test_idempotent_creates_on_two_apis_make_one_task(clients: Any) -> None:
    """Two concurrent creates with one Idempotency-Key, one per API process, make one task."""
    a, b = clients
    headers = {"Idempotency-Key": "one-key"}
    body = {"executor": "sample", "params": {"delayMs": 100}, "start": True}
    results: list[httpx.Response] = []

    async def post(client: httpx.AsyncClient) -> None:
        results.append(await client.post(f"{API}/tasks", json=body, headers=headers))

    async with anyio.create_task_group() as tg:
        tg.start_soon(post, a)
        tg.start_soon(post, b)
    assert sorted(r.status_code for r in results) == [200, 201]
    assert len({r.json()["task"]["id"] for r in results}) == 1


async def test_timeouts_and_retries_across_processes(clients: Any) -> None:
    """A timed-out attempt fails saying so; a failing one is retried to its budget, then dead-lettered."""
    a, b = clients
    slow = (await a.post(f"{API}/tasks", json={"executor": "sample", "params": {"delayMs": 5000},
                                                "timeoutMs": 200, "start": True})).json()["task"]  # fmt: skip
    closed = f"http://127.0.0.1:{free_port()}/"
    failing = await create(a, "api-call", endpoint=closed, maxRetries=1)
    timed_out = await until(in_status(b, slow["id"], "failed"))
    assert timed_out["error"] == "Task timed out after 200 ms"
    failed = await until(in_status(b, failing["id"], "failed", attempts=2))
    assert failed["deadLettered"] and failed["autoRetries"] == 1
    assert [h["reason"] for h in failed["history"] if h["status"] == "failed"] == ["attempt failed", "failed"]


async def test_a_killed_worker_s_task_runs_again_on_another(clients: Any, cluster: Cluster) -> None:
    """SIGKILL mid-task: the task is re-run on another worker ('worker lost', attempts
    counts it), or fails with that reason when no retry is left."""
    a, b = clients
    survivor = await create(a, delayMs=20_000, maxRetries=1)
    doomed = await create(a, delayMs=20_000)
    await until(in_status(b, survivor["id"], "running"))
    await until(in_status(b, doomed["id"], "running"))
    replacement = cluster.new_worker().start()  # starts while the others die
    cluster.stop(*[w for w in cluster.live_workers() if w is not replacement], sig=signal.SIGKILL)
    lost = await until(in_status(b, doomed["id"], "failed"))
    assert lost["history"][-1]["reason"] == "worker lost" and "lost" in lost["error"]
    again = await until(in_status(b, survivor["id"], "running", attempts=2))
    assert [h["reason"] for h in again["history"]][-3:-1] == ["worker lost", "automatic retry 1 of 1 in 0 ms"]
    await b.post(f"{API}/tasks/{survivor['id']}/cancel")


async def test_restarted_processes_find_every_task_where_it_was(clients: Any, cluster: Cluster) -> None:
    """An API process and the worker restart: every task is still there; the task the
    worker was running is handed back and finishes on the new worker."""
    a, b = clients
    done = await create(a, delayMs=0)
    await until(in_status(b, done["id"], "completed"))
    running = await create(a, delayMs=800)
    await until(in_status(b, running["id"], "running"))
    before = (await b.get(f"{API}/tasks")).json()
    # SIGTERM: the worker hands back what does not finish within its grace period; its
    # successor starts meanwhile (a rolling restart), the API process once its port is free.
    old = cluster.live_workers()
    cluster.new_worker().start()
    cluster.stop(cluster.apis[0], *old)
    cluster.start(cluster.apis[0])
    after = (await a.get(f"{API}/tasks")).json()
    assert [t["id"] for t in after["tasks"]] == [t["id"] for t in before["tasks"]]
    finished = await until(in_status(a, running["id"], "completed"), limit=8)
    assert [h["reason"] for h in finished["history"]][2:4] == ["worker shutdown", "handed back to the queue"]
    assert finished["attempts"] == 2 and finished["autoRetries"] == 0
    assert (await task_of(a, done["id"]))["status"] == "completed"


async def test_a_worker_of_some_executors_leaves_the_others_to_a_worker_that_runs_them(
    clients: Any, cluster: Cluster
) -> None:
    """With only the guide's ``--executors sample`` worker up, an api-call task waits (its
    status and the admin queues say so) while sample tasks run; a worker of every executor
    takes it as it starts, never having failed it; the admin API lists both workers with
    what each runs."""
    a, b = clients
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    if not cluster.sample_worker.alive:  # a test before may have killed it
        cluster.sample_worker = cluster.new_worker(cluster.lines[4])
        cluster.start(cluster.sample_worker)
    cluster.stop(*[w for w in cluster.live_workers() if w is not cluster.sample_worker])

    async def workers() -> list[dict[str, Any]]:
        return (await a.get(f"{API}/admin/workers", headers=admin)).json()["workers"]  # type: ignore[no-any-return]

    async def only_sample() -> bool:
        return [w["executors"] for w in await workers()] == [["sample"]]

    await until(only_sample)
    call = await create(a, "api-call", endpoint=f"{cluster.url(1)}/health")
    quick = await create(a, delayMs=0)
    await until(in_status(b, quick["id"], "completed"))
    status = (await b.get(f"{API}/tasks/{call['id']}/status")).json()
    assert status["status"] == "pending" and status["waitingReason"] == "waiting for a worker that runs `api-call`"
    queues = (await b.get(f"{API}/admin/queues", headers=admin)).json()["queues"]
    assert {"executor": "api-call", "running": 0, "queued": 1, "workers": 0} in queues

    cluster.start(cluster.new_worker())
    done = await until(in_status(b, call["id"], "completed"), limit=10)
    assert done["attempts"] == 1 and [h["status"] for h in done["history"]] == ["pending", "running", "completed"]
    listed = sorted((w["executors"] for w in await workers()), key=len)
    assert listed[0] == ["sample"] and {"sample", "api-call", "batch", "file-processing"} <= set(listed[1])

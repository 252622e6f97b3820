"""``python -m bench``: the benchmark suite (see bench/README.md and bench/RESULTS.md).

Starts the real task server, a bare Litestar hello-world app (the anchor) and two peers
serving the same routes (`bench/peers/`: a FastAPI + BackgroundTasks app and the minimal
tracked app of PERFORMANCE.md) under uvicorn with the same options, each pinned to
core 0; loads them with wrk pinned to core 1; runs the in-process measurements in fresh
interpreters pinned to core 0; prints a markdown report and writes it to ``--output``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import anyio
import httpx

from async_tasks.testing import free_port
from bench import TASK_APP_FACTORY
from bench.inproc import TUNED_ENV, rss_bytes

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WRK_LUA = BENCH / "wrk.lua"
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
POST_BODY = '{"delayMs": 0}'
API = "/api/v1"
CREATE_PATH = f"{API}/demo/tasks/sample"
LIST_PAGE = 50
LIST_PATH = f"{API}/tasks?limit={LIST_PAGE}"

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


# Targets: (key, description, comparison, threshold). The HTTP ones are issue 12's, for the
# task server (the ratios are taken in the same round, see `round_ratios`).
TARGETS = {
    "status": ("`GET /tasks/{id}/status` throughput", ">=", 0.80, "x hello GET"),
    "status_vs_minimal": ("…and ahead of the minimal app's ratio (ours ÷ minimal's)", ">", 1.0, "x"),
    "list": (
        f"`GET /tasks?limit={LIST_PAGE}` ({LIST_PAGE} tasks in the session) throughput",
        ">=",
        0.65,
        "x hello GET",
    ),
    "list_large_vs_list": (
        f"the same page of {LIST_PAGE} when the session holds many tasks, ÷ with {LIST_PAGE} "
        '("costs the same": read as within the ±10% same-round drift)',
        ">=",
        0.90,
        "x",
    ),
    "create": (
        '`POST /demo/tasks/sample` `{"delayMs": 0}` throughput (create + start + run)',
        ">=",
        0.55,
        "x hello POST",
    ),
    "create_vs_fastapi": ("…and ahead of FastAPI + BackgroundTasks (ours ÷ theirs)", ">=", 1.4, "x"),
    "create_p99": ("create p99", "<=", 3.0, "x hello POST p99"),
    "status_p99": ("status p99", "<=", 2.0, "x hello GET p99"),
    "latency": ("created → completed, zero-delay task, unloaded (median)", "<=", 1.0, "ms"),
    "finished_memory": ("memory per retained finished task", "<=", 2048, "bytes"),
    "running_memory": (
        "memory per running (sleeping) task at 100 000 running",
        "<=",
        1.5,
        "x bare anyio task-group child",
    ),
    "loaded_p99": ("`/status` p99 with 100 000 sleeping tasks", "<=", 2.0, "x unloaded p99"),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes ------------------------------------------------------------------------


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
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT)}
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
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


# -- wrk ------------------------------------------------------------------------------------


def wrk(
    url: str,
    seconds: float,
    args: argparse.Namespace,
    *,
    method: str = "GET",
    body: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    env = {**os.environ, "BENCH_METHOD": method, "BENCH_BODY": body or "", "BENCH_TOKEN": token or ""}
    argv = [
        "taskset",
        "-c",
        CLIENT_CORE,
        "wrk",
        "-t1",
        f"-c{args.connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(WRK_LUA),
        url,
    ]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    match = re.search(r"^BENCH_JSON (.*)$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no BENCH_JSON line:\n{out}")
    result: dict[str, Any] = json.loads(match.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("connect", "read", "write", "status", "timeout"))
    return result


def measure(
    server: Server,
    path: str,
    args: argparse.Namespace,
    *,
    method: str = "GET",
    body: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """`measure_once`, repeated (at most `--foreign-retries` times) while other processes
    took more than `--max-foreign` of the server's core: on a shared machine they slow the
    server, not the anchor of the same round. What a discarded run sent is kept in
    `discarded_requests`/`discarded_errors` (a discarded create run still created tasks)."""
    discarded = discarded_errors = 0
    for attempt in range(args.foreign_retries + 1):
        wait_for_quiet_core(args)
        result = measure_once(server, path, args, method=method, body=body, token=token)
        if result["foreign_cpu_share"] <= args.max_foreign or attempt == args.foreign_retries:
            break
        log(f"  other processes took {result['foreign_cpu_share']:.2f} of core {SERVER_CORE}: measuring again")
        discarded += result["requests"] + result["warmup_requests"]
        discarded_errors += result["errors"] + result["warmup_errors"]
    result.update(attempts=attempt + 1, discarded_requests=discarded, discarded_errors=discarded_errors)
    return result


def wait_for_quiet_core(args: argparse.Namespace) -> None:
    """Waits (at most `--quiet-wait` seconds) until the server core's load over one second,
    while no run is going on, is at most `--max-foreign`: cheaper than measuring again."""
    deadline = time.monotonic() + args.quiet_wait
    while True:
        before = core_busy_seconds(SERVER_CORE)
        time.sleep(1)
        busy = core_busy_seconds(SERVER_CORE) - before
        if busy <= args.max_foreign or time.monotonic() > deadline:
            return
        log(f"  core {SERVER_CORE} is {busy:.0%} busy between runs: waiting")


def sent(run: dict[str, Any], args: argparse.Namespace) -> tuple[int, int, int]:
    """(requests answered, errors, requests that may have been in flight when wrk stopped)
    over a measurement's warm-up, run and discarded runs. A request in flight or timed out
    may still have created a task that wrk did not count."""
    answered = run["requests"] + run["warmup_requests"] + run.get("discarded_requests", 0)
    errors = run["errors"] + run["warmup_errors"] + run.get("discarded_errors", 0)
    wrk_runs = run.get("attempts", 1) * (2 if args.warmup > 0 else 1)
    return answered, errors, errors + wrk_runs * args.connections


def measure_once(
    server: Server,
    path: str,
    args: argparse.Namespace,
    *,
    method: str = "GET",
    body: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Warm-up, then one measured wrk run, with the server's CPU time and the
    foreign load on its core over the run."""
    url = server.url + path
    warm = wrk(url, args.warmup, args, method=method, body=body, token=token) if args.warmup > 0 else None
    cpu_before, core_before, wall_before = proc_cpu_seconds(server.pid), core_busy_seconds(SERVER_CORE), time.time()
    result = wrk(url, args.duration, args, method=method, body=body, token=token)
    wall = time.time() - wall_before
    cpu = proc_cpu_seconds(server.pid) - cpu_before
    core = core_busy_seconds(SERVER_CORE) - core_before
    result["server_cpu_share"] = cpu / wall
    result["foreign_cpu_share"] = max(0.0, core - cpu) / wall
    result["rps_per_cpu"] = result["requests"] / cpu if cpu > 0 else float("nan")
    result["warmup_requests"] = warm["requests"] if warm else 0
    result["warmup_errors"] = warm["errors"] if warm else 0
    return result


# -- the task server's API ----------------------------------------------------------------------


def new_session(client: httpx.Client) -> str:
    response = client.post(f"{API}/session")
    response.raise_for_status()
    return str(response.json()["token"])


def session_stats(client: httpx.Client, token: str) -> dict[str, Any]:
    response = client.get(f"{API}/tasks/stats", headers={"X-Session-Token": token})
    response.raise_for_status()
    return dict(response.json()["stats"])


def wait_stats(client: httpx.Client, token: str, done: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = session_stats(client, token)
        if done(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def metric_value(client: httpx.Client, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            total += float(value)
    return total


def create_sample_tasks(client: httpx.Client, token: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        response = client.post(
            f"{API}/demo/tasks/sample",
            headers={"X-Session-Token": token},
            content=POST_BODY,
        )
        response.raise_for_status()
        ids.append(response.json()["task"]["id"])
    wait_stats(client, token, lambda s: s["completed"] == count)
    return ids


def post_many(base_url: str, count: int, token: str | None, concurrency: int = 16) -> list[str]:
    """`count` zero-delay sample tasks through `POST /demo/tasks/sample`, `concurrency` at a
    time (to fill a session or a peer's store quickly; not a measurement). Their ids."""
    headers = {"Content-Type": "application/json", **({"X-Session-Token": token} if token else {})}
    ids: list[str] = []

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        for _ in range(n):
            response = await client.post(CREATE_PATH, content=POST_BODY)
            response.raise_for_status()
            ids.append(response.json()["task"]["id"])

    async def main() -> None:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
            async with anyio.create_task_group() as group:
                for i in range(concurrency):
                    group.start_soon(worker, client, count // concurrency + (i < count % concurrency))

    anyio.run(main)
    return ids


# -- the peers' API (the three measured routes only) -------------------------------------------------


def peer_wait(base_url: str, at_least: int, timeout: float = 120) -> dict[str, int]:
    """Waits until a peer holds at least `at_least` tasks and the newest 1 000 of them (its
    page limit) are completed; returns its total and how many of those were completed."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{base_url}{API}/tasks", params={"limit": 1000}, timeout=30)
        response.raise_for_status()
        body = response.json()
        done = sum(task["status"] == "completed" for task in body["tasks"])
        state = {"total": int(body["total"]), "newest_completed": done, "newest_checked": len(body["tasks"])}
        if (state["total"] >= at_least and done == len(body["tasks"])) or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def verify_peer(base_url: str, run: dict[str, Any], total_before: int, args: argparse.Namespace) -> dict[str, Any]:
    """After a peer's create run: its store grew by what wrk counted (give or take the
    requests in flight or timed out) and the newest 1 000 tasks completed."""
    state = peer_wait(base_url, 0)
    answered, errors, unknown = sent(run, args)
    created = state["total"] - total_before
    return {
        "created": created,
        "wrk_answered": answered,
        "http_errors": errors,
        **state,
        "ok": state["newest_completed"] == state["newest_checked"] and answered <= created <= answered + unknown,
    }


# -- HTTP throughput rounds ------------------------------------------------------------------------


Group = list[tuple[str, Server, str, dict[str, Any]]]


def measure_group(group: Group, index: int, args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> None:
    """Measures a group whose first entry is its anchor: in that order in even rounds, in
    reverse order (anchor last) in odd ones, so drift within a group favours no system."""
    for name, server, path, options in group if index % 2 == 0 else group[::-1]:
        runs[name] = measure(server, path, args, **options)
        r = runs[name]
        log(
            f"  {name:22s} {r['rps']:8.0f} req/s  p99 {r['p99_us'] / 1000:6.1f} ms  "
            f"server cpu {r['server_cpu_share']:.2f}  foreign {r['foreign_cpu_share']:.2f}  "
            f"errors {r['errors'] + r['warmup_errors']}" + (f"  (attempt {r['attempts']})" if r["attempts"] > 1 else "")
        )


def fill_large(
    args: argparse.Namespace, client: httpx.Client, app: Server, peers: dict[str, Server]
) -> tuple[str, dict[str, int]]:
    """A new task-server session holding exactly `--large-session` completed tasks, and each
    peer topped up to at least as many (a peer has one store for every client, and it
    already holds its create run's tasks). Returns the session's token and how many tasks
    each system's list counts."""
    count = args.large_session
    token = new_session(client)
    began = time.monotonic()
    post_many(app.url, count, token)
    stats = wait_stats(client, token, lambda s: s["completed"] == count)
    if stats["total"] != count or stats["completed"] != count:
        raise RuntimeError(f"filling a session with {count} tasks left it with {stats}")
    sizes = {"app": int(stats["total"])}
    for key, server in peers.items():
        total = peer_wait(server.url, 0)["total"]
        if total < count:
            post_many(server.url, count - total, None)
        sizes[key] = peer_wait(server.url, count)["total"]
    log(f"  large lists: {sizes} tasks (filled in {time.monotonic() - began:.0f} s)")
    return token, sizes


def http_rounds(args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    """Each round starts fresh servers (hello anchor, task server, peers) and measures, in
    three groups each with its own anchor run: the GETs (status, list of 50), the create
    POSTs, then (`--large-session`) the list of 50 from a session holding many tasks."""
    rounds = []
    for index in range(args.rounds):
        log(f"HTTP round {index + 1}/{args.rounds}")
        hello, app = hello_server(), app_server(args)
        peers = {key: peer_server(key) for key in PEERS if not args.no_peers}
        with (
            running(hello, app, *peers.values(), log_dir=log_dir),
            httpx.Client(base_url=app.url, timeout=30, headers={"Content-Type": "application/json"}) as c,
        ):
            token = new_session(c)
            ids = create_sample_tasks(c, token, LIST_PAGE)
            create_token = new_session(c)
            peer_ids = {key: post_many(server.url, LIST_PAGE, None)[0] for key, server in peers.items()}
            peer_totals = {key: peer_wait(server.url, LIST_PAGE)["total"] for key, server in peers.items()}
            created_before = metric_value(c, "async_tasks_tasks_created_total", executor="sample")
            completed_before = metric_value(
                c, "async_tasks_tasks_finished_total", executor="sample", status="completed"
            )
            runs: dict[str, dict[str, Any]] = {}
            # Every request carries the session token, the anchor's and the peers' too (same
            # request size; they ignore it).
            get: dict[str, Any] = {"token": token}
            post: dict[str, Any] = {"method": "POST", "body": POST_BODY, "token": token}
            get_group: Group = [
                ("hello_get", hello, "/", get),
                ("status", app, f"{API}/tasks/{ids[0]}/status", get),
                ("list", app, LIST_PATH, get),
            ]
            post_group: Group = [
                ("hello_post", hello, "/", post),
                ("create", app, CREATE_PATH, {**post, "token": create_token}),
            ]
            for key, server in peers.items():
                get_group += [
                    (run_key(key, "status"), server, f"{API}/tasks/{peer_ids[key]}/status", get),
                    (run_key(key, "list"), server, LIST_PATH, get),
                ]
                post_group.append((run_key(key, "create"), server, CREATE_PATH, post))
            measure_group(get_group, index, args, runs)
            measure_group(post_group, index, args, runs)
            # Every created task ran to completion.
            stats = wait_stats(c, create_token, lambda s: s["pending"] == 0 and s["running"] == 0)
            created = metric_value(c, "async_tasks_tasks_created_total", executor="sample") - created_before
            completed = (
                metric_value(c, "async_tasks_tasks_finished_total", executor="sample", status="completed")
                - completed_before
            )
            answered, errors, unknown = sent(runs["create"], args)
            verification = {
                "session_total": stats["total"],
                "session_completed": stats["completed"],
                "pending": stats["pending"],
                "running": stats["running"],
                "failed": stats["failed"],
                "metrics_created": created,
                "metrics_completed": completed,
                "wrk_answered": answered,
                "http_errors": errors,
            }
            # A request wrk gave up on (timeout) or had in flight when it stopped may still
            # have created a task: the session may hold a few more tasks than wrk counted.
            verification["ok"] = (
                stats["pending"] == 0
                and stats["running"] == 0
                and stats["failed"] == 0
                and stats["completed"] == stats["total"]
                and created == completed == stats["total"]
                and answered <= stats["total"] <= answered + unknown
            )
            log(f"  create verification: {verification}")
            peer_verification = {
                key: verify_peer(server.url, runs[run_key(key, "create")], peer_totals[key], args)
                for key, server in peers.items()
            }
            for key, v in peer_verification.items():
                log(f"  {key} create verification: {v}")
            app_rss = app.rss()
            large_sizes: dict[str, int] = {}
            if args.large_session:
                large_token, large_sizes = fill_large(args, c, app, peers)
                large_group: Group = [
                    ("hello_get_large", hello, "/", {"token": large_token}),
                    ("list_large", app, LIST_PATH, {"token": large_token}),
                    *[
                        (run_key(key, "list_large"), server, LIST_PATH, {"token": large_token})
                        for key, server in peers.items()
                    ],
                ]
                measure_group(large_group, index, args, runs)
            rounds.append(
                {
                    "runs": runs,
                    "verification": verification,
                    "peer_verification": peer_verification,
                    "large_sizes": large_sizes,
                    "app_rss": app_rss,
                }
            )
    return rounds


#: Variants of the task server for `--breakdown`: (name, extra env, send the session token).
BREAKDOWN_VARIANTS = [
    ("default", {}, True),
    ("metrics off", {"METRICS_ENABLED": "false"}, True),
    ("metrics off, IP session", {"METRICS_ENABLED": "false"}, False),
]


def breakdown_rounds(args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    """Where the per-request cost goes: the same status and create measurements against
    task servers with Prometheus metrics off, and with the session taken from the
    client IP instead of a signed token (no itsdangerous verification per request)."""
    rounds = []
    for index in range(args.breakdown):
        log(f"breakdown round {index + 1}/{args.breakdown}")
        hello = hello_server()
        apps = [app_server(args, name=f"app-{i}", extra_env=env) for i, (_, env, _) in enumerate(BREAKDOWN_VARIANTS)]
        with running(hello, *apps, log_dir=log_dir):
            setup = []
            for app, (_, _, use_token) in zip(apps, BREAKDOWN_VARIANTS, strict=True):
                with httpx.Client(base_url=app.url, timeout=30, headers={"Content-Type": "application/json"}) as c:
                    token = new_session(c) if use_token else None
                    if token is None:
                        response = c.post(f"{API}/demo/tasks/sample", content=POST_BODY)
                        response.raise_for_status()
                        task_id = response.json()["task"]["id"]
                    else:
                        task_id = create_sample_tasks(c, token, 1)[0]
                    setup.append((token, task_id, new_session(c) if use_token else None))
            runs: dict[str, Any] = {"hello_get": measure(hello, "/", args)}
            for app, (name, _, _), (token, task_id, _) in zip(apps, BREAKDOWN_VARIANTS, setup, strict=True):
                runs[f"status/{name}"] = measure(app, f"{API}/tasks/{task_id}/status", args, token=token)
            runs["hello_post"] = measure(hello, "/", args, method="POST", body=POST_BODY)
            for app, (name, _, _), (_, _, create_token) in zip(apps, BREAKDOWN_VARIANTS, setup, strict=True):
                runs[f"create/{name}"] = measure(
                    app, f"{API}/demo/tasks/sample", args, method="POST", body=POST_BODY, token=create_token
                )
            for name, r in runs.items():
                log(
                    f"  {name:32s} {r['rps']:8.0f} req/s  {r['rps_per_cpu']:8.0f} req/cpu-s  "
                    f"foreign {r['foreign_cpu_share']:.2f}  errors {r['errors']}"
                )
            rounds.append(runs)
    return rounds


def profile_endpoints(args: argparse.Namespace, log_dir: Path) -> dict[str, str]:
    """py-spy profiles of the task server under the same load (separate from the
    measured runs: sampling slows the server)."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        log("py-spy not found: pip install py-spy")
        return {}
    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = {}
    app = app_server(args)
    with (
        running(app, log_dir=log_dir),
        httpx.Client(base_url=app.url, timeout=30, headers={"Content-Type": "application/json"}) as c,
    ):
        token = new_session(c)
        ids = create_sample_tasks(c, token, 50)
        create_token = new_session(c)
        for name, path, method, body, tok in (
            ("status", f"{API}/tasks/{ids[0]}/status", "GET", None, token),
            ("list", LIST_PATH, "GET", None, token),
            ("create", f"{API}/demo/tasks/sample", "POST", POST_BODY, create_token),
        ):
            raw = out_dir / f"{name}.txt"
            wrk(app.url + path, args.warmup or 1, args, method=method, body=body, token=tok)
            spy = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    CLIENT_CORE,
                    py_spy,
                    "record",
                    "-p",
                    str(app.pid),
                    "-d",
                    str(int(args.duration)),
                    "-r",
                    "250",
                    "-f",
                    "raw",
                    "-F",
                    "-o",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wrk(app.url + path, args.duration, args, method=method, body=body, token=tok)
            spy.wait(args.duration + 30)
            summary = summarize_profile(raw)
            (out_dir / f"{name}.summary.txt").write_text(summary)
            summaries[name] = summary
            log(f"profile {name}: {raw}")
    return summaries


#: Frames above the ASGI app in every event-loop stack (the CLI, uvicorn's start-up).
_WRAPPER_FRAME = re.compile(r"\((click/|<frozen runpy>|uvicorn/(main|server|_compat|__main__)\.py|asyncio/runners\.py)")


def summarize_profile(path: Path, top: int = 45) -> str:
    """Inclusive and self share of the event-loop thread's samples per function, from
    py-spy's raw output (other threads, idle ones included, are left out)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or "Runner.run (asyncio/runners.py" not in stack:
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r"^(.*?) \((.*?)(:\d+)?\)$", r"\1 (\2)", f) for f in stack.split(";")]
        for frame in set(frames):
            if not _WRAPPER_FRAME.search(frame):
                inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return "no event-loop samples\n"
    lines = [f"{total} event-loop samples", "", "inclusive:"]
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * count / total:6.1f}%  {frame}")
    lines += ["", "self:"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * count / total:6.1f}%  {frame}")
    return "\n".join(lines) + "\n"


# -- 100 000 sleeping tasks ----------------------------------------------------------------------


def sleepers(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    count = args.sleepers
    runs = max(1, min(3, args.rounds))
    app = app_server(args, name="sleeper-app", factory="bench.sleeper_app:create_app")
    result: dict[str, Any] = {"count": count, "runs": runs}
    with (
        running(app, log_dir=log_dir),
        httpx.Client(base_url=app.url, timeout=300, headers={"Content-Type": "application/json"}) as c,
    ):
        token = new_session(c)
        task_id = create_sample_tasks(c, token, 1)[0]
        path = f"{API}/tasks/{task_id}/status"
        result["unloaded"] = [measure(app, path, args, token=token) for _ in range(runs)]
        log("  unloaded p99: " + ", ".join(f"{r['p99_us'] / 1000:.1f} ms" for r in result["unloaded"]))
        load_token = new_session(c)
        time.sleep(1)
        rss_before = app.rss()
        began = time.perf_counter()
        chunk = 5000
        for start in range(0, count, chunk):
            response = c.post(
                "/bench/spawn",
                headers={"X-Session-Token": load_token},
                json={"count": min(chunk, count - start), "seconds": 1800},
            )
            response.raise_for_status()
        spawned = time.perf_counter() - began
        stats = wait_stats(c, load_token, lambda s: s["running"] == count)
        time.sleep(2)
        rss_after = app.rss()
        result.update(
            rss_before=rss_before,
            rss_after=rss_after,
            running=stats["running"],
            bytes_per_task=(rss_after - rss_before) / count,
            spawn_s=spawned,
        )
        log(
            f"  {stats['running']} sleeping tasks, {result['bytes_per_task']:.0f} B/task RSS, spawned in "
            f"{spawned:.1f} s"
        )
        result["loaded"] = [measure(app, path, args, token=token) for _ in range(runs)]
        log("  loaded p99: " + ", ".join(f"{r['p99_us'] / 1000:.1f} ms" for r in result["loaded"]))
        result["still_running"] = session_stats(c, load_token)["running"]
        log("  stopping the server (cancels every sleeping task)")
    result["anyio"] = inproc("running-memory", "--kind", "anyio", "--count", str(count))
    result["runner_inproc"] = inproc("running-memory", "--kind", "runner", "--count", str(count))
    return result


# -- in-process ---------------------------------------------------------------------------------


def inproc(*argv: str) -> dict[str, Any]:
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


# -- report ---------------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                info["ram"] = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    for package in ("litestar", "msgspec", "anyio", "uvicorn", "uvloop", "httptools"):
        info[package] = version(package)
    for package in ("fastapi", "starlette", "pydantic"):  # the FastAPI peer (the `bench` extra)
        with contextlib.suppress(PackageNotFoundError):
            info[package] = version(package)
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    info["wrk"] = wrk_version.partition(" Copyright")[0].strip()
    return info


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(key: str, value: float) -> str:
    _, op, threshold, _ = TARGETS[key]
    ok = {">=": value >= threshold, ">": value > threshold, "<=": value <= threshold}[op]
    return "**met**" if ok else "**missed**"


#: The ratio columns: (key, header, run kind, anchor run, figure). Each figure of a system is
#: divided by the anchor's figure of the same round and group.
RATIO_COLUMNS = (
    ("status", "status ÷ hello GET", "status", "hello_get", "rps"),
    ("list", f"list {LIST_PAGE} ÷ hello GET", "list", "hello_get", "rps"),
    ("list_large", f"list {LIST_PAGE} of a large session ÷ hello GET", "list_large", "hello_get_large", "rps"),
    ("create", "create+run ÷ hello POST", "create", "hello_post", "rps"),
    ("status_p99", "status p99 ÷ hello GET p99", "status", "hello_get", "p99_us"),
    ("create_p99", "create p99 ÷ hello POST p99", "create", "hello_post", "p99_us"),
)
Ratios = dict[str, dict[str, float]]


def round_ratios(runs: dict[str, Any], *, cpu: bool = False) -> Ratios:
    """system -> column -> ratio for one round; `cpu`: throughput per second of server CPU
    time instead of per second of wall time (p99 columns left out)."""
    table: Ratios = {}
    for system in SYSTEMS:
        row = {}
        for key, _, kind, anchor, figure in RATIO_COLUMNS:
            if cpu and figure != "rps":
                continue
            name, value = run_key(system, kind), "rps_per_cpu" if cpu else figure
            if name in runs and anchor in runs:
                row[key] = runs[name][value] / runs[anchor][value]
        if row:
            table[system] = row
    return table


def derived_ratios(ratios: Ratios) -> dict[str, float]:
    """The targets that compare async-tasks with a peer or with itself, for one round."""
    app, minimal, fastapi = (ratios.get(k, {}) for k in ("app", "minimal", "fastapi"))
    out = {}
    if "status" in app and "status" in minimal:
        out["status_vs_minimal"] = app["status"] / minimal["status"]
    if "create" in app and "create" in fastapi:
        out["create_vs_fastapi"] = app["create"] / fastapi["create"]
    if "list_large" in app and "list" in app:
        out["list_large_vs_list"] = app["list_large"] / app["list"]
    return out


def median_ratios(per_round: list[Ratios]) -> Ratios:
    out: Ratios = {}
    for system in SYSTEMS:
        for key, *_ in RATIO_COLUMNS:
            values = [r[system][key] for r in per_round if key in r.get(system, {})]
            if values:
                out.setdefault(system, {})[key] = median(values)
    return out


def http_target_rows(rounds: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """The target table's rows for issue 12's HTTP targets (async-tasks against the anchor
    and the peers, each ratio taken within a round, then the median over the rounds)."""
    per_round = [round_ratios(r["runs"]) for r in rounds]
    medians = median_ratios(per_round)
    med = medians.get("app", {})
    cpu = median_ratios([round_ratios(r["runs"], cpu=True) for r in rounds]).get("app", {})
    derived = [derived_ratios(r) for r in per_round]

    def figure(name: str, key: str = "rps") -> float:
        return median([r["runs"][name][key] for r in rounds if name in r["runs"]])

    def row(key: str, value: float, measured: str) -> tuple[str, str, str, str]:
        desc, op, threshold, unit = TARGETS[key]
        return (desc, f"{op} {threshold:.2f} {unit}", measured, verdict(key, value))

    def compared(key: str) -> str:
        if key == "status_vs_minimal":
            return f"the minimal app's ratio {medians['minimal']['status']:.3f}"
        if key == "create_vs_fastapi":
            return f"FastAPI's ratio {medians['fastapi']['create']:.3f}"
        size = median([r["large_sizes"]["app"] for r in rounds if "app" in r["large_sizes"]])
        return f"{med['list_large']:.3f} x hello GET with {size:,.0f} tasks in the session"

    rows = []
    for key, anchor, versus in (
        ("status", "hello_get", "status_vs_minimal"),
        ("list", "hello_get", "list_large_vs_list"),
        ("create", "hello_post", "create_vs_fastapi"),
    ):
        if key in med:
            rows.append(
                row(
                    key,
                    med[key],
                    f"{med[key]:.3f} (CPU-normalised {cpu[key]:.3f}; {figure(key):,.0f} vs "
                    f"{figure(anchor):,.0f} req/s)",
                )
            )
        values = [d[versus] for d in derived if versus in d]
        if values:
            rows.append(row(versus, median(values), f"{median(values):.3f} ({compared(versus)})"))
    for key, run, anchor in (("create_p99", "create", "hello_post"), ("status_p99", "status", "hello_get")):
        if key in med:
            ours, base = figure(run, "p99_us") / 1000, figure(anchor, "p99_us") / 1000
            rows.append(row(key, med[key], f"{med[key]:.2f} ({ours:.1f} vs {base:.1f} ms)"))
    verified = all(r["verification"]["ok"] for r in rounds)
    peers_verified = all(v["ok"] for r in rounds for v in r.get("peer_verification", {}).values())
    rows.append(
        (
            "every created task completed (stats + metrics, each round)",
            "all",
            ("yes" if verified else "NO (see the per-round table)")
            + ("" if peers_verified else "; a peer's check FAILED (see the per-round table)"),
            "**met**" if verified else "**missed**",
        )
    )
    return rows


def http_tables(rounds: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The table of all ratios (medians), CPU-normalised and absolute figures, and every round."""
    per_round = [round_ratios(r["runs"]) for r in rounds]
    med = median_ratios(per_round)
    cpu = median_ratios([round_ratios(r["runs"], cpu=True) for r in rounds])
    columns = [c for c in RATIO_COLUMNS if any(c[0] in row for row in med.values())]
    throughput = [c for c in columns if c[4] == "rps"]

    def cells(row: dict[str, float], cols: list[tuple[str, str, str, str, str]]) -> str:
        return " | ".join(f"{row[c[0]]:.3f}" if c[0] in row else "—" for c in cols)

    def header(first: list[str], cols: list[tuple[str, str, str, str, str]], last: tuple[str, ...] = ()) -> list[str]:
        return [
            "| " + " | ".join([*first, *(c[1] for c in cols), *last]) + " |",
            "|" + "---|" * len(first) + "---:|" * len(cols) + "---|" * len(last),
        ]

    out = [
        f"All ratios, medians of {len(rounds)} round(s). Each figure is divided by the hello anchor's of the "
        "same round: the GETs by the hello GET run of their group, the creates by the hello POST"
        + (
            ", the list of a large session by a hello GET measured next to it, after the fill. The task "
            f"server's large session holds exactly {args.large_session:,} tasks"
            + (
                "; a peer has one store for all clients, which also holds its create run's tasks"
                if len(med) > 1
                else ""
            )
            + " (`tasks` in the per-round table)"
            if any("hello_get_large" in r["runs"] for r in rounds)
            else ""
        )
        + ".",
        "",
        *header(["system"], columns),
        "| bare Litestar hello (the anchor) | " + " | ".join("1.000" for _ in columns) + " |",
    ]
    out += [f"| {SYSTEMS[system]} | {cells(row, columns)} |" for system, row in med.items()]
    out += [
        "",
        "Throughput ratios per second of server CPU time (compare these if other processes took part of "
        "core 0), medians:",
        "",
        *header(["system"], throughput),
    ]
    out += [f"| {SYSTEMS[system]} | {cells(row, throughput)} |" for system, row in cpu.items()]

    kinds = [
        ("status", "hello_get"),
        ("list", "hello_get"),
        ("list_large", "hello_get_large"),
        ("create", "hello_post"),
    ]
    kinds = [(k, a) for k, a in kinds if any(a in r["runs"] for r in rounds)]

    def absolute(name: str) -> str:
        found = [r["runs"][name] for r in rounds if name in r["runs"]]
        if not found:
            return "—"
        return f"{median([x['rps'] for x in found]):,.0f} (p99 {median([x['p99_us'] for x in found]) / 1000:.1f})"

    out += [
        "",
        "Absolute medians, req/s (p99 ms); they drift ±20% between runs, the ratios above much less. The "
        "anchor's row holds its GET, GET, GET next to the large lists, and POST runs:",
        "",
        "| system | " + " | ".join(k.replace("_", " ") for k, _ in kinds) + " |",
        "|---|" + "---:|" * len(kinds),
        "| hello anchor | " + " | ".join(absolute(a) for _, a in kinds) + " |",
    ]
    out += [
        f"| {SYSTEMS[system]} | " + " | ".join(absolute(run_key(system, k)) for k, _ in kinds) + " |" for system in med
    ]
    out += [
        "",
        "Every round: ratio (req/s or p99 in brackets). `foreign` = the largest share of core 0 that other "
        "processes took during one of the round's runs; `tasks` = how many tasks the large list counted.",
        "",
        *header(["round", "system"], columns, ("tasks", "create verified")),
    ]
    for i, (r, ratios) in enumerate(zip(rounds, per_round, strict=True), 1):
        runs = r["runs"]
        foreign = max(x["foreign_cpu_share"] for x in runs.values())

        def raw(name: str, figure: str, runs: dict[str, Any] = runs) -> str:
            if name not in runs:
                return "—"
            x = runs[name][figure]
            return f"{x / 1000:.1f} ms" if figure == "p99_us" else f"{x:,.0f}"

        out.append(
            f"| {i} (foreign {foreign:.2f}) | hello anchor | "
            + " | ".join(f"1 ({raw(c[3], c[4])})" for c in columns)
            + " | — | — |"
        )
        for system, row in ratios.items():
            if system == "app":
                v = r["verification"]
                check = f"{'yes' if v['ok'] else 'NO'} ({v['session_completed']:,} of {v['session_total']:,})"
            else:
                pv = r.get("peer_verification", {}).get(system)
                check = "—" if pv is None else f"{'yes' if pv['ok'] else 'NO'} ({pv['created']:,} created)"
            size = r.get("large_sizes", {}).get(system)
            out.append(
                f"| {i} | {SYSTEMS[system]} | "
                + " | ".join(
                    f"{row[c[0]]:.3f} ({raw(run_key(system, c[2]), c[4])})" if c[0] in row else "—" for c in columns
                )
                + f" | {'—' if size is None else f'{size:,}'} | {check} |"
            )
    out.append("")
    return out


def report(args: argparse.Namespace, results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    out = [
        f"## Run of {results['started']}",
        "",
        f"Command: `{command}` (total {results['elapsed_s'] / 60:.1f} min)",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m.get('ram', '? GiB')} RAM, Linux {m['kernel']}. Python "
        f"{m['python']}, litestar {m['litestar']}, msgspec {m['msgspec']}, anyio {m['anyio']}, uvicorn "
        f"{m['uvicorn']} (uvloop {m['uvloop']}, httptools {m['httptools']}), "
        + (f"fastapi {m['fastapi']} (starlette {m['starlette']}, pydantic {m['pydantic']}), " if "fastapi" in m else "")
        + f"{m['wrk']}.",
        "",
        f"Servers: one uvicorn worker each, `--loop uvloop --http httptools --no-access-log`, pinned with "
        f"`taskset -c {SERVER_CORE}`; task server settings: "
        + ", ".join(f"`{k}={v}`" for k, v in TUNED_ENV.items() if k != "SECRET_KEY")
        + " (metrics on, as by default), started as "
        + (
            "`python -m async_tasks.cli serve`"
            if args.app_via == "serve"
            else f"`uvicorn {TASK_APP_FACTORY} --factory ...`"
        )
        + f". Load: `taskset -c {CLIENT_CORE} wrk -t1 -c{args.connections} -d{args.duration:g}s --timeout 10s "
        "--latency` "
        f"after a {args.warmup:g} s warm-up, every request with an `X-Session-Token`."
        + (
            ""
            if args.no_peers
            else " Peers, served the same way in the same rounds: "
            + "; ".join(f"{label} (`{module}`: {what})" for label, what, module in PEERS.values())
            + "."
        ),
        "",
    ]
    rows = []
    rounds = results.get("http")
    if rounds:
        rows += http_target_rows(rounds)
    lat = results.get("latency")
    if lat:
        rows.append(
            (
                TARGETS["latency"][0],
                "<= 1 ms",
                f"{lat['median_ms']:.3f} ms (p90 {lat['p90_ms']:.3f}, p99 {lat['p99_ms']:.3f}, n={lat['count']})",
                verdict("latency", lat["median_ms"]),
            )
        )
    mem = results.get("finished_memory")
    if mem:
        traced = results.get("finished_memory_traced", {}).get("bytes_per_task_tracemalloc")
        extra = f"; tracemalloc {traced:,.0f} B over {results['finished_memory_traced']['count']:,}" if traced else ""
        rows.append(
            (
                TARGETS["finished_memory"][0],
                "<= 2048 B",
                f"{mem['bytes_per_task_rss']:,.0f} B RSS over {mem['count']:,} tasks{extra}",
                verdict("finished_memory", mem["bytes_per_task_rss"]),
            )
        )
    sl = results.get("sleepers")
    if sl:
        bare = sl["anyio"]["bytes_per_task"]
        value = sl["bytes_per_task"] / bare
        inproc_ratio = sl["runner_inproc"]["bytes_per_task"] / bare
        rows.append(
            (
                TARGETS["running_memory"][0],
                "<= 1.50 x bare",
                f"{value:.2f} ({sl['bytes_per_task']:,.0f} B in the server vs {bare:,.0f} B bare anyio; "
                f"in-process {sl['runner_inproc']['bytes_per_task']:,.0f} B = {inproc_ratio:.2f})",
                verdict("running_memory", value),
            )
        )
        unloaded = median([r["p99_us"] for r in sl["unloaded"]]) / 1000
        loaded = median([r["p99_us"] for r in sl["loaded"]]) / 1000
        rows.append(
            (
                TARGETS["loaded_p99"][0],
                "<= 2.00 x unloaded",
                f"{loaded / unloaded:.2f} ({loaded:.1f} ms vs {unloaded:.1f} ms; "
                f"{median([r['rps'] for r in sl['loaded']]):,.0f} vs "
                f"{median([r['rps'] for r in sl['unloaded']]):,.0f} req/s)",
                verdict("loaded_p99", loaded / unloaded),
            )
        )
    cl = results.get("cleanup")
    if cl:
        rows.append(
            (
                f"cleanup sweep, {cl['sessions']:,} sessions x {cl['per_session']} completed tasks, keep {cl['keep']}",
                "(report)",
                f"{cl['us_per_removed_task']:.2f} µs per removed task ({cl['removed']:,} in "
                f"{cl['sweep_s']:.2f} s); {cl['us_per_untouched_session']:.2f} µs per untouched session "
                f"({cl['idle_sweep_s'] * 1000:.1f} ms)",
                "—",
            )
        )
    out += ["| what | target | measured (median) | |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out.append("")
    if rounds:
        out += http_tables(rounds, args)
        out += [
            "async-tasks in every round (req/s; p99 in ms; `cpu` = the server's share of its core over the run, "
            "`foreign` = other processes' share of that core):",
            "",
            "| round | hello GET | status | list | hello POST | create | status/GET | list/GET | "
            "create/POST | create verified |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(rounds, 1):
            runs = r["runs"]

            def cell(name: str, runs: dict[str, Any] = runs) -> str:
                x = runs[name]
                return (
                    f"{x['rps']:,.0f} (p99 {x['p99_us'] / 1000:.1f}; cpu {x['server_cpu_share']:.2f}, "
                    f"foreign {x['foreign_cpu_share']:.2f})"
                )

            v = r["verification"]
            out.append(
                f"| {i} | {cell('hello_get')} | {cell('status')} | {cell('list')} | {cell('hello_post')} | "
                f"{cell('create')} | {runs['status']['rps'] / runs['hello_get']['rps']:.3f} | "
                f"{runs['list']['rps'] / runs['hello_get']['rps']:.3f} | "
                f"{runs['create']['rps'] / runs['hello_post']['rps']:.3f} | "
                f"{'yes' if v['ok'] else 'NO'}: {v['session_completed']:,} completed of {v['session_total']:,} "
                f"(metrics {v['metrics_created']:,.0f} created / {v['metrics_completed']:,.0f} completed; wrk "
                f"{v['wrk_answered']:,} answered, {v['http_errors']} errors) |"
            )
        out.append("")
    if sl:
        out += [
            f"Sleeping tasks: {sl['count']:,} `bench-sleeper` tasks (sleep 1800 s) started through "
            f"`POST /bench/spawn` in {sl['spawn_s']:.1f} s; server RSS {sl['rss_before'] / 2**20:,.0f} → "
            f"{sl['rss_after'] / 2**20:,.0f} MiB; bare anyio children: {sl['anyio']['bytes_per_task']:,.0f} B "
            f"each, {sl['anyio']['spawn_us_per_task']:.0f} µs to spawn; runner in-process: "
            f"{sl['runner_inproc']['bytes_per_task']:,.0f} B, {sl['runner_inproc']['spawn_us_per_task']:.0f} µs "
            f"to create + start. `/status` runs unloaded: "
            + ", ".join(f"{r['rps']:,.0f} req/s p99 {r['p99_us'] / 1000:.1f} ms" for r in sl["unloaded"])
            + "; loaded: "
            + ", ".join(f"{r['rps']:,.0f} req/s p99 {r['p99_us'] / 1000:.1f} ms" for r in sl["loaded"])
            + ".",
            "",
        ]
    costs = results.get("costs")
    if costs:
        out += [
            "In-process CPU time per task (process time, batches of "
            f"{costs['count']:,} created back to back then run; best of {costs['repeats']}): create only "
            f"{costs['create_only']['total_us']:.0f} µs; create + start + run a no-op executor "
            f"{costs['create_run_noop']['create_us']:.0f} + {costs['create_run_noop']['run_us']:.0f} µs; "
            f"create + start + run a zero-delay `sample` (21 progress reports) "
            f"{costs['create_run_sample']['create_us']:.0f} + {costs['create_run_sample']['run_us']:.0f} µs.",
            "",
        ]
    if mem:
        out += [
            f"Finished tasks: {mem['count']:,} zero-delay `sample` tasks created through `TaskSystem` in "
            f"batches of 1 000 (each batch run to completion), {mem['create_and_run_us_per_task']:.0f} µs per "
            f"task to create and run in-process; RSS delta {mem['rss_delta'] / 2**20:.1f} MiB.",
            "",
        ]
    if results.get("breakdown"):
        b = results["breakdown"]
        out += [
            "Where the request cost goes (`--breakdown`, medians of "
            f"{len(b)} round(s); ratio to the hello anchor of the same round, raw and CPU-normalised):",
            "",
            "| task server variant | status/GET | status/GET per CPU | create/POST | create/POST per CPU |",
            "|---|---|---|---|---|",
        ]
        for name, _, _ in BREAKDOWN_VARIANTS:

            def r(kind: str, anchor: str, key: str, name: str = name) -> float:
                return median([x[f"{kind}/{name}"][key] / x[anchor][key] for x in b])

            out.append(
                f"| {name} | {r('status', 'hello_get', 'rps'):.3f} "
                f"| {r('status', 'hello_get', 'rps_per_cpu'):.3f} "
                f"| {r('create', 'hello_post', 'rps'):.3f} | {r('create', 'hello_post', 'rps_per_cpu'):.3f} |"
            )
        out.append("")
    if results.get("profiles"):
        out += ["py-spy profiles (inclusive share of samples, top entries):", ""]
        for name, summary in results["profiles"].items():
            out += [f"`{name}`:", "", "```", *summary.splitlines()[:40], "```", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="HTTP rounds (default 5); medians are reported")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measured wrk run (default 10)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of wrk warm-up before each run (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.10,
        help="measure a run again when other processes took more than this share of the server's core (default 0.10)",
    )
    parser.add_argument(
        "--foreign-retries", type=int, default=2, help="at most this many repeats of a run (default 2; 0: never)"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30,
        help="before each run, wait at most this many seconds for the server's core to be quiet (default 30)",
    )
    parser.add_argument("--sleepers", type=int, default=100_000, help="sleeping tasks for the load test")
    parser.add_argument("--finished", type=int, default=100_000, help="finished tasks for the memory test")
    parser.add_argument("--cleanup-sessions", type=int, default=10_000)
    parser.add_argument("--cleanup-per-session", type=int, default=100)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["http", "sleepers", "latency", "memory", "cleanup", "redis"],
        help="run only these sections (redis: the Redis backend, see bench/redis_bench.py; not run by default)",
    )
    parser.add_argument("--skip", nargs="+", default=[], choices=["http", "sleepers", "latency", "memory", "cleanup"])
    parser.add_argument(
        "--app-via",
        choices=["uvicorn", "serve"],
        default="uvicorn",
        help="start the task server with the uvicorn CLI (default: `async-tasks serve` cannot "
        "choose loop/http) or with `python -m async_tasks.cli serve`",
    )
    parser.add_argument(
        "--breakdown",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also measure status/create with metrics off and with IP sessions (ROUNDS rounds)",
    )
    parser.add_argument(
        "--no-peers",
        action="store_true",
        help='HTTP rounds without the FastAPI and minimal peers (they need `pip install -e ".[bench]"`)',
    )
    parser.add_argument(
        "--large-session",
        type=int,
        default=10_000,
        metavar="N",
        help=f"also measure the list of {LIST_PAGE} from a session holding N tasks, every round (default 10 000; "
        "0 skips it)",
    )
    parser.add_argument("--profile", metavar="DIR", help="also record py-spy profiles of the task server under load")
    parser.add_argument(
        "--output", default=str(BENCH / "last_run.md"), help="markdown report (default bench/last_run.md)"
    )
    parser.add_argument("--json", help="also write every raw figure here")
    from bench.redis_bench import add_arguments as add_redis_arguments

    add_redis_arguments(parser)
    args = parser.parse_args(argv)
    sections = set(args.only or ["http", "sleepers", "latency", "memory", "cleanup"]) - set(args.skip)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    if "http" in sections and not args.no_peers and importlib.util.find_spec("fastapi") is None:
        parser.error('the FastAPI peer needs the bench extra: pip install -e ".[bench]" (or pass --no-peers)')
    if (os.cpu_count() or 1) < 2:
        parser.error("needs 2 cores (server on core 0, wrk on core 1)")
    command = "python -m bench" + (
        "" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"async-tasks-bench-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log(f"server logs in {log_dir}")
    began = time.time()
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    if "http" in sections:
        results["http"] = http_rounds(args, log_dir)
    if "latency" in sections:
        results["latency"] = inproc("latency")
        results["costs"] = inproc("costs")
    if "memory" in sections:
        results["finished_memory"] = inproc("finished-memory", "--count", str(args.finished))
        results["finished_memory_traced"] = inproc(
            "finished-memory", "--count", str(min(args.finished, 10_000)), "--tracemalloc"
        )
    if "sleepers" in sections:
        log("sleeping tasks")
        results["sleepers"] = sleepers(args, log_dir)
    if "cleanup" in sections:
        results["cleanup"] = inproc(
            "cleanup", "--sessions", str(args.cleanup_sessions), "--per-session", str(args.cleanup_per_session)
        )
    if "redis" in sections:
        from bench.redis_bench import redis_section

        results["redis"] = redis_section(args, log_dir)
    if args.breakdown:
        results["breakdown"] = breakdown_rounds(args, log_dir)
    if args.profile:
        results["profiles"] = profile_endpoints(args, log_dir)
    results["elapsed_s"] = time.time() - began
    text = report(args, results, command)
    if "redis" in results:
        from bench.redis_bench import markdown as redis_markdown

        text += "\n" + redis_markdown(results["redis"])
    print(text)
    Path(args.output).write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    log(f"report written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

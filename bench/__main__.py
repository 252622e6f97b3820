"""``python -m bench``: the benchmark suite (see bench/README.md and bench/RESULTS.md).

Starts the real task server and a bare Litestar hello-world app (the anchor) under
uvicorn with the same options, each pinned to core 0; loads them with wrk pinned to
core 1; runs the in-process measurements in fresh interpreters pinned to core 0;
prints a markdown report and writes it to ``--output``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

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

# Targets: (key, description, comparison, threshold)
TARGETS = {
    "status": ("`GET /tasks/{id}/status` throughput", ">=", 0.90, "x hello GET"),
    "create": (
        '`POST /demo/tasks/sample` `{"delayMs": 0}` throughput (create + start + run)',
        ">=",
        0.80,
        "x hello POST",
    ),
    "list": ("`GET /tasks` (50 tasks in the session) throughput", ">=", 0.75, "x hello GET"),
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


# -- HTTP throughput rounds ------------------------------------------------------------------------


def http_rounds(args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    rounds = []
    for index in range(args.rounds):
        log(f"HTTP round {index + 1}/{args.rounds}")
        hello, app = hello_server(), app_server(args)
        with (
            running(hello, app, log_dir=log_dir),
            httpx.Client(base_url=app.url, timeout=30, headers={"Content-Type": "application/json"}) as c,
        ):
            token = new_session(c)
            ids = create_sample_tasks(c, token, 50)
            create_token = new_session(c)
            created_before = metric_value(c, "async_tasks_tasks_created_total", executor="sample")
            completed_before = metric_value(
                c, "async_tasks_tasks_finished_total", executor="sample", status="completed"
            )
            runs: dict[str, dict[str, Any]] = {}
            post: dict[str, Any] = {"method": "POST", "body": POST_BODY}
            get_group: list[tuple[str, Server, str, dict[str, Any]]] = [
                ("hello_get", hello, "/", {"token": token}),
                ("status", app, f"{API}/tasks/{ids[0]}/status", {"token": token}),
                ("list", app, f"{API}/tasks", {"token": token}),
            ]
            post_group: list[tuple[str, Server, str, dict[str, Any]]] = [
                ("hello_post", hello, "/", {**post, "token": token}),
                ("create", app, f"{API}/demo/tasks/sample", {**post, "token": create_token}),
            ]
            for group in (get_group, post_group):
                # Anchor first in even rounds, last in odd ones.
                for name, server, path, options in group if index % 2 == 0 else [*group[1:], group[0]]:
                    runs[name] = measure(server, path, args, **options)
                    r = runs[name]
                    log(
                        f"  {name:10s} {r['rps']:8.0f} req/s  p99 {r['p99_us'] / 1000:6.1f} ms  "
                        f"server cpu {r['server_cpu_share']:.2f}  foreign {r['foreign_cpu_share']:.2f}  "
                        f"errors {r['errors'] + r['warmup_errors']}"
                    )
            # Every created task ran to completion.
            stats = wait_stats(c, create_token, lambda s: s["pending"] == 0 and s["running"] == 0)
            created = metric_value(c, "async_tasks_tasks_created_total", executor="sample") - created_before
            completed = (
                metric_value(c, "async_tasks_tasks_finished_total", executor="sample", status="completed")
                - completed_before
            )
            answered = runs["create"]["requests"] + runs["create"]["warmup_requests"]
            verification = {
                "session_total": stats["total"],
                "session_completed": stats["completed"],
                "pending": stats["pending"],
                "running": stats["running"],
                "failed": stats["failed"],
                "metrics_created": created,
                "metrics_completed": completed,
                "wrk_answered": answered,
                "http_errors": runs["create"]["errors"] + runs["create"]["warmup_errors"],
            }
            # A request wrk gave up on (timeout) or had in flight when it stopped may still
            # have created a task: the session may hold a few more tasks than wrk counted.
            verification["ok"] = (
                stats["pending"] == 0
                and stats["running"] == 0
                and stats["failed"] == 0
                and stats["completed"] == stats["total"]
                and created == completed == stats["total"]
                and answered <= stats["total"] <= answered + verification["http_errors"] + 2 * args.connections
            )
            log(f"  create verification: {verification}")
            rounds.append({"runs": runs, "verification": verification, "app_rss": app.rss()})
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
            ("list", f"{API}/tasks", "GET", None, token),
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
    for package in ("litestar", "msgspec", "anyio", "uvicorn", "uvloop", "httptools"):
        info[package] = version(package)
    info["wrk"] = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip()
    return info


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(key: str, value: float) -> str:
    _, op, threshold, _ = TARGETS[key]
    ok = value >= threshold if op == ">=" else value <= threshold
    return "**met**" if ok else "**missed**"


def report(args: argparse.Namespace, results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    out = [
        f"## Run of {results['started']}",
        "",
        f"Command: `{command}` (total {results['elapsed_s'] / 60:.1f} min)",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, Linux {m['kernel']}. Python {m['python']}, litestar "
        f"{m['litestar']}, msgspec {m['msgspec']}, anyio {m['anyio']}, uvicorn {m['uvicorn']} (uvloop {m['uvloop']}, "
        f"httptools {m['httptools']}), {m['wrk']}.",
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
        f"after a {args.warmup:g} s warm-up, every request with an `X-Session-Token`.",
        "",
    ]
    rows = []
    rounds = results.get("http")
    if rounds:
        ratio = {
            "status": [r["runs"]["status"]["rps"] / r["runs"]["hello_get"]["rps"] for r in rounds],
            "list": [r["runs"]["list"]["rps"] / r["runs"]["hello_get"]["rps"] for r in rounds],
            "create": [r["runs"]["create"]["rps"] / r["runs"]["hello_post"]["rps"] for r in rounds],
        }
        cpu_ratio = {
            "status": [r["runs"]["status"]["rps_per_cpu"] / r["runs"]["hello_get"]["rps_per_cpu"] for r in rounds],
            "list": [r["runs"]["list"]["rps_per_cpu"] / r["runs"]["hello_get"]["rps_per_cpu"] for r in rounds],
            "create": [r["runs"]["create"]["rps_per_cpu"] / r["runs"]["hello_post"]["rps_per_cpu"] for r in rounds],
        }
        anchor = {"status": "hello_get", "list": "hello_get", "create": "hello_post"}
        for key in ("status", "create", "list"):
            desc, op, threshold, unit = TARGETS[key]
            value = median(ratio[key])
            ours = median([r["runs"][key]["rps"] for r in rounds])
            base = median([r["runs"][anchor[key]]["rps"] for r in rounds])
            rows.append(
                (
                    desc,
                    f"{op} {threshold:.2f} {unit}",
                    f"{value:.3f} (CPU-normalised {median(cpu_ratio[key]):.3f}; {ours:,.0f} vs {base:,.0f} req/s)",
                    verdict(key, value),
                )
            )
        verified = all(r["verification"]["ok"] for r in rounds)
        rows.append(
            (
                "every created task completed (stats + metrics, each round)",
                "all",
                "yes" if verified else "NO (see the per-round table)",
                "**met**" if verified else "**missed**",
            )
        )
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
        out += [
            "Per round (req/s; p99 in ms; `cpu` = the server's share of its core over the run, `foreign` = "
            "other processes' share of that core):",
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
            f"Finished tasks: {mem['count']:,} zero-delay `sample` tasks created through `TaskManager` in "
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
    parser.add_argument("--sleepers", type=int, default=100_000, help="sleeping tasks for the load test")
    parser.add_argument("--finished", type=int, default=100_000, help="finished tasks for the memory test")
    parser.add_argument("--cleanup-sessions", type=int, default=10_000)
    parser.add_argument("--cleanup-per-session", type=int, default=100)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["http", "sleepers", "latency", "memory", "cleanup"],
        help="run only these sections",
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
    parser.add_argument("--profile", metavar="DIR", help="also record py-spy profiles of the task server under load")
    parser.add_argument(
        "--output", default=str(BENCH / "last_run.md"), help="markdown report (default bench/last_run.md)"
    )
    parser.add_argument("--json", help="also write every raw figure here")
    args = parser.parse_args(argv)
    sections = set(args.only or ["http", "sleepers", "latency", "memory", "cleanup"]) - set(args.skip)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
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
    if args.breakdown:
        results["breakdown"] = breakdown_rounds(args, log_dir)
    if args.profile:
        results["profiles"] = profile_endpoints(args, log_dir)
    results["elapsed_s"] = time.time() - began
    text = report(args, results, command)
    print(text)
    Path(args.output).write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    log(f"report written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

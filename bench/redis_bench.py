"""The Redis backend's benchmark: ``python -m bench --only redis`` (or ``python -m bench.redis_bench``).

Each round, on a throwaway redis-server:

1. **Bare SAQ**: a SAQ worker process running no-op jobs with concurrency C; this
   process enqueues N jobs (concurrently) and waits until none is left: jobs/s.
2. **async-tasks on Redis**: an API process (``uvicorn async_tasks.web:create_app``
   with TASK_BACKEND=redis://...) and an ``async-tasks worker --concurrency C``;
   this process creates N zero-delay ``sample`` tasks over HTTP (32 at a time) and
   waits until the session's stats count N completed: tasks/s, end to end.
3. **/status**: ``GET /tasks/{id}/status`` with wrk on an API process on the Redis
   backend, against the hello-world anchor measured the same way in the same round.

Pinning (2 cores): both workers, the measured API process and the anchor run on core
0; redis-server, the producer, the producing API process and wrk on core 1. Targets:
end to end ≥ 0.5 x bare SAQ, /status ≥ 0.5 x hello GET (medians of the rounds' ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from async_tasks.testing import free_port, redis_server
from bench.inproc import TUNED_ENV
from bench.load import add_arguments as add_load_arguments
from bench.load import measure, wrk
from bench.servers import hello_server, proc_cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
WORKER_CORE = "0"
SIDE_CORE = "1"
API = "/api/v1"
QUEUE = "bench-saq"


def log(message: str) -> None:
    print(f"[bench redis {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@contextmanager
def process(
    name: str, argv: list[str], core: str, env: dict[str, str], log_dir: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A process pinned to `core`, stopped (by PID) when the block ends."""
    with open(log_dir / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", core, *argv],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


# -- bare SAQ ---------------------------------------------------------------------------


async def _noop(ctx: Any) -> None:
    return None


def saq_worker_main(url: str, concurrency: int) -> None:
    """``python -m bench.redis_bench saq-worker URL C``: a bare SAQ worker of no-op jobs."""
    from saq import Worker
    from saq.queue.redis import RedisQueue

    from async_tasks.backends.redis.connection import blocking_client

    async def main() -> None:
        queue = RedisQueue(blocking_client(url), name=QUEUE)
        await queue.connect()
        worker = Worker(queue, functions=[("noop", _noop)], concurrency=concurrency)
        print("saq worker ready", flush=True)
        await worker.start()

    asyncio.run(main())


async def _saq_round(url: str, jobs: int) -> float:
    from saq.queue.redis import RedisQueue

    from async_tasks.backends.redis.connection import request_client

    queue = RedisQueue(request_client(url, 5000), name=QUEUE)
    await queue.connect()
    try:
        redis: Any = queue.redis
        began = time.perf_counter()
        await asyncio.gather(*(queue.enqueue("noop", timeout=0, ttl=-1) for _ in range(jobs)))
        # Polled, as a client of a queue would; every 5 ms costs the worker nothing.
        while await redis.zcard(queue.namespace("incomplete")) or await redis.llen(queue.namespace("active")):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        return jobs / (time.perf_counter() - began)
    finally:
        await queue.disconnect()


def saq_round(url: str, jobs: int, concurrency: int, log_dir: Path) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.redis_bench", "saq-worker", url, str(concurrency)]
    with process("saq-worker", argv, WORKER_CORE, {}, log_dir) as worker:
        time.sleep(2)  # its start-up
        before = proc_cpu_seconds(worker.pid)
        rate = run_pinned(_saq_round(url, jobs))
        per_job = (proc_cpu_seconds(worker.pid) - before) / jobs
    log(f"{jobs} jobs; CPU per job: worker {per_job * 1e6:.0f} µs")
    return {"saq_jobs_per_s": rate, "saq_cpu_per_job": per_job}


def run_pinned(coroutine: Any) -> Any:
    """Run the producer on the side core (this process moves there)."""
    os.sched_setaffinity(0, {int(SIDE_CORE)})
    try:
        return asyncio.run(coroutine)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 2)))


# -- async-tasks on Redis ---------------------------------------------------------------


def api_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "async_tasks.web:create_app", "--factory", "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning", "--host", "127.0.0.1",
            "--port", str(port)]  # fmt: skip


def _finish_tasks(base: str, token: str, began: float, timeout: float = 300) -> tuple[int, float]:
    """Wait until every task of the session has ended: (how many, seconds since `began`)."""
    with httpx.Client(base_url=base, headers={"X-Session-Token": token}, timeout=30) as client:
        deadline = time.monotonic() + timeout
        while True:
            stats = client.get(f"{API}/tasks/stats").json()["stats"]
            if stats["pending"] + stats["running"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # a request to the API each time: not too often
        elapsed = time.perf_counter() - began
        if stats["completed"] != stats["total"]:
            raise RuntimeError(f"not every task completed: {stats}")
        return int(stats["total"]), elapsed


def backend_env(url: str, prefix: str) -> dict[str, str]:
    return {**TUNED_ENV, "TASK_BACKEND": url, "REDIS_KEY_PREFIX": prefix}


def tasks_round(url: str, args: argparse.Namespace, log_dir: Path, prefix: str) -> dict[str, float]:
    """wrk creates zero-delay tasks for `redis_seconds`; then wait until all have completed."""
    env = backend_env(url, prefix)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker_argv = [sys.executable, "-m", "async_tasks.cli", "worker", "--concurrency", str(args.redis_concurrency)]
    with (
        process("api-producing", api_argv(port), SIDE_CORE, env, log_dir) as api,
        process("worker", worker_argv, WORKER_CORE, env, log_dir) as worker,
    ):
        wait_http(f"{base}/health", api)
        time.sleep(1)  # the worker's start-up
        with httpx.Client(base_url=base) as client:
            token = client.post(f"{API}/session").json()["token"]
        before = {"api": proc_cpu_seconds(api.pid), "worker": proc_cpu_seconds(worker.pid)}
        began = time.perf_counter()
        load = wrk(f"{base}{API}/demo/tasks/sample", args.redis_seconds, args, method="POST", body='{"delayMs": 0}',
                   token=token)  # fmt: skip
        created = time.perf_counter() - began
        tasks, elapsed = _finish_tasks(base, token, began)
        log(f"wrk: {load['requests']} creates in {created:.1f} s ({load['errors']} errors, p99 "
            f"{load['p99_us'] / 1000:.0f} ms); all {tasks} completed after {elapsed:.1f} s")  # fmt: skip
        per_task = {name: (proc_cpu_seconds(p.pid) - before[name]) / tasks
                    for name, p in (("api", api), ("worker", worker))}  # fmt: skip
    log(f"{tasks} tasks; CPU per task: api {per_task['api'] * 1e6:.0f} µs, worker {per_task['worker'] * 1e6:.0f} µs")
    return {"tasks_per_s": tasks / elapsed, "tasks": tasks, "api_cpu_per_task": per_task["api"],
            "worker_cpu_per_task": per_task["worker"]}  # fmt: skip


def measure_status(env: dict[str, str], args: argparse.Namespace, log_dir: Path, name: str) -> dict[str, Any]:
    """wrk on ``/tasks/{id}/status`` of an API process started with `env`, on core 0."""
    port = free_port()
    with process(name, api_argv(port), WORKER_CORE, env, log_dir) as api:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/health", api)
        with httpx.Client(base_url=base) as client:
            token = client.post(f"{API}/session").json()["token"]
            task = client.post(f"{API}/tasks", json={"executor": "sample", "params": {"delayMs": 0}},
                               headers={"X-Session-Token": token}).json()["task"]  # fmt: skip
        return measure(_Pinned(api.pid, port), f"{API}/tasks/{task['id']}/status", args, token=token)


def status_round(url: str, args: argparse.Namespace, log_dir: Path, prefix: str) -> dict[str, Any]:
    """wrk on /status of the Redis backend, of the memory backend and on the anchor, in the same round."""
    status = measure_status(backend_env(url, prefix), args, log_dir, "api-status")
    memory = measure_status(dict(TUNED_ENV), args, log_dir, "api-status-memory")
    hello = hello_server()
    try:
        hello.start(log_dir)
        anchor = measure(hello, "/", args)
    finally:
        hello.stop()
    return {"status_rps": status["rps"], "hello_rps": anchor["rps"], "status_p99_us": status["p99_us"],
            "ratio": status["rps"] / anchor["rps"], "cpu_ratio": status["rps_per_cpu"] / anchor["rps_per_cpu"],
            "memory_rps": memory["rps"], "memory_ratio": memory["rps"] / anchor["rps"],
            "vs_memory": status["rps"] / memory["rps"],
            "foreign_cpu": max(status["foreign_cpu_share"], memory["foreign_cpu_share"],
                               anchor["foreign_cpu_share"])}  # fmt: skip


class _Pinned:
    """What `bench.load.measure` needs of a server: its URL and PID."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid = pid
        self.url = f"http://127.0.0.1:{port}"


# -- the section ----------------------------------------------------------------------------


def redis_section(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Every round's figures, and their medians."""
    rounds: list[dict[str, Any]] = []
    with redis_server() as url:
        server_pid = _redis_pid(url)
        if server_pid is not None:
            os.sched_setaffinity(server_pid, {int(SIDE_CORE)})
        for number in range(1, args.redis_rounds + 1):
            log(f"round {number}: bare SAQ ({args.redis_tasks} no-op jobs) and async-tasks on Redis "
                f"(wrk creates zero-delay tasks for {args.redis_seconds:g} s), worker concurrency "
                f"{args.redis_concurrency}")  # fmt: skip
            saq: dict[str, float] = {}
            ours: dict[str, float] = {}
            # Alternate which goes first: the machine's speed drifts within a round.
            for which in ("saq", "ours") if number % 2 else ("ours", "saq"):
                if which == "saq":
                    saq = saq_round(url, args.redis_tasks, args.redis_concurrency, log_dir)
                else:
                    ours = tasks_round(url, args, log_dir, f"bench-{number}-e2e:")
            log(f"round {number}: /status on Redis and the hello anchor")
            status = status_round(url, args, log_dir, f"bench-{number}-status:")
            figures = {**saq, **ours, **status}
            figures["e2e_ratio"] = ours["tasks_per_s"] / saq["saq_jobs_per_s"]
            figures["e2e_cpu_ratio"] = saq["saq_cpu_per_job"] / ours["worker_cpu_per_task"]
            rounds.append(figures)
            log(f"round {number}: {ours['tasks_per_s']:.0f} tasks/s vs {saq['saq_jobs_per_s']:.0f} SAQ jobs/s "
                f"({figures['e2e_ratio']:.3f}); /status {status['ratio']:.3f} x hello")  # fmt: skip
    keys = ("saq_jobs_per_s", "tasks_per_s", "e2e_ratio", "e2e_cpu_ratio", "saq_cpu_per_job", "worker_cpu_per_task",
            "api_cpu_per_task", "status_rps", "hello_rps", "ratio", "cpu_ratio", "status_p99_us", "memory_rps",
            "memory_ratio", "vs_memory")  # fmt: skip
    return {
        "rounds": rounds,
        "median": {key: statistics.median(r[key] for r in rounds) for key in keys},
        "concurrency": args.redis_concurrency,
    }


def _redis_pid(url: str) -> int | None:
    port = url.rsplit(":", 1)[1].split("/")[0]
    found = subprocess.run(["pgrep", "-f", f"redis-server 127.0.0.1:{port}"], capture_output=True, text=True)
    return int(found.stdout.split()[0]) if found.stdout.strip() else None


def markdown(results: dict[str, Any]) -> str:
    median = results["median"]
    e2e, status = median["e2e_ratio"], median["ratio"]
    lines = [
        "## Redis backend",
        "",
        f"Worker concurrency {results['concurrency']}; {len(results['rounds'])} rounds, medians. Workers, the "
        "measured API process and the anchor on core 0; redis-server, the producers and wrk on core 1.",
        "",
        "| what | target | measured (median) | |",
        "|---|---|---|---|",
        f"| zero-delay `sample` tasks end to end (wrk creates over HTTP → all completed), API + worker | "
        f"≥ 0.5 x bare SAQ no-op jobs | **{e2e:.3f}** ({median['tasks_per_s']:,.0f} tasks/s vs "
        f"{median['saq_jobs_per_s']:,.0f} jobs/s) | **{'met' if e2e >= 0.5 else 'missed'}** |",
        f"| the same per worker CPU second | (report) | **{median['e2e_cpu_ratio']:.3f}** "
        f"({median['worker_cpu_per_task'] * 1e6:,.0f} µs per task vs {median['saq_cpu_per_job'] * 1e6:,.0f} µs "
        f"per job; API {median['api_cpu_per_task'] * 1e6:,.0f} µs per create) | — |",
        f"| `GET /tasks/{{id}}/status` on the Redis backend | ≥ 0.5 x hello GET | **{status:.3f}** "
        f"({median['status_rps']:,.0f} vs {median['hello_rps']:,.0f} req/s; p99 "
        f"{median['status_p99_us'] / 1000:.1f} ms) | **{'met' if status >= 0.5 else 'missed'}** |",
        f"| the same per server CPU second | (report) | **{median['cpu_ratio']:.3f}** | — |",
        f"| `/status` on the memory backend, same round (reference) | (report) | **{median['memory_ratio']:.3f}** "
        f"x hello GET; Redis ÷ memory **{median['vs_memory']:.3f}** | — |",
        "",
        "| round | SAQ jobs/s | tasks/s | ratio | worker µs/job, SAQ / ours | /status req/s | hello req/s | ratio "
        "| other load on core 0 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for number, r in enumerate(results["rounds"], 1):
        lines.append(
            f"| {number} | {r['saq_jobs_per_s']:,.0f} | {r['tasks_per_s']:,.0f} | {r['e2e_ratio']:.3f} | "
            f"{r['saq_cpu_per_job'] * 1e6:,.0f} / {r['worker_cpu_per_task'] * 1e6:,.0f} | "
            f"{r['status_rps']:,.0f} | {r['hello_rps']:,.0f} | {r['ratio']:.3f} | {r['foreign_cpu']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-rounds", type=int, default=3, help="Redis rounds (default 3)")
    parser.add_argument("--redis-tasks", type=int, default=3000, help="SAQ jobs per Redis round (default 3000)")
    parser.add_argument(
        "--redis-seconds", type=float, default=5, help="seconds wrk creates tasks per Redis round (default 5)"
    )
    parser.add_argument("--redis-concurrency", type=int, default=20, help="worker concurrency (default 20)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["saq-worker"]:
        saq_worker_main(argv[1], int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.redis_bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"async-tasks-bench-redis-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(markdown(redis_section(args, log_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The Redis backend's benchmark: ``python -m bench --only redis`` (or ``python -m bench.redis_bench``).

Each round, on a throwaway redis-server:

1. **Bare SAQ**: a SAQ worker process running no-op jobs with concurrency C (on uvloop,
   as `async-tasks worker` runs); this process enqueues N jobs (concurrently) and waits
   until none is left: jobs/s.
2. **async-tasks on Redis**: an API process (``uvicorn async_tasks.web:create_app``
   with TASK_BACKEND=redis://...) and an ``async-tasks worker --concurrency C``;
   this process creates N zero-delay ``sample`` tasks over HTTP (32 at a time) and
   waits until the session's stats count N completed: tasks/s, end to end.
3. **/status**: ``GET /tasks/{id}/status`` with wrk on an API process on the Redis
   backend, against the hello-world anchor measured the same way in the same round.

Each run also reads Redis's own counters before and after (``INFO commandstats``: every
command, those inside scripts included; ``INFO cpu``): Redis commands and Redis CPU per
job or task. Then a scaling table: both with 1, 2 and 4 worker processes
(``--redis-scaling``).

Pinning (2 cores): the workers, the measured API process and the anchor run on core
0; redis-server, the producer, the producing API process and wrk on core 1. Targets
(issue 23): end to end ≥ 0.8 x bare SAQ, worker CPU per task ≤ 1.3 x SAQ's per job,
Redis commands per task ≤ 2 x SAQ's per job, /status ≥ 0.6 x hello GET (medians of the
rounds' ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import httpx

from bench.inproc import TUNED_ENV
from bench.load import add_arguments as add_load_arguments
from bench.load import measure, wrk
from bench.servers import hello_server, proc_cpu_seconds
from tests.servers import free_port, redis_server

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


# -- what Redis did -----------------------------------------------------------------------


def redis_counts(url: str) -> dict[str, int]:
    """Redis's own counters: commands run (``INFO commandstats``: scripts' inner commands
    counted too, as Redis counts them), of which script calls (EVALSHA/EVAL/FCALL), and the
    server's CPU time in microseconds (``INFO cpu``)."""
    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    try:
        stats = cast(dict[str, Any], client.info("commandstats"))
        cpu = cast(dict[str, Any], client.info("cpu"))
    finally:
        client.close()
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    scripts = sum(n for name, n in calls.items() if name in ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall"))
    # `info` itself is counted: leave the two of each reading out.
    total = sum(calls.values()) - calls.get("info", 0)
    cpu_us = int((float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])) * 1e6)
    return {"commands": total, "scripts": scripts, "cpu_us": cpu_us}


def per_unit(before: dict[str, int], after: dict[str, int], units: int) -> dict[str, float]:
    """Redis commands, script calls and Redis CPU seconds per job or task between two readings."""
    return {
        "commands": (after["commands"] - before["commands"]) / units,
        "scripts": (after["scripts"] - before["scripts"]) / units,
        "redis_cpu": (after["cpu_us"] - before["cpu_us"]) / 1e6 / units,
    }


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

    # On uvloop, as `async-tasks worker` runs where uvloop is installed: the same event loop.
    import uvloop

    uvloop.run(main())


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


def saq_round(url: str, jobs: int, concurrency: int, log_dir: Path, workers: int = 1) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.redis_bench", "saq-worker", url, str(concurrency)]
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(process(f"saq-worker-{n}", argv, WORKER_CORE, {}, log_dir)) for n in range(workers)
        ]
        time.sleep(2)  # their start-up
        before = sum(proc_cpu_seconds(p.pid) for p in procs)
        counts = redis_counts(url)
        rate = run_pinned(_saq_round(url, jobs))
        redis = per_unit(counts, redis_counts(url), jobs)
        per_job = (sum(proc_cpu_seconds(p.pid) for p in procs) - before) / jobs
    log(f"{jobs} jobs, {workers} worker(s); CPU per job: worker {per_job * 1e6:.0f} µs, Redis "
        f"{redis['redis_cpu'] * 1e6:.0f} µs; {redis['commands']:.1f} Redis commands per job")  # fmt: skip
    return {"saq_jobs_per_s": rate, "saq_cpu_per_job": per_job, "saq_commands_per_job": redis["commands"],
            "saq_scripts_per_job": redis["scripts"], "saq_redis_cpu_per_job": redis["redis_cpu"]}  # fmt: skip


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


def tasks_round(url: str, args: argparse.Namespace, log_dir: Path, prefix: str, workers: int = 1) -> dict[str, float]:
    """wrk creates zero-delay tasks for `redis_seconds`; then wait until all have completed."""
    env = backend_env(url, prefix)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker_argv = [sys.executable, "-m", "async_tasks.cli", "worker", "--concurrency", str(args.redis_concurrency)]
    with contextlib.ExitStack() as stack:
        api = stack.enter_context(process("api-producing", api_argv(port), SIDE_CORE, env, log_dir))
        procs = [stack.enter_context(process(f"worker-{n}", worker_argv, WORKER_CORE, env, log_dir))
                 for n in range(workers)]  # fmt: skip
        wait_http(f"{base}/health", api)
        time.sleep(1 + workers / 2)  # the workers' start-up
        with httpx.Client(base_url=base) as client:
            token = client.post(f"{API}/session").json()["token"]
        before = {"api": proc_cpu_seconds(api.pid), "worker": sum(proc_cpu_seconds(p.pid) for p in procs)}
        counts = redis_counts(url)
        began = time.perf_counter()
        load = wrk(f"{base}{API}/demo/tasks/sample", args.redis_seconds, args, method="POST", body='{"delayMs": 0}',
                   token=token)  # fmt: skip
        created = time.perf_counter() - began
        tasks, elapsed = _finish_tasks(base, token, began)
        # Read before the idle upkeep adds its few commands; the stats polls are counted
        # (a client of a task server polls too), about 20 a second.
        redis = per_unit(counts, redis_counts(url), tasks)
        log(f"wrk: {load['requests']} creates in {created:.1f} s ({load['errors']} errors, p99 "
            f"{load['p99_us'] / 1000:.0f} ms); all {tasks} completed after {elapsed:.1f} s")  # fmt: skip
        per_task = {"api": (proc_cpu_seconds(api.pid) - before["api"]) / tasks,
                    "worker": (sum(proc_cpu_seconds(p.pid) for p in procs) - before["worker"]) / tasks}  # fmt: skip
    log(f"{tasks} tasks, {workers} worker(s); CPU per task: api {per_task['api'] * 1e6:.0f} µs, worker "
        f"{per_task['worker'] * 1e6:.0f} µs, Redis {redis['redis_cpu'] * 1e6:.0f} µs; {redis['commands']:.1f} Redis "
        f"commands per task ({redis['scripts']:.1f} scripts)")  # fmt: skip
    return {"tasks_per_s": tasks / elapsed, "tasks": tasks, "api_cpu_per_task": per_task["api"],
            "worker_cpu_per_task": per_task["worker"], "commands_per_task": redis["commands"],
            "scripts_per_task": redis["scripts"], "redis_cpu_per_task": redis["redis_cpu"]}  # fmt: skip


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
            figures["commands_ratio"] = ours["commands_per_task"] / saq["saq_commands_per_job"]
            rounds.append(figures)
            log(f"round {number}: {ours['tasks_per_s']:.0f} tasks/s vs {saq['saq_jobs_per_s']:.0f} SAQ jobs/s "
                f"({figures['e2e_ratio']:.3f}); /status {status['ratio']:.3f} x hello")  # fmt: skip
        scaling = scaling_rounds(url, args, log_dir)
    keys = ("saq_jobs_per_s", "tasks_per_s", "e2e_ratio", "e2e_cpu_ratio", "saq_cpu_per_job", "worker_cpu_per_task",
            "api_cpu_per_task", "status_rps", "hello_rps", "ratio", "cpu_ratio", "status_p99_us", "memory_rps",
            "memory_ratio", "vs_memory", "commands_per_task", "saq_commands_per_job", "commands_ratio",
            "scripts_per_task", "redis_cpu_per_task", "saq_redis_cpu_per_job")  # fmt: skip
    return {
        "rounds": rounds,
        "median": {key: statistics.median(r[key] for r in rounds) for key in keys},
        "concurrency": args.redis_concurrency,
        "scaling": scaling,
    }


def scaling_rounds(url: str, args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    """Bare SAQ and async-tasks with 1, 2 and 4 worker processes (each of `--redis-concurrency`),
    every worker on the workers' core: where the throughput stops growing, and what Redis
    spends per task (what a host with more cores would be bound by)."""
    rows = []
    for workers in args.redis_scaling:
        log(f"scaling: {workers} worker process(es)")
        saq = saq_round(url, args.redis_tasks, args.redis_concurrency, log_dir, workers=workers)
        ours = tasks_round(url, args, log_dir, f"bench-scale-{workers}:", workers=workers)
        rows.append({"workers": workers, **saq, **ours, "e2e_ratio": ours["tasks_per_s"] / saq["saq_jobs_per_s"]})
    return rows


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
        f"≥ 0.8 x bare SAQ no-op jobs | **{e2e:.3f}** ({median['tasks_per_s']:,.0f} tasks/s vs "
        f"{median['saq_jobs_per_s']:,.0f} jobs/s) | **{'met' if e2e >= 0.8 else 'missed'}** |",
        f"| worker CPU per task ÷ SAQ's per job | ≤ 1.3 | **{1 / median['e2e_cpu_ratio']:.2f}** "
        f"({median['worker_cpu_per_task'] * 1e6:,.0f} µs per task vs {median['saq_cpu_per_job'] * 1e6:,.0f} µs "
        f"per job; API {median['api_cpu_per_task'] * 1e6:,.0f} µs per create) | "
        f"**{'met' if 1 / median['e2e_cpu_ratio'] <= 1.3 else 'missed'}** |",
        f"| Redis commands per completed task ÷ SAQ's per job (`INFO commandstats`, scripts' inner commands "
        f"counted) | ≤ 2 | **{median['commands_ratio']:.2f}** ({median['commands_per_task']:.1f} per task, of them "
        f"{median['scripts_per_task']:.1f} script calls, vs {median['saq_commands_per_job']:.1f} per job; Redis CPU "
        f"{median['redis_cpu_per_task'] * 1e6:,.0f} vs {median['saq_redis_cpu_per_job'] * 1e6:,.0f} µs) | "
        f"**{'met' if median['commands_ratio'] <= 2 else 'missed'}** |",
        f"| `GET /tasks/{{id}}/status` on the Redis backend | ≥ 0.6 x hello GET | **{status:.3f}** "
        f"({median['status_rps']:,.0f} vs {median['hello_rps']:,.0f} req/s; p99 "
        f"{median['status_p99_us'] / 1000:.1f} ms) | **{'met' if status >= 0.6 else 'missed'}** |",
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
    if results.get("scaling"):
        lines += [
            "",
            "Scaling: worker processes of concurrency "
            f"{results['concurrency']} each, all on core 0 (one core for all workers); Redis, the API and wrk on "
            "core 1. Redis CPU per task is what bounds a host with more cores: one Redis core serves at most "
            "1 ÷ that many tasks a second.",
            "",
            "| workers | SAQ jobs/s | tasks/s | ratio | worker µs/task (SAQ / ours) | Redis µs/task (SAQ / ours) "
            "| Redis commands/task (SAQ / ours) | one Redis core's bound, tasks/s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results["scaling"]:
            lines.append(
                f"| {r['workers']} | {r['saq_jobs_per_s']:,.0f} | {r['tasks_per_s']:,.0f} | {r['e2e_ratio']:.3f} | "
                f"{r['saq_cpu_per_job'] * 1e6:,.0f} / {r['worker_cpu_per_task'] * 1e6:,.0f} | "
                f"{r['saq_redis_cpu_per_job'] * 1e6:,.0f} / {r['redis_cpu_per_task'] * 1e6:,.0f} | "
                f"{r['saq_commands_per_job']:.1f} / {r['commands_per_task']:.1f} | "
                f"{1 / r['redis_cpu_per_task']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-rounds", type=int, default=3, help="Redis rounds (default 3)")
    parser.add_argument("--redis-tasks", type=int, default=3000, help="SAQ jobs per Redis round (default 3000)")
    parser.add_argument(
        "--redis-seconds", type=float, default=5, help="seconds wrk creates tasks per Redis round (default 5)"
    )
    parser.add_argument("--redis-concurrency", type=int, default=20, help="worker concurrency (default 20)")
    parser.add_argument(
        "--redis-scaling",
        type=int,
        nargs="*",
        default=[1, 2, 4],
        help="worker processes of the scaling table (default 1 2 4; none skips it)",
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["saq-worker"]:
        saq_worker_main(argv[1], int(argv[2]))
        return 0
    end_to_end = argv[:1] == ["e2e"]
    parser = argparse.ArgumentParser(prog="python -m bench.redis_bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    add_load_arguments(parser)
    args = parser.parse_args(argv[1:] if end_to_end else argv)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"async-tasks-bench-redis-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    if end_to_end:
        # ``e2e [options]``: the end-to-end runs of one round only (bare SAQ, then
        # async-tasks; no /status, no scaling), for a quick A/B of the worker's costs.
        with redis_server() as url:
            saq = saq_round(url, args.redis_tasks, args.redis_concurrency, log_dir)
            ours = tasks_round(url, args, log_dir, "bench-e2e:")
        us = {key: value * 1e6 for key, value in (*ours.items(), *saq.items()) if "cpu" in key}
        print(f"{ours['tasks_per_s']:.0f} tasks/s vs {saq['saq_jobs_per_s']:.0f} SAQ jobs/s "
              f"({ours['tasks_per_s'] / saq['saq_jobs_per_s']:.3f}); worker CPU {us['worker_cpu_per_task']:.0f} µs "
              f"per task vs SAQ's {us['saq_cpu_per_job']:.0f} µs per job; API {us['api_cpu_per_task']:.0f} µs per "
              f"create; Redis {ours['commands_per_task']:.1f} commands and {us['redis_cpu_per_task']:.0f} µs CPU per "
              f"task vs {saq['saq_commands_per_job']:.1f} and {us['saq_redis_cpu_per_job']:.0f} per job")  # fmt: skip
        return 0
    print(markdown(redis_section(args, log_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

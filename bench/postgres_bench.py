"""The PostgreSQL backend's benchmark: ``python -m bench --only postgres`` (or
``python -m bench.postgres_bench``), the counterpart of `bench.redis_bench`.

Each round, on a throwaway PostgreSQL cluster (initdb; ``fsync`` and
``synchronous_commit`` off, as a benchmark of the software rather than of the disk):

1. **Bare SAQ on Postgres**: a SAQ worker process (its Postgres queue) running no-op jobs
   with concurrency C; this process enqueues N jobs (concurrently) and waits until none is
   left: jobs/s.
2. **async-tasks on PostgreSQL**: an API process (``uvicorn async_tasks.web:create_app``
   with TASK_BACKEND=postgresql://...) and an ``async-tasks worker --concurrency C``; wrk
   creates zero-delay ``sample`` tasks over HTTP, then this process waits until the
   session's stats count them all completed: tasks/s, end to end.
3. **/status**: ``GET /tasks/{id}/status`` with wrk on an API process on the PostgreSQL
   backend, against the hello-world anchor measured the same way in the same round.

Pinning (2 cores) as for Redis: the workers, the measured API process and the anchor on
core 0; PostgreSQL, the producer, the producing API process and wrk on core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench.inproc import TUNED_ENV
from bench.load import add_arguments as add_load_arguments
from bench.load import measure, wrk
from bench.redis_bench import (
    API,
    SIDE_CORE,
    WORKER_CORE,
    _finish_tasks,
    api_argv,
    measure_status,
    process,
    run_pinned,
    wait_http,
)
from bench.servers import hello_server, proc_cpu_seconds

QUEUE = "bench-saq"


def log(message: str) -> None:
    print(f"[bench postgres {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- bare SAQ ---------------------------------------------------------------------------


async def _noop(ctx: Any) -> None:
    return None


def saq_worker_main(url: str, concurrency: int) -> None:
    """``python -m bench.postgres_bench saq-worker URL C``: a bare SAQ worker of no-op jobs."""
    from saq import Worker
    from saq.queue.postgres import PostgresQueue

    async def main() -> None:
        queue = PostgresQueue.from_url(url, name=QUEUE)
        await queue.connect()
        worker = Worker(queue, functions=[("noop", _noop)], concurrency=concurrency)
        print("saq worker ready", flush=True)
        await worker.start()

    asyncio.run(main())


async def _saq_round(url: str, jobs: int) -> float:
    from saq.queue.postgres import PostgresQueue

    queue = PostgresQueue.from_url(url, name=QUEUE)
    await queue.connect()
    try:
        began = time.perf_counter()
        await asyncio.gather(*(queue.enqueue("noop", timeout=0, ttl=-1) for _ in range(jobs)))
        # Polled, as a client of a queue would; every 5 ms costs the worker nothing.
        while await queue.count("incomplete"):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        return jobs / (time.perf_counter() - began)
    finally:
        await queue.disconnect()


def saq_round(url: str, jobs: int, concurrency: int, log_dir: Path) -> dict[str, float]:
    argv = [sys.executable, "-m", "bench.postgres_bench", "saq-worker", url, str(concurrency)]
    with process("saq-worker-postgres", argv, WORKER_CORE, {}, log_dir) as worker:
        time.sleep(2)  # its start-up
        before = proc_cpu_seconds(worker.pid)
        rate = run_pinned(_saq_round(url, jobs))
        per_job = (proc_cpu_seconds(worker.pid) - before) / jobs
    log(f"{jobs} jobs; CPU per job: worker {per_job * 1e6:.0f} µs")
    return {"saq_jobs_per_s": rate, "saq_cpu_per_job": per_job}


# -- async-tasks on PostgreSQL ----------------------------------------------------------


def backend_env(url: str, schema: str) -> dict[str, str]:
    return {**TUNED_ENV, "TASK_BACKEND": url, "POSTGRES_SCHEMA": schema}


def tasks_round(url: str, args: argparse.Namespace, log_dir: Path, schema: str) -> dict[str, float]:
    """wrk creates zero-delay tasks for `postgres_seconds`; then wait until all have completed."""
    import httpx

    env = backend_env(url, schema)
    port = free_port_()
    base = f"http://127.0.0.1:{port}"
    worker_argv = [sys.executable, "-m", "async_tasks.cli", "worker", "--concurrency", str(args.postgres_concurrency)]
    with process("api-producing-postgres", api_argv(port), SIDE_CORE, env, log_dir) as api:
        wait_http(f"{base}/health", api)  # it has made the schema: the worker finds it
        with process("worker-postgres", worker_argv, WORKER_CORE, env, log_dir) as worker:
            time.sleep(1.5)  # the worker's start-up
            with httpx.Client(base_url=base) as client:
                token = client.post(f"{API}/session").json()["token"]
            before = {"api": proc_cpu_seconds(api.pid), "worker": proc_cpu_seconds(worker.pid)}
            began = time.perf_counter()
            load = wrk(f"{base}{API}/demo/tasks/sample", args.postgres_seconds, args, method="POST",
                       body='{"delayMs": 0}', token=token)  # fmt: skip
            created = time.perf_counter() - began
            tasks, elapsed = _finish_tasks(base, token, began)
            log(f"wrk: {load['requests']} creates in {created:.1f} s ({load['errors']} errors, p99 "
                f"{load['p99_us'] / 1000:.0f} ms); all {tasks} completed after {elapsed:.1f} s")  # fmt: skip
            per_task = {name: (proc_cpu_seconds(p.pid) - before[name]) / tasks
                        for name, p in (("api", api), ("worker", worker))}  # fmt: skip
    log(f"{tasks} tasks; CPU per task: api {per_task['api'] * 1e6:.0f} µs, worker {per_task['worker'] * 1e6:.0f} µs")
    return {"tasks_per_s": tasks / elapsed, "tasks": tasks, "api_cpu_per_task": per_task["api"],
            "worker_cpu_per_task": per_task["worker"]}  # fmt: skip


def free_port_() -> int:
    from tests.servers import free_port

    return free_port()


def status_round(url: str, args: argparse.Namespace, log_dir: Path, schema: str) -> dict[str, Any]:
    """wrk on /status of the PostgreSQL backend, of the memory backend and on the anchor, in the same round."""
    status = measure_status(backend_env(url, schema), args, log_dir, "api-status-postgres")
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


# -- the section ----------------------------------------------------------------------------


def postgres_section(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Every round's figures, and their medians."""
    from tests.faults.postgres_process import PostgresProcess

    rounds: list[dict[str, Any]] = []
    with PostgresProcess() as server:
        for pid in server.processes():
            os.sched_setaffinity(pid, {int(SIDE_CORE)})  # its backends are forked from it: they stay there
        url = server.url
        for number in range(1, args.postgres_rounds + 1):
            log(f"round {number}: bare SAQ ({args.postgres_tasks} no-op jobs) and async-tasks on PostgreSQL "
                f"(wrk creates zero-delay tasks for {args.postgres_seconds:g} s), worker concurrency "
                f"{args.postgres_concurrency}")  # fmt: skip
            saq: dict[str, float] = {}
            ours: dict[str, float] = {}
            for which in ("saq", "ours") if number % 2 else ("ours", "saq"):
                if which == "saq":
                    saq = saq_round(url, args.postgres_tasks, args.postgres_concurrency, log_dir)
                else:
                    ours = tasks_round(url, args, log_dir, f"bench_{number}_e2e")
            log(f"round {number}: /status on PostgreSQL and the hello anchor")
            status = status_round(url, args, log_dir, f"bench_{number}_status")
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
        "concurrency": args.postgres_concurrency,
    }


def markdown(results: dict[str, Any]) -> str:
    median = results["median"]
    e2e, status = median["e2e_ratio"], median["ratio"]
    lines = [
        "## PostgreSQL backend",
        "",
        f"Worker concurrency {results['concurrency']}; {len(results['rounds'])} rounds, medians. Workers, the "
        "measured API process and the anchor on core 0; PostgreSQL, the producers and wrk on core 1.",
        "",
        "| what | target | measured (median) | |",
        "|---|---|---|---|",
        f"| zero-delay `sample` tasks end to end (wrk creates over HTTP → all completed), API + worker | "
        f"≥ 0.5 x bare SAQ no-op jobs on Postgres | **{e2e:.3f}** ({median['tasks_per_s']:,.0f} tasks/s vs "
        f"{median['saq_jobs_per_s']:,.0f} jobs/s) | **{'met' if e2e >= 0.5 else 'missed'}** |",
        f"| the same per worker CPU second | (report) | **{median['e2e_cpu_ratio']:.3f}** "
        f"({median['worker_cpu_per_task'] * 1e6:,.0f} µs per task vs {median['saq_cpu_per_job'] * 1e6:,.0f} µs "
        f"per job; API {median['api_cpu_per_task'] * 1e6:,.0f} µs per create) | — |",
        f"| `GET /tasks/{{id}}/status` on the PostgreSQL backend | ≥ 0.5 x hello GET | **{status:.3f}** "
        f"({median['status_rps']:,.0f} vs {median['hello_rps']:,.0f} req/s; p99 "
        f"{median['status_p99_us'] / 1000:.1f} ms) | **{'met' if status >= 0.5 else 'missed'}** |",
        f"| the same per server CPU second | (report) | **{median['cpu_ratio']:.3f}** | — |",
        f"| `/status` on the memory backend, same round (reference) | (report) | **{median['memory_ratio']:.3f}** "
        f"x hello GET; PostgreSQL ÷ memory **{median['vs_memory']:.3f}** | — |",
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
    parser.add_argument("--postgres-rounds", type=int, default=3, help="PostgreSQL rounds (default 3)")
    parser.add_argument("--postgres-tasks", type=int, default=3000, help="SAQ jobs per PostgreSQL round (default 3000)")
    parser.add_argument(
        "--postgres-seconds", type=float, default=5, help="seconds wrk creates tasks per PostgreSQL round (default 5)"
    )
    parser.add_argument("--postgres-concurrency", type=int, default=20, help="worker concurrency (default 20)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["saq-worker"]:
        saq_worker_main(argv[1], int(argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.postgres_bench", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"async-tasks-bench-postgres-{os.getpid()}"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(markdown(postgres_section(args, log_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

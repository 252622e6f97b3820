"""``python -m bench``: the benchmark suite (see bench/README.md and bench/RESULTS.md).

Starts the real task server, a bare Litestar hello-world app (the anchor) and two peers
serving the same routes (`bench/peers/`: a FastAPI + BackgroundTasks app and the minimal
tracked app of PERFORMANCE.md) under uvicorn with the same options, each pinned to
core 0; loads them with wrk pinned to core 1; runs the in-process measurements in fresh
interpreters pinned to core 0; prints a markdown report and writes it to ``--output``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench import postgres_bench, redis_bench
from bench.api import LIST_PAGE
from bench.http_rounds import breakdown_rounds, http_rounds
from bench.load import add_arguments as add_load_arguments
from bench.profiling import profile_endpoints
from bench.report import machine, report
from bench.servers import BENCH, log, run_inproc
from bench.sleepers import sleepers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="HTTP rounds (default 5); medians are reported")
    add_load_arguments(parser)
    parser.add_argument("--sleepers", type=int, default=100_000, help="sleeping tasks for the load test")
    parser.add_argument("--finished", type=int, default=100_000, help="finished tasks for the memory test")
    parser.add_argument("--cleanup-sessions", type=int, default=10_000)
    parser.add_argument("--cleanup-per-session", type=int, default=100)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["http", "sleepers", "latency", "memory", "cleanup", "redis", "postgres"],
        help="run only these sections (redis, postgres: the shared backends, see bench/redis_bench.py and "
        "bench/postgres_bench.py; redis runs by default when redis-server is installed, postgres only when named)",
    )
    parser.add_argument(
        "--skip", nargs="+", default=[], choices=["http", "sleepers", "latency", "memory", "cleanup", "redis"]
    )
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
    redis_bench.add_arguments(parser)
    postgres_bench.add_arguments(parser)
    args = parser.parse_args(argv)
    # Redis is measured by default when redis-server is installed (issue 23's figures sit
    # beside the HTTP rounds'); PostgreSQL only with --only postgres.
    default = ["http", "sleepers", "latency", "memory", "cleanup"] + (["redis"] if shutil.which("redis-server") else [])
    sections = set(args.only or default) - set(args.skip)
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
        results["latency"] = run_inproc("latency")
        results["costs"] = run_inproc("costs")
    if "memory" in sections:
        results["finished_memory"] = run_inproc("finished-memory", "--count", str(args.finished))
        results["finished_memory_traced"] = run_inproc(
            "finished-memory", "--count", str(min(args.finished, 10_000)), "--tracemalloc"
        )
    if "sleepers" in sections:
        log("sleeping tasks")
        results["sleepers"] = sleepers(args, log_dir)
    if "cleanup" in sections:
        results["cleanup"] = run_inproc(
            "cleanup", "--sessions", str(args.cleanup_sessions), "--per-session", str(args.cleanup_per_session)
        )
    if "redis" in sections:
        results["redis"] = redis_bench.redis_section(args, log_dir)
    if "postgres" in sections:
        results["postgres"] = postgres_bench.postgres_section(args, log_dir)
    if args.breakdown:
        results["breakdown"] = breakdown_rounds(args, log_dir)
    if args.profile:
        results["profiles"] = profile_endpoints(args, log_dir)
    results["elapsed_s"] = time.time() - began
    text = report(args, results, command)
    if "redis" in results:
        text += "\n" + redis_bench.markdown(results["redis"])
    if "postgres" in results:
        text += "\n" + postgres_bench.markdown(results["postgres"])
    print(text)
    Path(args.output).write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str), encoding="utf-8")
    log(f"report written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

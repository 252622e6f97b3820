"""Load with wrk and what one measured run records: requests per second, latency
percentiles, the server's CPU time and how much of its core other processes took.

`measure` repeats a run that other processes disturbed (``--max-foreign``,
``--foreign-retries``) after waiting for a quiet core (``--quiet-wait``); `add_arguments`
declares those options and wrk's own (``--duration``, ``--warmup``, ``--connections``)
for every entry point.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time
from typing import Any, Protocol

from bench.servers import BENCH, CLIENT_CORE, SERVER_CORE, core_busy_seconds, log, proc_cpu_seconds

WRK_LUA = BENCH / "wrk.lua"


class Target(Protocol):
    """What `measure` needs of a server: its URL and its process id."""

    @property
    def url(self) -> str: ...

    @property
    def pid(self) -> int: ...


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
    server: Target,
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
    if result["errors"] > 0.01 * max(result["requests"], 1):
        # A run of refusals (a rate limit, a quota) measures the refusal, not the route.
        log(f"  WARNING {path}: {result['errors']} of {result['requests']} requests failed: this run measures errors")
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
    server: Target,
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of wrk's runs and of `measure`'s repeats."""
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

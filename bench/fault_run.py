"""A fault run on real processes: ``python -m bench.fault_run``.

A redis-server (with its append-only file), a proxy in front of it that loses one Lua
script reply in a hundred (after Redis ran the script: redis-py sends it again), two API
servers and three workers, all real ``async-tasks`` processes. A client creates tasks
(zero to half a second each, two automatic retries) on either API with an
Idempotency-Key, sending the same request again after any error, while a storm kills a
random worker or API server with SIGKILL (now and then SIGTERM) and restarts it.

At the end (storm over, every process up) it waits until nothing is pending or running
and checks: every key made exactly one task (none duplicated), every task the client was
told exists is there and ended (none lost), and the store's counters match its indexes
(`RedisTaskStore.verify` repairs nothing). Not a test: it runs for about a minute and
prints its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from async_tasks.backends.redis import RedisTaskStore
from async_tasks.task import TaskStatus
from tests.faults.commands import any_script
from tests.faults.proxy import RedisFaultProxy
from tests.faults.redis_process import RedisProcess
from tests.servers import free_port

SECRET = "fault-run-secret-0123456789abcdef"
PREFIX = "fault-run:"
API = "/api/v1"


class Process:
    """One ``async-tasks`` process of the run, restarted with the same command."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.argv, self.env, self.logs = name, argv, env, logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def start(self) -> None:
        out = open(self.logs / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "async_tasks.cli", *self.argv], env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        out.close()

    def kill(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.kills += 1

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


async def up(base: str, limit: float = 30) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=2) as http:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if (await http.get("/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{base} did not come up")


async def run(args: argparse.Namespace) -> int:
    logs = Path(tempfile.mkdtemp(prefix="fault-run-"))
    rng = random.Random(args.seed)
    with RedisProcess(appendonly=True) as redis, RedisFaultProxy(redis.url) as proxy:
        env = {**os.environ, "TASK_BACKEND": proxy.url, "SECRET_KEY": SECRET, "REDIS_KEY_PREFIX": PREFIX,
               "TASK_CREATE_RATE": "0", "TASK_READ_RATE": "0", "WORKER_LEASE_MS": "1500",
               "SHUTDOWN_GRACE_MS": "1000", "LOG_LEVEL": "warning", "RETRY_BACKOFF_MS": "100",
               # Every task kept to the end, so that each can be accounted for.
               "MAX_COMPLETED_TASKS": "1000000", "MAX_FAILED_TASKS": "1000000", "MAX_CANCELLED_TASKS": "1000000",
               "MAX_TASKS": "1000000"}  # fmt: skip
        ports = [free_port(), free_port()]
        apis = [Process(f"api{i}", ["serve", "--port", str(port)], env, logs) for i, port in enumerate(ports)]
        workers = [Process(f"worker{i}", ["worker", "--concurrency", "8"], env, logs) for i in range(3)]
        for process in (*apis, *workers):
            process.start()
        for port in ports:
            await up(f"http://127.0.0.1:{port}")
        storm = proxy.lose_reply_randomly(args.lose, any_script, seed=args.seed)
        made: dict[str, str] = {}
        answered_errors = 0
        stop = asyncio.Event()

        async def client(worker_no: int) -> None:
            nonlocal answered_errors
            async with httpx.AsyncClient(timeout=5) as http:
                token = None
                while token is None:
                    try:
                        token = (await http.post(f"http://127.0.0.1:{ports[0]}{API}/session")).json()["token"]
                    except (httpx.HTTPError, ValueError, KeyError):
                        await asyncio.sleep(0.2)
                http.headers["X-Session-Token"] = token
                n = 0
                while not stop.is_set():
                    key = f"c{worker_no}-{n}"
                    n += 1
                    body = {"executor": "sample", "params": {"delayMs": rng.choice((0, 50, 200, 500))},
                            "maxRetries": 2, "start": True}  # fmt: skip
                    while True:  # the same request again until it is answered
                        port = rng.choice(ports)
                        try:
                            answer = await http.post(f"http://127.0.0.1:{port}{API}/tasks", json=body,
                                                     headers={"Idempotency-Key": key})  # fmt: skip
                        except httpx.HTTPError:
                            answered_errors += 1
                            await asyncio.sleep(0.1)
                            continue
                        if answer.status_code in (200, 201):
                            made[key] = answer.json()["task"]["id"]
                            break
                        answered_errors += 1
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(rng.uniform(0, 0.02))

        async def chaos() -> None:
            while not stop.is_set():
                await asyncio.sleep(rng.uniform(0.5, 1.5))
                victim = rng.choice(workers + apis) if rng.random() < 0.85 else rng.choice(apis)
                victim.kill(signal.SIGKILL if rng.random() < 0.8 else signal.SIGTERM)
                await asyncio.sleep(rng.uniform(0.1, 0.8))
                victim.start()

        began = time.monotonic()
        tasks = [asyncio.create_task(client(i)) for i in range(args.clients)]
        storm_task = asyncio.create_task(chaos())
        await asyncio.sleep(args.seconds)
        stop.set()
        await asyncio.gather(*tasks, storm_task)
        storm.cancel()
        for port in ports:
            await up(f"http://127.0.0.1:{port}")
        kills = sum(p.kills for p in (*apis, *workers))
        print(f"created {len(made)} tasks in {time.monotonic() - began:.0f} s; {storm.count} script replies lost; "
              f"kills {kills}; errors answered (and retried) {answered_errors}")  # fmt: skip
        store = RedisTaskStore(Redis.from_url(redis.url), prefix=PREFIX)
        deadline = time.monotonic() + 120
        while True:
            totals = await store.totals()
            active = totals.by_status[TaskStatus.PENDING] + totals.by_status[TaskStatus.RUNNING]
            if active == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        totals = await store.totals()
        held = sum(totals.by_status.values())
        counts = {status.value: n for status, n in totals.by_status.items() if n}
        distinct = len(set(made.values()))
        repairs = await store.verify()
        reasons: dict[str, int] = {}
        raw: Any = store.redis
        for task_id in made.values():
            fields = await raw.hmget(store.keys.task(task_id), ["status", "error"])
            if fields[0] is None:
                reasons["missing"] = reasons.get("missing", 0) + 1
            elif fields[0] == b'"failed"':
                reasons[fields[1].decode()[:60]] = reasons.get(fields[1].decode()[:60], 0) + 1
        await store.aclose()
        for process in (*apis, *workers):
            process.stop()
        print(f"keys {len(made)}, tasks {distinct} (one per key: {distinct == len(made)}), held {held}: {counts}")
        print(f"failed for good, by error: {reasons or 'none'}; counter repairs: {repairs or 'none'}; logs in {logs}")
        ok = active == 0 and distinct == len(made) == held and not repairs and "missing" not in reasons
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fault_run", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="how long the storm lasts (default 60)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients creating tasks (default 8)")
    parser.add_argument("--lose", type=float, default=0.01, help="share of script replies lost (default 0.01)")
    parser.add_argument("--seed", type=int, default=1)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

"""How late a delayed start starts: ``python -m bench.delayed_start``.

On each backend (memory; Redis on a throwaway redis-server and PostgreSQL on a throwaway
cluster, each with an API engine and a worker engine in this process, as ``serve`` and
``async-tasks worker`` would be), N
tasks are created with ``startAt`` spread over the next few seconds; each one's lateness
is ``startedAt - startAt`` (the time the store stamped when its attempt began: the
server's clock on Redis and PostgreSQL, this machine's in memory, all on this machine). A negative lateness
would be a start before its time. Prints min / median / p95 / max per backend.
"""

from __future__ import annotations

import argparse
import random
import statistics
from contextlib import AsyncExitStack
from typing import Any

import anyio

from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from async_tasks.testing import wait_for
from tests.faults.postgres_process import PostgresProcess
from tests.servers import redis_server

SESSION = "bench"


def _settings(**overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "secret_key": "bench-secret-0123456789abcdef",
        "task_create_rate": 0.0,
        "max_completed_tasks": 100_000,
        "log_level": "warning",
        **overrides,
    }
    return Settings(**fields)


async def _lateness(api: TaskSystem, runner: TaskSystem, count: int, spread_ms: int) -> list[int]:
    """Create `count` tasks due within `spread_ms` (at least 200 ms ahead); their lateness in ms."""
    made = []
    for _ in range(count):
        due = api.clock.now_ms() + 200 + random.randrange(spread_ms)
        task = await api.create_task(SESSION, executor="sample", params={"delayMs": 0}, start_at=due)
        made.append((task.id, due))
    late = []
    for task_id, due in made:
        done = await wait_for(runner, SESSION, task_id, "completed", limit=spread_ms / 1000 + 30)
        assert done.started_at is not None
        late.append(done.started_at - due)
    return late


async def measure(count: int, spread_ms: int) -> dict[str, list[int]]:
    results: dict[str, list[int]] = {}
    async with TaskSystem(settings=_settings()) as system:
        results["memory"] = await _lateness(system, system, count, spread_ms)
    with redis_server() as url:
        async with AsyncExitStack() as stack:
            api = await stack.enter_async_context(TaskSystem(settings=_settings(task_backend=url)))
            worker = await stack.enter_async_context(
                TaskSystem(settings=_settings(task_backend=url, embedded_worker=True))
            )
            results["redis"] = await _lateness(api, worker, count, spread_ms)
    with PostgresProcess() as postgres:
        async with AsyncExitStack() as stack:
            api = await stack.enter_async_context(TaskSystem(settings=_settings(task_backend=postgres.url)))
            worker = await stack.enter_async_context(
                TaskSystem(settings=_settings(task_backend=postgres.url, embedded_worker=True))
            )
            results["postgres"] = await _lateness(api, worker, count, spread_ms)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="tasks per backend (default 200)")
    parser.add_argument("--spread", type=int, default=3000, help="startAt spread over this many ms (default 3000)")
    args = parser.parse_args()
    results = anyio.run(measure, args.count, args.spread)
    print("lateness of a delayed start, startedAt - startAt (ms)")
    for backend, late in results.items():
        late.sort()
        p95 = late[min(len(late) - 1, round(0.95 * (len(late) - 1)))]
        print(
            f"{backend:>7}: n={len(late)} min={late[0]} median={statistics.median(late):g} "
            f"p95={p95} max={late[-1]} early={sum(1 for x in late if x < 0)}"
        )


if __name__ == "__main__":
    main()

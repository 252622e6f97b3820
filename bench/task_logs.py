"""``python -m bench.task_logs``: what a task's log costs, in memory and on Redis.

For each kind of log (none; `TASK_LOG_LINES` short lines; the same with partial results;
lines of `TASK_LOG_LINE_BYTES` until `TASK_LOG_BYTES` drops the oldest), `TASKS` running
tasks get their log written in batches as a worker's flushes would, at the default
bounds. In memory: the bytes Python allocated for them (tracemalloc), per task, beyond a
task without a log. On Redis (needs ``redis-server``; started on a free port, no
persistence): ``used_memory`` per task, beyond a task without a log, and the bytes of
its log list (``MEMORY USAGE``).
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

import anyio

from async_tasks.store.base import CreateLimits, StorePolicy
from async_tasks.store.memory import MemoryTaskStore
from async_tasks.task import Task, TaskStatus
from async_tasks.task_log import DEFAULT_LINE_BYTES, DEFAULT_LINES, LogLimits, LogLine

TASKS = 1000
BATCH = 10  # lines per flush (a worker writes what came in a tenth of a second)
LIMITS = CreateLimits(max_active_per_session=1_000_000)


AT = 1_795_360_600_000
OUTPUT = {"type": "string", "length": 5, "sha256": "8ed3f6ad685b959e"}


def short_lines(count: int = DEFAULT_LINES) -> list[LogLine]:
    return [LogLine(at=AT + i, message=f"Chunk {i}: 8,192 bytes ({i * 8192:,} read)") for i in range(count)]


def lines_with_data(count: int = DEFAULT_LINES) -> list[LogLine]:
    return [
        LogLine(at=AT + i, message=f'Item {i}: "alpha" — ok', data={"index": i, "status": "ok", "output": dict(OUTPUT)})
        for i in range(count)
    ]


def full_lines(count: int = 40) -> list[LogLine]:
    body = "x" * (DEFAULT_LINE_BYTES - 40)
    return [LogLine(at=AT + i, message=f"{i:04d} {body}") for i in range(count)]


KINDS: dict[str, Callable[[], list[LogLine]]] = {
    "no log": list,
    f"{DEFAULT_LINES} short lines (~50 bytes)": short_lines,
    f"{DEFAULT_LINES} lines with data (~150 bytes)": lines_with_data,
    "1 KiB lines, up to TASK_LOG_BYTES": full_lines,
}


def new_task() -> Task:
    return Task(id=str(uuid.uuid4()), session_key="bench", executor="x", name="t", params=None)


async def running(store: Any, count: int) -> list[Task]:
    tasks = []
    for _ in range(count):
        task, _ = await store.create(new_task(), limits=LIMITS)
        tasks.append(await store.transition("bench", task.id, TaskStatus.RUNNING))
    return tasks


async def write(store: Any, tasks: list[Task], kind: Callable[[], list[LogLine]]) -> None:
    """Each task its own lines (as executors write them: no string shared between tasks)."""
    for task in tasks:
        lines = kind()
        for start in range(0, len(lines), BATCH):
            await store.add_logs("bench", task.id, 1, lines[start : start + BATCH])


async def memory_cost(kind: Callable[[], list[LogLine]]) -> float:
    """Bytes allocated per task (tasks with this log, minus what they cost without one)."""
    store = MemoryTaskStore(policy=StorePolicy(logs=LogLimits()))
    tasks = await running(store, TASKS)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    await write(store, tasks, kind)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / TASKS


async def redis_cost(url: str, kind: Callable[[], list[LogLine]]) -> tuple[float, float, int]:
    """(used_memory per task, MEMORY USAGE of a log list, lines kept) on Redis."""
    from redis.asyncio import Redis

    from async_tasks.backends.redis import RedisTaskStore

    client = Redis.from_url(url)
    await client.flushall()
    store = RedisTaskStore(client, prefix="bench:", policy=StorePolicy(logs=LogLimits()))
    tasks = await running(store, TASKS)
    before = int((await client.info("memory"))["used_memory"])
    await write(store, tasks, kind)
    after = int((await client.info("memory"))["used_memory"])
    usage = await client.memory_usage(f"bench:l:{tasks[0].id}") or 0
    kept = len((await store.get("bench", tasks[0].id)).logs)
    await store.aclose()
    return (after - before) / TASKS, usage, kept


async def main() -> None:
    from tests.servers import redis_server

    print(f"{TASKS} tasks; bounds: {DEFAULT_LINES} lines, {DEFAULT_LINE_BYTES} bytes a line, 16 KiB a task")
    print("| log | memory store, per task | Redis used_memory, per task | Redis log list (MEMORY USAGE) | lines kept |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with redis_server() as url:
        for name, kind in KINDS.items():
            memory = await memory_cost(kind)
            used, usage, kept = await redis_cost(url, kind)
            print(f"| {name} | {memory / 1024:.1f} KiB | {used / 1024:.1f} KiB | {usage / 1024:.1f} KiB | {kept} |")


if __name__ == "__main__":
    anyio.run(main)

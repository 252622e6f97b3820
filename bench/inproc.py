"""In-process measurements, each run in a fresh interpreter by `python -m bench`.

    python -m bench.inproc latency [--count N]
    python -m bench.inproc costs [--count N] [--repeats N]
    python -m bench.inproc finished-memory [--count N] [--tracemalloc]
    python -m bench.inproc running-memory --kind runner|anyio [--count N]
    python -m bench.inproc cleanup [--sessions N] [--per-session N] [--keep N]

Each prints one line ``BENCH_JSON {...}``. Event loops are uvloop, like the server
under uvicorn. Apps are built with the task server's factory (`bench.TASK_APP_FACTORY`)
and the same tuned settings as the HTTP measurements, and run inside ``app.lifespan()``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel

#: The settings every benchmark server and in-process app runs with.
TUNED_ENV = {
    # The per-session rate limits stay on (their checks are part of every request's cost)
    # with limits no run reaches: one session's wrk run would otherwise measure 429s.
    "TASK_CREATE_RATE": "1000000000",
    "TASK_CREATE_BURST": "1000000000",
    "TASK_READ_RATE": "1000000000",
    "TASK_READ_BURST": "1000000000",
    "MAX_ACTIVE_TASKS_PER_SESSION": "10000000",
    "MAX_CONCURRENT_TASKS": "10000000",
    "MAX_CONCURRENT_TASKS_PER_SESSION": "10000000",
    "MAX_COMPLETED_TASKS": "100000000",
    # The server-wide bounds would refuse the scale runs' hundreds of thousands of tasks.
    "MAX_TASKS": "100000000",
    "MAX_SESSIONS": "10000000",
    "MAX_STREAMS": "1000000",
    "MAX_STREAMS_PER_SESSION": "1000000",
    # Every request comes from one address: its budgets would too.
    "MAX_TASKS_PER_CLIENT": "100000000",
    "MAX_SESSIONS_PER_CLIENT": "10000000",
    "MAX_STREAMS_PER_CLIENT": "1000000",
    "NEW_SESSIONS_PER_CLIENT_PER_MINUTE": "0",
    # LOG_LEVEL stays at its default (info): two lines per task, as users run it.
    "SECRET_KEY": "bench-secret-key-0123456789abcdef",
}


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def request_id() -> str:
    """A fresh request id, as the server's middleware gives every request."""
    from async_tasks.web.middleware import new_request_id

    return new_request_id()


def _run(main: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})


def _app(extra_executors: tuple[Any, ...] = ()) -> Any:
    from async_tasks.settings import Settings
    from bench import task_app_factory

    return task_app_factory()(Settings.from_env(TUNED_ENV), executors=extra_executors, environ=TUNED_ENV)


def _plugin(app: Any) -> Any:
    from async_tasks.web.plugin import AsyncTasksPlugin

    return app.plugins.get(AsyncTasksPlugin)


class _Completions:
    """Counts tasks reaching a final status, from the store's transition hook (an event-hub
    listener would make the store build an event object for every progress report)."""

    def __init__(self, plugin: Any) -> None:
        from async_tasks.task import TERMINAL

        self._terminal = TERMINAL
        self.finished = 0
        self.target = 0
        self.event: anyio.Event | None = None
        plugin.system.store.events.on_transition.append(self._on_transition)

    def _on_transition(self, task: Any, previous: Any) -> None:
        if previous is not None and task.status in self._terminal:
            self.finished += 1
            if self.event is not None and self.finished >= self.target:
                self.event.set()

    async def wait_for(self, target: int, limit: float = 120) -> None:
        self.target = target
        if self.finished >= target:
            return
        self.event = anyio.Event()
        with anyio.fail_after(limit):
            await self.event.wait()
        self.event = None


# -- created → completed latency ------------------------------------------------


def latency(count: int, warmup: int) -> dict[str, Any]:
    """One zero-delay `sample` task at a time; perf_counter at the `created` and
    `completed` transitions (the store calls its transition hooks synchronously)."""
    from async_tasks.task import TaskStatus

    app = _app()
    plugin = _plugin(app)
    system = plugin.system
    created: dict[str, int] = {}
    samples: list[int] = []
    history_ms: list[int] = []
    state: dict[str, Any] = {"done": None}

    def on_transition(task: Any, previous: Any) -> None:
        if previous is None:
            created[task.id] = time.perf_counter_ns()
        elif task.status is TaskStatus.COMPLETED:
            samples.append(time.perf_counter_ns() - created.pop(task.id))
            state["done"].set()

    plugin.system.store.events.on_transition.append(on_transition)
    session = "s_bench_latency"

    async def main() -> dict[str, Any]:
        async with app.lifespan():
            for index in range(warmup + count):
                state["done"] = anyio.Event()
                task = await system.create_task(
                    session, request_id=request_id(), executor="sample", params={"delayMs": 0}
                )
                await state["done"].wait()
                if index >= warmup:
                    history_ms.append(task.history[-1].at - task.history[0].at)
                await anyio.sleep(0.0005)  # unloaded: let the loop go idle between tasks
        return {}

    _run(main)
    measured = sorted(samples[warmup:])
    return {
        "count": len(measured),
        "median_ms": statistics.median(measured) / 1e6,
        "p90_ms": measured[int(len(measured) * 0.9)] / 1e6,
        "p99_ms": measured[int(len(measured) * 0.99)] / 1e6,
        "min_ms": measured[0] / 1e6,
        "history_median_ms": statistics.median(history_ms),
    }


# -- per-task CPU cost -------------------------------------------------------------------


def costs(count: int, repeats: int) -> dict[str, Any]:
    """CPU time (process time, so other processes on the core do not count) per task,
    in batches of `count` created back to back then run to completion:
    create only (``start=False``), create + run a no-op (``bench-sleeper`` with 0 s),
    create + run a zero-delay ``sample`` (21 progress reports). Best of `repeats`."""
    from bench.sleeper_app import SleeperExecutor

    app = _app((SleeperExecutor,))
    plugin = _plugin(app)
    system = plugin.system
    completions = _Completions(plugin)
    session = "s_bench_costs"
    kinds: dict[str, dict[str, Any]] = {
        "create_only": {"executor": "sample", "params": {"delayMs": 0}, "start": False},
        "create_run_noop": {"executor": SleeperExecutor.name, "params": {"seconds": 0}},
        "create_run_sample": {"executor": "sample", "params": {"delayMs": 0}},
    }
    best: dict[str, dict[str, float]] = {}

    async def batch(options: dict[str, Any]) -> tuple[float, float]:
        target = completions.finished + count
        began = time.process_time()
        for _ in range(count):
            await system.create_task(session, request_id=request_id(), **options)
        created = time.process_time()
        if options.get("start", True):
            await completions.wait_for(target)
        return (created - began) / count * 1e6, (time.process_time() - created) / count * 1e6

    async def main() -> dict[str, Any]:
        async with app.lifespan():
            for options in kinds.values():  # warm-up
                await batch(options)
            for _ in range(repeats):
                for name, options in kinds.items():
                    create_us, run_us = await batch(options)
                    total = create_us + run_us
                    if name not in best or total < best[name]["total_us"]:
                        best[name] = {"create_us": create_us, "run_us": run_us, "total_us": total}
                # Keep the store small between repeats.
                from async_tasks.store.base import TaskFilter

                for task in (await system.store.query(session, TaskFilter())).tasks:
                    if task.is_terminal or task.status.value == "pending":
                        await system.delete_task(session, task.id)
        return {"count": count, "repeats": repeats, **best}

    return _run(main)


# -- memory of retained finished tasks ---------------------------------------------


def finished_memory(count: int, batch: int, use_tracemalloc: bool) -> dict[str, Any]:
    """Bytes per completed `sample` task kept by the store (delayMs 0, one session,
    request ids as the server sets them). Created in batches, each run to completion
    before the next, so the transient cost of running tasks is not counted."""
    app = _app()
    plugin = _plugin(app)
    system = plugin.system
    completions = _Completions(plugin)
    session = "s_bench_memory"

    async def create(n: int) -> None:
        target = completions.finished + n
        for _ in range(n):
            await system.create_task(session, request_id=request_id(), executor="sample", params={"delayMs": 0})
        await completions.wait_for(target)

    async def main() -> dict[str, Any]:
        async with app.lifespan():
            await create(batch)  # warm every code path and free list first
            await anyio.sleep(0.05)
            gc.collect()
            if use_tracemalloc:
                tracemalloc.start()
                base = tracemalloc.get_traced_memory()[0]
            before = rss_bytes()
            began = time.perf_counter()
            made = 0
            while made < count:
                n = min(batch, count - made)
                await create(n)
                made += n
            elapsed = time.perf_counter() - began
            await anyio.sleep(0.05)
            gc.collect()
            after = rss_bytes()
            traced = tracemalloc.get_traced_memory()[0] - base if use_tracemalloc else None
            held = len(plugin.system.store)
            return {
                "count": count,
                "held": held,
                "rss_delta": after - before,
                "bytes_per_task_rss": (after - before) / count,
                "bytes_per_task_tracemalloc": traced / count if traced is not None else None,
                "create_and_run_us_per_task": elapsed / count * 1e6,
            }

    return _run(main)


# -- memory of running (sleeping) tasks -----------------------------------------------


def running_memory(kind: str, count: int, chunk: int = 500) -> dict[str, Any]:
    """RSS per sleeping task: `kind` "anyio" = a bare anyio task-group child doing
    ``await anyio.sleep(1800)``; "runner" = a `bench-sleeper` task started through
    `TaskManager.create_task` in a running app. Same chunking (yield every 500), same
    loop (uvloop), same measurement (RSS after gc.collect(), before and after)."""
    if kind == "anyio":

        async def child(seconds: float) -> None:
            await anyio.sleep(seconds)

        async def main() -> dict[str, Any]:
            async with anyio.create_task_group() as tg:
                for _ in range(chunk):  # warm-up
                    tg.start_soon(child, 0)
                await anyio.sleep(0.2)
                gc.collect()
                before = rss_bytes()
                began = time.perf_counter()
                for index in range(count):
                    tg.start_soon(child, 1800)
                    if index % chunk == chunk - 1:
                        await anyio.lowlevel.checkpoint()
                spawned = time.perf_counter() - began
                await anyio.sleep(1)
                gc.collect()
                after = rss_bytes()
                tg.cancel_scope.cancel()
            return {
                "kind": kind,
                "count": count,
                "rss_delta": after - before,
                "bytes_per_task": (after - before) / count,
                "spawn_us_per_task": spawned / count * 1e6,
            }

        return _run(main)

    from bench.sleeper_app import SleeperExecutor

    app = _app((SleeperExecutor,))
    plugin = _plugin(app)
    system = plugin.system
    session = "s_bench_running"

    async def main_runner() -> dict[str, Any]:
        async with app.lifespan():
            for _ in range(chunk):  # warm-up: sleepers that end at once
                await system.create_task(
                    session, request_id=request_id(), executor=SleeperExecutor.name, params={"seconds": 0}
                )
            await anyio.sleep(0.2)
            gc.collect()
            before = rss_bytes()
            began = time.perf_counter()
            for index in range(count):
                await system.create_task(
                    session, request_id=request_id(), executor=SleeperExecutor.name, params={"seconds": 1800}
                )
                if index % chunk == chunk - 1:
                    await anyio.lowlevel.checkpoint()
            spawned = time.perf_counter() - began
            await anyio.sleep(1)
            gc.collect()
            after = rss_bytes()
            running = len(plugin.system.execution.running)
            result = {
                "kind": kind,
                "count": count,
                "running": running,
                "rss_delta": after - before,
                "bytes_per_task": (after - before) / count,
                "spawn_us_per_task": spawned / count * 1e6,
            }
            began = time.perf_counter()
        result["shutdown_s"] = time.perf_counter() - began
        return result

    return _run(main_runner)


# -- cleanup -----------------------------------------------------------------------------


def cleanup(sessions: int, per_session: int, keep: int) -> dict[str, Any]:
    """A retention sweep over `sessions` x `per_session` completed tasks keeping `keep`
    per session, with the real plugin's store, cleaner and hooks (runner bookkeeping,
    metrics), then a second sweep that finds nothing to remove."""
    from async_tasks.settings import Settings
    from async_tasks.store.base import CreateLimits, StorePolicy
    from async_tasks.task import Task, TaskStatus
    from async_tasks.web.plugin import AsyncTasksPlugin
    from executors.sample import SampleParams

    env = {**TUNED_ENV, "MAX_COMPLETED_TASKS": str(keep)}
    plugin = AsyncTasksPlugin(settings=Settings.from_env(env), environ=env)
    store, cleaner = plugin.system.store, plugin.system.cleaner
    params = SampleParams(delay_ms=0)
    limits = CreateLimits(max_active_per_session=1_000_000)

    async def main() -> dict[str, Any]:
        began = time.perf_counter()
        # Building a million records is not what is measured: no GC and no event
        # listeners (metrics) while building; both are back for the sweeps.
        gc.disable()
        listeners, hooks = list(store.events.listeners), list(store.events.on_transition)
        store.events.listeners.clear()
        store.events.on_transition.clear()
        # The store applies retention as each task finishes: built without it, so the
        # sweep finds the whole backlog (as after MAX_COMPLETED_TASKS was lowered).
        policy = store.policy
        store.policy = StorePolicy(max_history=policy.max_history)
        for s in range(sessions):
            key = f"s_bench{s:06d}"
            for _ in range(per_session):
                task, _ = await store.create(
                    Task(
                        id=str(uuid.uuid4()),
                        session_key=key,
                        executor="sample",
                        name="Sample Long-Running Task",
                        params=params,
                        request_id=request_id(),
                    ),
                    limits=limits,
                )
                await store.transition(key, task.id, TaskStatus.RUNNING, reason="started")
                await store.transition(
                    key,
                    task.id,
                    TaskStatus.COMPLETED,
                    reason="completed",
                    result={"message": "Sample task completed", "delayMs": 0, "steps": 5},
                )
        built = time.perf_counter() - began
        store.policy = policy
        store.events.listeners[:] = listeners
        store.events.on_transition[:] = hooks
        gc.enable()
        gc.collect()
        held = len(store)  # type: ignore[arg-type]
        longest_block = 0.0
        sweeping = True

        async def probe() -> None:
            # The longest stretch the sweep kept the event loop from other work.
            nonlocal longest_block
            last = time.perf_counter()
            while sweeping:
                await anyio.lowlevel.checkpoint()
                now = time.perf_counter()
                longest_block = max(longest_block, now - last)
                last = now

        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(probe)
            first = await cleaner.run_once(trigger="interval")
            sweeping = False
        sweep = time.perf_counter() - began
        gc.collect()
        began = time.perf_counter()
        second = await cleaner.run_once(trigger="interval")
        idle = time.perf_counter() - began
        return {
            "sessions": sessions,
            "per_session": per_session,
            "keep": keep,
            "held_before": held,
            "build_s": built,
            "removed": first.removed,
            "sweep_s": sweep,
            "longest_loop_block_ms": longest_block * 1000,
            "us_per_removed_task": sweep / max(first.removed, 1) * 1e6,
            "idle_sweep_s": idle,
            "removed_second": second.removed,
            "us_per_untouched_session": idle / sessions * 1e6,
            "held_after": len(store),  # type: ignore[arg-type]
        }

    return _run(main)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inproc")
    sub = parser.add_subparsers(dest="what", required=True)
    cmd = sub.add_parser("latency")
    cmd.add_argument("--count", type=int, default=2000)
    cmd.add_argument("--warmup", type=int, default=200)
    cmd = sub.add_parser("costs")
    cmd.add_argument("--count", type=int, default=1000)
    cmd.add_argument("--repeats", type=int, default=5)
    cmd = sub.add_parser("finished-memory")
    cmd.add_argument("--count", type=int, default=100_000)
    cmd.add_argument("--batch", type=int, default=1000)
    cmd.add_argument("--tracemalloc", action="store_true")
    cmd = sub.add_parser("running-memory")
    cmd.add_argument("--kind", choices=["runner", "anyio"], required=True)
    cmd.add_argument("--count", type=int, default=100_000)
    cmd = sub.add_parser("cleanup")
    cmd.add_argument("--sessions", type=int, default=10_000)
    cmd.add_argument("--per-session", type=int, default=100)
    cmd.add_argument("--keep", type=int, default=50)
    args = parser.parse_args(argv)
    if args.what == "latency":
        result = latency(args.count, args.warmup)
    elif args.what == "costs":
        result = costs(args.count, args.repeats)
    elif args.what == "finished-memory":
        result = finished_memory(args.count, args.batch, args.tracemalloc)
    elif args.what == "running-memory":
        result = running_memory(args.kind, args.count)
    else:
        result = cleanup(args.sessions, args.per_session, args.keep)
    result["pid"] = os.getpid()
    sys.stdout.write("BENCH_JSON " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

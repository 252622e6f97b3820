"""Two quick looks at the Redis backend beside the rounds of `bench.redis_bench`
(``python -m bench.redis_probe status-cpu [COUNT] [REPEATS]`` and
``python -m bench.redis_probe script-counts [TASKS]``):

- `status_cpu`: what one ``GET /tasks/{id}/status`` poll costs on Redis, in process;
- `script_counts`: the Redis commands a completed task costs, by script and by call.

Both move little when other processes share the machine (CPU time of one process,
Redis's own counters and MONITOR), so they suit an A/B of one change.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.redis_bench import (
    API,
    SIDE_CORE,
    WORKER_CORE,
    api_argv,
    backend_env,
    per_unit,
    process,
    redis_counts,
    wait_http,
)
from tests.servers import free_port, redis_server

# -- one /status poll, in process --------------------------------------------------------


def status_cpu(count: int, repeats: int) -> dict[str, Any]:
    """``python -m bench.redis_bench status-cpu [COUNT] [REPEATS]``: what one ``GET
    /tasks/{id}/status`` costs on the Redis backend, through the app's ASGI callable in this
    process (no sockets, no wrk: other processes on a shared machine barely move it): API
    CPU µs per poll (the best of `repeats` batches of `count`), and Redis commands, script
    calls and Redis CPU µs per poll (``INFO``), for a task waiting in line (no worker runs,
    as in the wrk run) and for an ended one."""
    import anyio

    from async_tasks.settings import Settings
    from async_tasks.task import TaskStatus
    from async_tasks.web.plugin import AsyncTasksPlugin
    from bench import task_app_factory
    from bench.cpu import lifespan_startup, request, scope

    with redis_server() as url:
        env = backend_env(url, "bench-status:")
        app = task_app_factory()(Settings.from_env(env), environ=env)
        plugin = app.plugins.get(AsyncTasksPlugin)

        async def main() -> dict[str, Any]:
            state, stop = await lifespan_startup(app)
            try:
                _, token = plugin.sessions.new_session()
                key = plugin.sessions.key_from_token(token)
                assert key is not None
                system = plugin.system
                waiting = await system.create_task(key, executor="sample", params={"delayMs": 0})
                ended = await system.create_task(key, executor="sample", params={"delayMs": 0})
                await system.cancel_task(key, ended.id)
                found: dict[str, Any] = {}
                for name, task in (("pending", waiting), ("ended", ended)):
                    call = request(app, scope("GET", f"{API}/tasks/{task.id}/status", token=token, state=state))
                    if await call() != 200:
                        raise RuntimeError(f"/status of the {name} task did not answer 200")
                    for _ in range(200):
                        await call()
                    best = float("inf")
                    counts = redis_counts(url)
                    for _ in range(repeats):
                        began = time.process_time()
                        for _ in range(count):
                            await call()
                        best = min(best, (time.process_time() - began) / count)
                    redis = per_unit(counts, redis_counts(url), count * repeats)
                    found[name] = {"api_us": round(best * 1e6, 1), "commands": round(redis["commands"], 2),
                                   "scripts": round(redis["scripts"], 2),
                                   "redis_us": round(redis["redis_cpu"] * 1e6, 1)}  # fmt: skip
                assert (await system.get_task(key, waiting.id)).status is TaskStatus.PENDING
                return found
            finally:
                await stop()

        return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})


# -- Redis commands per script ---------------------------------------------------------------


def script_counts(tasks: int, log_dir: Path) -> dict[str, dict[str, float]]:
    """``python -m bench.redis_bench script-counts [TASKS]``: the Redis commands a completed
    zero-delay task costs, by script and by command, from ``MONITOR`` (which lists the
    commands a script runs after the script's own call): an API process and a worker as in
    the end-to-end run, `tasks` created over HTTP one at a time, then waited for. Per task:
    {script or "(direct)": {command: calls}}."""
    import hashlib

    from async_tasks.backends.redis import scripts as lua

    names = {hashlib.sha1(lua.source(name).encode()).hexdigest(): name for name in lua.NAMES}
    with redis_server() as url:
        port = url.rsplit(":", 1)[1].split("/")[0]
        env = backend_env(url, "bench-counts:")
        api_port = free_port()
        base = f"http://127.0.0.1:{api_port}"
        worker_argv = [sys.executable, "-m", "async_tasks.cli", "worker", "--concurrency", "20"]
        with contextlib.ExitStack() as stack:
            api = stack.enter_context(process("api-counts", api_argv(api_port), SIDE_CORE, env, log_dir))
            stack.enter_context(process("worker-counts", worker_argv, WORKER_CORE, env, log_dir))
            wait_http(f"{base}/health", api)
            time.sleep(1.5)
            with httpx.Client(base_url=base) as client:
                token = client.post(f"{API}/session").json()["token"]
                out = log_dir / "monitor.txt"
                with open(out, "wb") as sink:
                    monitor = subprocess.Popen(["redis-cli", "-p", port, "monitor"], stdout=sink)
                    try:
                        time.sleep(0.3)
                        for _ in range(tasks):
                            client.post(f"{API}/demo/tasks/sample", json={"delayMs": 0},
                                        headers={"X-Session-Token": token}).raise_for_status()  # fmt: skip
                        deadline = time.monotonic() + 60
                        while time.monotonic() < deadline:
                            stats = client.get(f"{API}/tasks/stats", headers={"X-Session-Token": token}).json()
                            if stats["stats"]["completed"] >= tasks:
                                break
                            time.sleep(0.05)
                        time.sleep(0.3)
                    finally:
                        monitor.terminate()
                        monitor.wait()
    found: dict[str, dict[str, float]] = {}
    script = "(direct)"
    # Per script call: (script, whether it dispatched a job) -> [calls, commands]: which
    # script hands a task to a worker depends on timing (a create when a slot is free, else
    # the finish that frees one), so a call's cost is told apart by that.
    calls: dict[tuple[str, bool], list[int]] = {}
    current: list[Any] | None = None

    def close(call: list[Any] | None) -> None:
        if call is not None:
            row = calls.setdefault((call[0], call[2]), [0, 0])
            row[0] += 1
            row[1] += call[1]

    for raw in out.read_bytes().decode(errors="replace").splitlines():
        _, _, rest = raw.partition(" [")
        who, _, command = rest.partition("] ")
        words = command.split(" ", 2)
        if not words or not words[0]:
            continue
        name = words[0].strip('"').lower()
        if who.endswith(" lua"):
            where = script
            if current is not None:
                current[1] += 1
                current[2] = current[2] or (name == "set" and '"saq:job:' in command)
        elif name in ("evalsha", "eval"):
            script = names.get(words[1].strip('"'), "(other script)") if len(words) > 1 else "(other script)"
            where = script
            close(current)
            current = [script, 1, False]
        else:
            script = where = "(direct)"
            close(current)
            current = None
        if name in ("monitor", "info"):
            continue
        found.setdefault(where, {})
        found[where][name] = found[where].get(name, 0) + 1 / tasks
    close(current)
    for (name, dispatched), (n, commands) in sorted(calls.items()):
        found.setdefault(" per call", {})[f"{name}{' (dispatching)' if dispatched else ''} x{n}"] = commands / n
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["status-cpu"]:
        figures = status_cpu(int(argv[1]) if len(argv) > 1 else 2000, int(argv[2]) if len(argv) > 2 else 5)
        for name, row in figures.items():
            print(f"/status of a {name} task: {row['api_us']} µs API CPU, {row['commands']} Redis commands "
                  f"({row['scripts']} scripts), {row['redis_us']} µs Redis CPU per poll")  # fmt: skip
        return 0
    if argv[:1] == ["script-counts"]:
        log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"async-tasks-bench-redis-{os.getpid()}"
        log_dir.mkdir(parents=True, exist_ok=True)
        counts = script_counts(int(argv[1]) if len(argv) > 1 else 200, log_dir)
        per_call = counts.pop(" per call", {})
        total = sum(sum(row.values()) for row in counts.values())
        print(f"Redis commands per completed task: {total:.1f}")
        for where, row in sorted(counts.items(), key=lambda item: -sum(item[1].values())):
            detail = ", ".join(f"{name} {n:.2f}" for name, n in sorted(row.items(), key=lambda item: -item[1]))
            print(f"  {where}: {sum(row.values()):.2f} ({detail})")
        print("Redis commands per script call (the call included):")
        for name, n in per_call.items():
            print(f"  {name}: {n:.1f}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())

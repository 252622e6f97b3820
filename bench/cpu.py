"""CPU cost per request, in process, through each app's ASGI callable (no sockets, no wrk).

    python -m bench.cpu [--system app|hello|minimal|fastapi|all] [--count N] [--repeats N]
                        [--concurrency N] [--only status,list,create,...] [--profile FILE]

The quick A/B tool behind the HTTP rounds of ``python -m bench``: the same apps (the
task server from `bench.TASK_APP_FACTORY` with the benchmark settings, the hello anchor,
the peers), the same requests (a uvicorn-like scope with ``Host`` and the session
token, the body of the wrk runs), called directly on a uvloop loop; the figure is
process CPU time (`time.process_time`) per request, the best of `--repeats` batches of
`--count`, so other processes on a shared machine barely move it. A create is counted
until the task it started has completed (the task server's tasks are awaited through
the store's transition hook, the peers' by polling their records).

`--concurrency N` keeps N requests in flight (like wrk's connections); 1 (the
default) measures one at a time. `--profile FILE` writes a cProfile of the measured
batches of the task server.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from bench.inproc import TUNED_ENV

Send = Callable[[dict[str, Any]], Awaitable[None]]
Call = Callable[[], Awaitable[int]]

POST_BODY = b'{"delayMs": 0}'
API = "/api/v1"
CREATE_PATH = f"{API}/demo/tasks/sample"
LIST_PATH = f"{API}/tasks"
LIST_QUERY = b"limit=50"


def scope(
    method: str, path: str, query: bytes = b"", token: str | None = None, body: bytes = b"", state: Any = None
) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk")]
    if body:
        headers += [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    if token:
        headers.append((b"x-session-token", token.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
        "method": method,
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": headers,
        "state": dict(state or {}),
    }


def request(app: Any, template: dict[str, Any], body: bytes = b"") -> Call:
    """A coroutine function that sends one request and returns its status."""

    async def call() -> int:
        status = 0
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await anyio.sleep_forever()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        s = dict(template)
        s["headers"] = list(template["headers"])
        s["state"] = dict(template["state"])
        await app(s, receive, send)
        return status

    return call


async def lifespan_startup(app: Any) -> tuple[dict[str, Any], Callable[[], Awaitable[None]]]:
    """Run the app's ASGI lifespan in the background; returns its state and a stopper."""
    state: dict[str, Any] = {}
    send_stream, receive_stream = anyio.create_memory_object_stream[dict[str, Any]](4)
    started = anyio.Event()
    stopped = anyio.Event()

    async def receive() -> dict[str, Any]:
        return await receive_stream.receive()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()
        elif message["type"] == "lifespan.startup.failed":
            raise RuntimeError(message.get("message"))
        elif message["type"].startswith("lifespan.shutdown"):
            stopped.set()

    async def run() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": state}, receive, send)

    tg = anyio.create_task_group()
    await tg.__aenter__()
    tg.start_soon(run)
    await send_stream.send({"type": "lifespan.startup"})
    await started.wait()

    async def stop() -> None:
        await send_stream.send({"type": "lifespan.shutdown"})
        await stopped.wait()
        await tg.__aexit__(None, None, None)

    return state, stop


class System:
    """One app under measurement: its requests, and how to wait for its tasks."""

    name: str
    app: Any
    token: str | None = None

    async def setup(self, state: dict[str, Any]) -> dict[str, tuple[Call, bool]]:
        raise NotImplementedError

    async def drain(self) -> None:
        """Wait until every task created so far has completed."""


class Hello(System):
    name = "hello"

    def __init__(self) -> None:
        from bench.hello_app import app

        self.app = app

    async def setup(self, state: dict[str, Any]) -> dict[str, tuple[Call, bool]]:
        return {
            "hello_get": (request(self.app, scope("GET", "/", state=state)), False),
            "hello_post": (request(self.app, scope("POST", "/", body=POST_BODY, state=state), POST_BODY), False),
        }


class TaskServer(System):
    name = "app"

    def __init__(self) -> None:
        from async_tasks.settings import Settings
        from async_tasks.task import TERMINAL
        from bench import task_app_factory

        self.app = task_app_factory()(Settings.from_env(TUNED_ENV), environ=TUNED_ENV)
        from async_tasks.web.plugin import AsyncTasksPlugin

        self.plugin = self.app.plugins.get(AsyncTasksPlugin)
        self.system = self.plugin.system
        self.created = 0
        self.finished = 0
        self.event: anyio.Event | None = None
        terminal = TERMINAL

        def on_transition(task: Any, previous: Any) -> None:
            if previous is not None and task.status in terminal:
                self.finished += 1
                if self.event is not None and self.finished >= self.created:
                    self.event.set()

        self.system.store.events.on_transition.append(on_transition)

    async def setup(self, state: dict[str, Any]) -> dict[str, tuple[Call, bool]]:
        _, token = self.plugin.sessions.new_session()
        key = self.plugin.sessions.key_from_token(token)
        tasks = [await self.system.create_task(key, executor="sample", params={"delayMs": 0}) for _ in range(50)]
        self.created = 50
        await self.drain()
        _, create_token = self.plugin.sessions.new_session()
        post = POST_BODY
        status = scope("GET", f"{API}/tasks/{tasks[0].id}/status", token=token, state=state)
        return {
            "status": (request(self.app, status), False),
            "list": (request(self.app, scope("GET", LIST_PATH, LIST_QUERY, token=token, state=state)), False),
            "create": (
                request(self.app, scope("POST", CREATE_PATH, token=create_token, body=post, state=state), post),
                True,
            ),
        }

    def count_create(self) -> None:
        self.created += 1

    async def drain(self) -> None:
        if self.finished >= self.created:
            return
        self.event = anyio.Event()
        with anyio.fail_after(120):
            await self.event.wait()
        self.event = None


class Peer(System):
    def __init__(self, name: str, module: str) -> None:
        import importlib

        self.name = name
        self.module = importlib.import_module(module)
        self.app = self.module.app
        self.ids: list[str] = []

    def records(self) -> dict[str, Any]:
        if hasattr(self.module, "tracker"):
            return self.module.tracker.records  # type: ignore[no-any-return]
        return self.module.tasks  # type: ignore[no-any-return]

    async def setup(self, state: dict[str, Any]) -> dict[str, tuple[Call, bool]]:
        create = request(self.app, scope("POST", CREATE_PATH, body=POST_BODY, state=state), POST_BODY)
        for _ in range(50):
            await create()
        await self.drain()
        some_id = next(reversed(self.records()))
        return {
            "status": (request(self.app, scope("GET", f"{API}/tasks/{some_id}/status", state=state)), False),
            "list": (request(self.app, scope("GET", LIST_PATH, LIST_QUERY, state=state)), False),
            "create": (create, True),
        }

    async def drain(self) -> None:
        with anyio.fail_after(120):
            while any(getattr(r, "status", None) not in ("completed", "failed") for r in self.records().values()):  # noqa: ASYNC110 (the peers keep no event)
                await anyio.sleep(0.001)


class GCLog:
    """Garbage-collector passes (gc.callbacks): how many per generation, how long in all,
    the longest, and how many objects each full pass examined."""

    def __init__(self) -> None:
        self.passes = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._began = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.thread_time()
            return
        generation = info["generation"]
        took = time.thread_time() - self._began
        self.passes[generation] += 1
        self.seconds[generation] += took
        self.longest[generation] = max(self.longest[generation], took)

    def summary(self) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "ms": [round(s * 1000, 1) for s in self.seconds],
            "longest_ms": [round(s * 1000, 2) for s in self.longest],
            "tracked_objects": len(gc.get_objects()),
        }


async def batch(system: System, call: Call, creates: bool, count: int, concurrency: int) -> float:
    """CPU µs per request over `count` requests (creates: until their tasks completed).

    After each request the client yields to the event loop once, as a server does
    between requests (reading the next one from a socket): the tasks a create started
    run in between, not all at the end."""
    pause = anyio.lowlevel.checkpoint
    began = time.process_time()
    if concurrency <= 1:
        for _ in range(count):
            if creates and isinstance(system, TaskServer):
                system.count_create()
            await call()
            await pause()
    else:
        remaining = count

        async def client() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                if creates and isinstance(system, TaskServer):
                    system.count_create()
                await call()
                await pause()

        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(client)
    if creates:
        await system.drain()
    return (time.process_time() - began) / count * 1e6


def make(name: str) -> System:
    if name == "app":
        return TaskServer()
    if name == "hello":
        return Hello()
    if name == "minimal":
        return Peer("minimal", "bench.peers.minimal_app")
    if name == "fastapi":
        return Peer("fastapi", "bench.peers.fastapi_app")
    raise SystemExit(f"unknown system {name!r}")


def measure(
    name: str,
    count: int,
    repeats: int,
    concurrency: int,
    only: set[str] | None,
    profile: str | None,
    warmup: int = 500,
    gc_report: bool = False,
) -> dict[str, Any]:
    system = make(name)

    async def main() -> dict[str, Any]:
        state, stop = await lifespan_startup(system.app)
        try:
            calls = await system.setup(state)
            # Check every request answers what the benchmark expects before timing it.
            for kind, (call, creates) in calls.items():
                if creates and isinstance(system, TaskServer):
                    system.count_create()
                status = await call()
                if status >= 300:
                    raise RuntimeError(f"{name} {kind}: HTTP {status}")
            await system.drain()
            gc.collect()
            results: dict[str, Any] = {}
            profiler = cProfile.Profile() if profile else None
            gc_log = GCLog() if gc_report else None
            for kind, (call, creates) in calls.items():
                if only and kind not in only:
                    continue
                await batch(system, call, creates, warmup, concurrency)  # warm-up
                best = float("inf")
                for _ in range(repeats):
                    if profiler is not None:
                        profiler.enable()
                    best = min(best, await batch(system, call, creates, count, concurrency))
                    if profiler is not None:
                        profiler.disable()
                results[kind] = round(best, 1)
            if profiler is not None and profile:
                profiler.dump_stats(profile)
            if gc_log is not None:
                results["gc"] = gc_log.summary()
            return results
        finally:
            await stop()

    return anyio.run(main, backend="asyncio", backend_options={"use_uvloop": True})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu")
    parser.add_argument("--system", default="all")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--only", default="")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--gc", action="store_true", help="report the garbage collector's passes")
    args = parser.parse_args(argv)
    names = ["hello", "minimal", "fastapi", "app"] if args.system == "all" else args.system.split(",")
    only = set(args.only.split(",")) if args.only else None
    result: dict[str, Any] = {"count": args.count, "repeats": args.repeats, "concurrency": args.concurrency}
    for name in names:
        result[name] = measure(
            name, args.count, args.repeats, args.concurrency, only, args.profile, args.warmup, args.gc
        )
        print(name, result[name], file=sys.stderr, flush=True)
    result["pid"] = os.getpid()
    sys.stdout.write("BENCH_JSON " + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

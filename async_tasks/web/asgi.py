"""The task system inside any ASGI app: FastAPI, Starlette, Django, or anything that
mounts an ASGI app under a path.

    tasks = TasksApp(executors=[GreetExecutor])
    app = FastAPI(lifespan=tasks.lifespan)   # or Starlette(lifespan=tasks.lifespan, ...)
    app.mount("/tasks", tasks)               # the API at /tasks/api/v1, the dashboard at /tasks/

A `TasksApp` is `create_app` (the API, push streams, dashboard, health, metrics,
sessions, errors and the security boundary, all as in ``async-tasks serve``) behind
one ASGI callable. A Starlette ``Mount`` (so FastAPI's ``app.mount``) does not run a
mounted app's lifespan, so the engine would never start: the host runs it by taking
`lifespan` as its own (or entering ``tasks.lifespan()`` inside its own lifespan).

Frameworks without a mount or a lifespan (Django's ASGI handler has neither) wrap
their app instead: ``application = tasks.around(get_asgi_application(), path="/tasks")``
sends the requests under `path` to the task system, every other request to the host
app, and runs the task system's lifespan itself.

Paths: the mounted app sees the mount in ``root_path`` (as ASGI says), routes on the
rest, and writes it into the URLs it hands out (the dashboard's API base and assets,
each executor's ``demoPath``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar

from async_tasks.executor import TaskExecutor
from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from async_tasks.web.app import create_app
from async_tasks.web.plugin import AsyncTasksPlugin

# ASGI as any framework types it (Litestar's own types leave out the lifespan scope).
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TasksApp:
    """The task system as an ASGI app to mount in another framework, with its lifespan."""

    def __init__(
        self,
        executors: Iterable[type[TaskExecutor[Any, Any]] | TaskExecutor[Any, Any]] = (),
        *,
        settings: Settings | None = None,
        environ: Mapping[str, str] | None = None,
        load_entry_points: bool = True,
        system: TaskSystem | None = None,
        app: Litestar | None = None,
    ) -> None:
        """Build the app as `create_app` does (the same arguments), or wrap `app` (a
        Litestar app with `AsyncTasksPlugin`, with routes of your own)."""
        self.app: Litestar = app or create_app(
            settings, executors, environ=environ, load_entry_points=load_entry_points, system=system
        )
        #: The engine: create tasks from the host app's own routes with it.
        self.task_system: TaskSystem = self.app.plugins.get(AsyncTasksPlugin).system
        self._running = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)  # type: ignore[arg-type]

    @asynccontextmanager
    async def lifespan(self, host: Any = None) -> AsyncIterator[None]:
        """The task system's lifespan (engine, push streams, probes), as an async context
        manager: pass ``lifespan=tasks.lifespan`` to FastAPI or Starlette (they call it
        with the host app, which is not used), or enter ``tasks.lifespan()`` in yours."""
        async with self.app.lifespan():
            self._running = True
            try:
                yield
            finally:
                self._running = False

    def around(self, host: ASGIApp | Any, *, path: str = "/tasks") -> ASGIApp:
        """An ASGI app serving `host` with the task system under `path` (HTTP and
        WebSocket), and running the task system's lifespan: for frameworks that cannot
        mount an app or have no lifespan (Django). `host` never sees a lifespan event."""
        prefix = "/" + path.strip("/")

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "lifespan":
                await self._serve_lifespan(receive, send)
                return
            route: str = scope["path"]
            if route == prefix or route.startswith(prefix + "/"):
                # As a Starlette Mount does: the prefix goes to root_path, the path stays whole.
                scope = {**scope, "root_path": scope.get("root_path", "") + prefix}
                await self(scope, receive, send)
                return
            await host(scope, receive, send)

        return app

    async def _serve_lifespan(self, receive: Receive, send: Send) -> None:
        """The ASGI lifespan protocol, answered with `lifespan`."""
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            async with self.lifespan():
                await send({"type": "lifespan.startup.complete"})
                while (await receive())["type"] != "lifespan.shutdown":
                    pass
        except Exception as exc:
            failed = "lifespan.shutdown.failed" if self._running else "lifespan.startup.failed"
            await send({"type": failed, "message": f"{type(exc).__name__}: {exc}"})
            return
        await send({"type": "lifespan.shutdown.complete"})

"""`AsyncTasksPlugin`: the whole task system as a Litestar plugin.

    app = Litestar(route_handlers=[my_routes], plugins=[AsyncTasksPlugin(executors=[MyExecutor])])

adds the API under `path` (default ``/api/v1``), resolves a session on every
request, runs the runner and the cleaner in the app's lifespan, and injects the
`TaskManager` into any handler that asks for ``task_manager``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.plugins import InitPluginProtocol

from async_tasks.api.demo import create_any_demo_task, demo_route
from async_tasks.api.errors import EXCEPTION_HANDLERS
from async_tasks.api.executors import list_executors
from async_tasks.api.health import LoopLagProbe, health_handlers
from async_tasks.api.sessions import current_session, new_session
from async_tasks.api.streams import stream_router
from async_tasks.api.tasks import TaskController
from async_tasks.cleanup import Cleaner
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.events import EventHub
from async_tasks.executor import ExecutorRegistry, TaskExecutor
from async_tasks.manager import TaskManager
from async_tasks.metrics import OPS_OPT_KEY, TaskMetrics
from async_tasks.requestid import RequestIdMiddleware, echo_request_id
from async_tasks.runner import Runner
from async_tasks.sessions import SessionMiddleware, SessionResolver
from async_tasks.settings import Settings
from async_tasks.store import TaskStore
from async_tasks.streams import StreamBridge

logger = logging.getLogger("async_tasks")

#: The share of SHUTDOWN_GRACE_MS that tasks get to unwind; the rest is for the server.
SHUTDOWN_RUNNER_SHARE = 0.8


class AsyncTasksPlugin(InitPluginProtocol):
    def __init__(
        self,
        executors: Iterable[type[TaskExecutor[Any]] | TaskExecutor[Any]] = (),
        *,
        path: str = "/api/v1",
        settings: Settings | None = None,
        environ: Mapping[str, str] | None = None,
        load_entry_points: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """Build the task system. Bad settings or executors raise here, at start-up.

        Args:
            executors: executor classes (or instances) to register besides the
                ones installed packages declare under the ``async_tasks.executors``
                entry-point group.
            path: where the API is mounted.
            settings: defaults to `Settings.from_env(environ)`.
            environ: the environment to read settings and executor configs from.
            load_entry_points: set False to register only `executors`.
            clock: the time source (tests pass a `FakeClock`).
        """
        self.settings = settings or Settings.from_env(environ)
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        self.clock = clock
        self.events = EventHub()
        self.executors = ExecutorRegistry.build(executors, load_entry_points=load_entry_points, environ=environ)
        for executor in self.executors:
            executor.clock = clock
        self.store = TaskStore(clock, self.events)
        self.runner = Runner(self.store, self.executors, self.settings, clock)
        self.cleaner = Cleaner(self.store, self.settings, clock)
        self.sessions = SessionResolver(self.settings)
        self.task_manager = TaskManager(
            settings=self.settings,
            store=self.store,
            runner=self.runner,
            executors=self.executors,
            sessions=self.sessions,
            cleaner=self.cleaner,
            path=self.path,
        )
        self.cleaner.on_remove.append(self.runner.forget_id)
        #: Prometheus metrics in this app's own registry (None with METRICS_ENABLED=false).
        self.metrics = (
            TaskMetrics(self.store, self.runner, self.cleaner, events_dropped=self._events_dropped)
            if self.settings.metrics_enabled
            else None
        )
        self.lag_probe = LoopLagProbe()
        #: Called when shutdown begins (signal or lifespan end), before tasks are cancelled:
        #: push streams close here.
        self.on_shutdown: list[Callable[[], None]] = []
        #: Push streams (SSE / WebSocket): task events forwarded to each session's open streams.
        self.streams = StreamBridge(self.store)
        self.on_shutdown.append(self.streams.close)
        #: Tasks the last shutdown abandoned (they ignored cancellation or block in a thread).
        self.abandoned: list[Any] = []
        self._shutdown_done: anyio.Event | None = None
        self._shutdown_requested: anyio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.cleaner.after_sweep.append(self.task_manager.prune_rate_buckets)

    def router(self) -> Router:
        handlers: list[Any] = [TaskController, list_executors, current_session, new_session, create_any_demo_task]
        handlers += [demo_route(type(executor)) for executor in self.executors]
        handlers.append(stream_router(self.streams))
        return Router(
            path=self.path or "/",
            route_handlers=handlers,
            exception_handlers=EXCEPTION_HANDLERS,
            request_max_body_size=self.settings.max_request_body_bytes,
        )

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.append(self.router())
        app_config.route_handlers.extend(health_handlers(self.lag_probe))
        if self.metrics is not None:
            app_config.route_handlers.append(self.metrics.controller())
            app_config.middleware.append(self.metrics.http_config().middleware)
        app_config.dependencies["task_manager"] = Provide(self._provide_task_manager, sync_to_thread=False)
        session_middleware = SessionMiddleware(self.sessions)
        session_middleware.exclude_opt_key = OPS_OPT_KEY  # health probes and scrapes need no session
        app_config.middleware.append(session_middleware)
        app_config.middleware.append(RequestIdMiddleware())  # inside: it reads the session key
        app_config.before_send.append(echo_request_id)  # runs for 404/405 too, unlike middleware
        app_config.lifespan.append(self.lifespan)
        app_config.signature_namespace["TaskManager"] = TaskManager
        return app_config

    def _provide_task_manager(self) -> TaskManager:
        return self.task_manager

    def _events_dropped(self) -> int:
        """Push-stream events dropped for slow clients (the streams bridge counts them)."""
        return int(getattr(getattr(self, "streams", None), "events_dropped_total", 0) or 0)

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        """Runner and cleaner live exactly as long as the app."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.runner.run)
            await tg.start(self.cleaner.run)
            await tg.start(self.lag_probe.run)
            await tg.start(self.streams.run)
            self._shutdown_done = None
            self._shutdown_requested = anyio.Event()
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:  # not asyncio: shutdown starts only when the lifespan ends
                self._loop = None
            tg.start_soon(self._shutdown_when_requested, self._shutdown_requested)
            app.state.task_manager = self.task_manager
            logger.info(
                "Task system initialized successfully (%d executors: %s)",
                len(self.executors),
                ", ".join(self.executors.names()),
            )
            try:
                yield
            finally:
                self._loop = None
                await self.shutdown()
                tg.cancel_scope.cancel()

    def request_shutdown(self) -> None:
        """Begin shutting down now, without waiting for the lifespan to end.

        Safe to call from a signal handler or another thread (`cli.run_server` calls
        it when SIGTERM/SIGINT arrives, while uvicorn still waits for open
        connections): new tasks are refused at once, and `shutdown` runs in the
        event loop.
        """
        self.runner.accepting = False
        loop, requested = self._loop, self._shutdown_requested
        if loop is not None and requested is not None:
            try:
                loop.call_soon_threadsafe(requested.set)
            except RuntimeError:  # the loop has closed
                pass

    async def _shutdown_when_requested(self, requested: anyio.Event) -> None:
        await requested.wait()
        await self.shutdown()

    async def shutdown(self) -> list[Any]:
        """Refuse new tasks, run the `on_shutdown` hooks (push streams close), cancel
        every queued and running task with reason ``shutdown`` and wait for them up to
        most of SHUTDOWN_GRACE_MS (the rest is left for the server's own teardown).
        Returns the abandoned tasks. A second call waits for the first one."""
        if self._shutdown_done is not None:
            await self._shutdown_done.wait()
            return self.abandoned
        self._shutdown_done = done = anyio.Event()
        try:
            self.runner.accepting = False
            logger.info(
                "Shutting down: cancelling %d running and %d queued tasks",
                len(self.runner.running),
                self.runner.queued_count,
            )
            for hook in self.on_shutdown:
                try:
                    hook()
                except Exception:
                    logger.exception("A shutdown hook failed")
            grace = self.settings.shutdown_grace_ms / 1000 * SHUTDOWN_RUNNER_SHARE
            self.abandoned = await self.runner.shutdown(grace)
        finally:
            done.set()
        return self.abandoned

"""`AsyncTasksPlugin`: the whole task system as a Litestar plugin.

    app = Litestar(route_handlers=[my_routes], plugins=[AsyncTasksPlugin(executors=[MyExecutor])])

adds the API under `path` (default ``/api/v1``), resolves a session on every
request, runs the runner and the cleaner in the app's lifespan, and injects the
`TaskManager` into any handler that asks for ``task_manager``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
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
from async_tasks.api.sessions import current_session, new_session
from async_tasks.api.tasks import TaskController
from async_tasks.cleanup import Cleaner
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.events import EventHub
from async_tasks.executor import ExecutorRegistry, TaskExecutor
from async_tasks.manager import TaskManager
from async_tasks.runner import Runner
from async_tasks.sessions import SessionMiddleware, SessionResolver
from async_tasks.settings import Settings
from async_tasks.store import TaskStore

logger = logging.getLogger("async_tasks")


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
        self.cleaner.after_sweep.append(lambda result, trigger: self.task_manager.prune_rate_buckets())

    def router(self) -> Router:
        handlers: list[Any] = [TaskController, list_executors, current_session, new_session, create_any_demo_task]
        handlers += [demo_route(type(executor)) for executor in self.executors]
        return Router(
            path=self.path or "/",
            route_handlers=handlers,
            exception_handlers=EXCEPTION_HANDLERS,
            request_max_body_size=self.settings.max_request_body_bytes,
        )

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.append(self.router())
        app_config.dependencies["task_manager"] = Provide(self._provide_task_manager, sync_to_thread=False)
        app_config.middleware.append(SessionMiddleware(self.sessions))
        app_config.lifespan.append(self.lifespan)
        app_config.signature_namespace["TaskManager"] = TaskManager
        return app_config

    def _provide_task_manager(self) -> TaskManager:
        return self.task_manager

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        """Runner and cleaner live exactly as long as the app."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.runner.run)
            await tg.start(self.cleaner.run)
            app.state.task_manager = self.task_manager
            logger.info("Task system initialized successfully (%d executors: %s)", len(self.executors),
                        ", ".join(self.executors.names()))
            try:
                yield
            finally:
                await self.runner.shutdown(self.settings.shutdown_grace_ms / 1000)
                tg.cancel_scope.cancel()

"""`AsyncTasksPlugin`: the task system as a door of a Litestar app.

    app = Litestar(route_handlers=[my_routes], plugins=[AsyncTasksPlugin(executors=[MyExecutor])])

It mounts the API under `path` (default ``/api/v1``), the health and metrics
routes, and the front-end kit (``/client.js``, ``/client.d.ts``, the share links'
page ``/share/{token}``) at the root; guards the app's boundary (hosts, origins, JSON bodies, API keys, proxy
headers: `async_tasks.web.security`; CORS for CORS_ALLOW_ORIGINS unless the app has
its own), resolves the session of every request (handlers receive ``session_key``),
injects the `TaskSystem` as ``task_system``, and joins the system's lifespan to the
app's, as Litestar's own `ChannelsPlugin` does.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.di import NamedDependency, Provide
from litestar.plugins import InitPluginProtocol
from litestar.types import Scope

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.executor import CallsOut, TaskExecutor
from async_tasks.metrics import TaskMetrics
from async_tasks.settings import EngineSettings, Settings
from async_tasks.system import TaskSystem
from async_tasks.web.addresses import ServerAddresses
from async_tasks.web.api.admin import admin_router
from async_tasks.web.api.demo import create_any_demo_task, demo_route
from async_tasks.web.api.executors import list_executors
from async_tasks.web.api.health import LoopLagProbe, health_handlers
from async_tasks.web.api.kit import kit_route_handlers
from async_tasks.web.api.openapi import BoundaryResponses, with_session_security
from async_tasks.web.api.sessions import current_session, new_session
from async_tasks.web.api.share import share_page, share_router
from async_tasks.web.api.streams import root_socket_router, stream_router
from async_tasks.web.api.tasks import task_controller
from async_tasks.web.api.tickets import stream_ticket
from async_tasks.web.budgets import ClientBudgets
from async_tasks.web.errors import EXCEPTION_HANDLERS
from async_tasks.web.metrics import OPS_OPT_KEY, metrics_controller, request_metrics_middleware
from async_tasks.web.middleware import RequestMiddleware, echo_request_id, session_key_of
from async_tasks.web.security import BoundaryMiddleware, cors_config
from async_tasks.web.sessions import SessionResolver, ShareTokens
from async_tasks.web.streams import StreamBridge

#: Bytes a create body may hold besides the task's data (name, description, options).
BODY_OVERHEAD = 16_384


def api_body_limit(settings: Settings, engine: EngineSettings) -> int:
    """The largest body the API reads: a create body is the task's data plus a few
    fields, so a body beyond MAX_TASK_DATA_BYTES + `BODY_OVERHEAD` is refused (413)
    before it is decoded (a decoded body can take 20 times its size in memory)."""
    return min(settings.max_request_body_bytes, engine.max_task_data_bytes + BODY_OVERHEAD)


def door_settings(settings: Settings | None, system: TaskSystem | None, environ: Mapping[str, str] | None) -> Settings:
    """The web door's settings: `settings`, else those of `system` when they are a whole
    `Settings` (it may have been built with its engine's part only), else the environment's."""
    if settings is not None:
        return settings
    if system is not None and isinstance(system.settings, Settings):
        return system.settings
    return Settings.from_env(environ)


def provide_session_key(scope: Scope, task_system: NamedDependency[TaskSystem]) -> str:
    """The ``session_key`` dependency: the caller's session, resolved by the middleware.

    It names ``task_system`` only to be resolved after it: Litestar resolves independent
    dependencies of one request concurrently in a task group, which costs more than
    both lookups together."""
    return session_key_of(scope)


class AsyncTasksPlugin(InitPluginProtocol):
    def __init__(
        self,
        executors: Iterable[type[TaskExecutor[Any, Any]] | TaskExecutor[Any, Any]] = (),
        *,
        path: str = "/api/v1",
        settings: Settings | None = None,
        environ: Mapping[str, str] | None = None,
        load_entry_points: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        system: TaskSystem | None = None,
    ) -> None:
        """Build the task system (or use `system`). Bad settings or executors raise here.

        Args:
            executors: executor classes (or instances) to register besides the ones
                installed packages declare under the ``async_tasks.executors``
                entry-point group.
            path: where the API is mounted.
            settings: defaults to `Settings.from_env(environ)`.
            environ: the environment to read settings and executor configs from.
            load_entry_points: set False to register only `executors`.
            clock: the time source (tests pass a `FakeClock`).
            system: an engine built beforehand (then `executors`, `load_entry_points`
                and `clock` are unused; the web door's settings are `settings`, the
                system's own when they are a whole `Settings`, or the environment's).
        """
        self.settings: Settings = door_settings(settings, system, environ)
        self.system = system or TaskSystem(
            executors, settings=self.settings, environ=environ, load_entry_points=load_entry_points, clock=clock
        )
        #: Who is asking: session tokens and cookies, stream tickets, keyed hashes of addresses.
        self.sessions = SessionResolver(self.settings)
        #: Where this app's server listens: executors that call out refuse it.
        self.server_addresses = ServerAddresses()
        for executor in self.system.executors:
            if isinstance(executor, CallsOut):
                executor.avoid(self.server_addresses)
        self.path = "/" + path.strip("/") if path.strip("/") else ""
        #: Push streams (SSE / WebSocket): task events forwarded to each session's open streams.
        self.streams = self._stream_bridge()
        self.system.on_shutdown.append(self.streams.close)
        #: Prometheus metrics in this app's own registry (None with METRICS_ENABLED=false).
        self.metrics = (
            TaskMetrics(
                self.system,
                events_dropped=lambda: self.streams.events_dropped_total,
                streams_evicted=lambda: self.streams.streams_evicted_total,
            )
            if self.settings.metrics_enabled
            else None
        )
        self.lag_probe = LoopLagProbe()
        #: What one client may start here: new sessions, stream tickets.
        self.budgets = ClientBudgets(self.system.store, self.settings)
        #: Share links: tokens that read one task each (SHARE_LINK_TTL seconds).
        self.share_tokens = ShareTokens(self.sessions.keys, self.settings.share_link_ttl, self.system.clock)

    def _stream_bridge(self) -> StreamBridge:
        """The push streams: fed by the store's own events, or by the backend's channels
        when changes happen in other processes too."""
        return StreamBridge(
            self.system.store,
            shared=self.system.backend.events,
            max_streams=self.settings.max_streams,
            max_streams_per_session=self.settings.max_streams_per_session,
            max_streams_per_client=self.settings.max_streams_per_client,
            outlook=self.system.outlook,
        )

    def routers(self) -> list[Router]:
        """The API's routers, each mounted at `path` with the API's error handlers and
        body limit: side by side rather than nested in one, as Litestar copies a router
        (all its handlers) each time it is registered, and a nested one twice."""
        api: dict[str, Any] = {
            "path": self.path or "/",
            "exception_handlers": EXCEPTION_HANDLERS,
            "request_max_body_size": api_body_limit(self.settings, self.system.settings),
        }
        handlers: list[Any] = [
            task_controller(self.system),
            list_executors,
            current_session,
            new_session,
            stream_ticket,
            create_any_demo_task,
        ]
        handlers += [demo_route(type(executor), self.system) for executor in self.system.executors]
        routers = [
            Router(route_handlers=handlers, **api),
            stream_router(self.streams, **api),
            share_router(self.streams, self.share_tokens, **api),
        ]
        if self.settings.admin_keys:
            routers.append(admin_router(self.system, **api))
        return routers

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.extend(self.routers())
        if self.path:  # the session socket at the root too, beside the API's own
            app_config.route_handlers.append(root_socket_router(self.streams))
        if app_config.openapi_config is not None:  # document the session token and cookie
            app_config.openapi_config = with_session_security(
                app_config.openapi_config, admin=bool(self.settings.admin_keys)
            )
        app_config.route_handlers.extend(health_handlers(self.lag_probe, self.settings.ready_max_loop_lag_ms))
        # The front-end kit: /client.js and its types, and the share links' page.
        app_config.route_handlers.extend([*kit_route_handlers(), share_page])
        if self.metrics is not None:
            app_config.route_handlers.append(metrics_controller(self.metrics))
            app_config.middleware.append(request_metrics_middleware(self.metrics))
        system = self.system
        app_config.dependencies["task_system"] = Provide(lambda: system, sync_to_thread=False)
        app_config.dependencies["session_key"] = Provide(provide_session_key, sync_to_thread=False)
        budgets = self.budgets
        app_config.dependencies["client_budgets"] = Provide(lambda: budgets, sync_to_thread=False)
        api_path = self.path

        def provide_api_path(scope: Scope) -> str:
            """The API's path as clients reach it: under the mount of a host app (``root_path``) too."""
            return str(scope.get("root_path", "")) + api_path

        app_config.dependencies["api_path"] = Provide(provide_api_path, sync_to_thread=False)
        # Hosts, origins, JSON bodies, API keys and proxy headers: checked before a
        # session is resolved or a body read (see `async_tasks.web.security`).
        app_config.middleware.append(
            BoundaryMiddleware(
                self.settings,
                api_path=self.path or "/",
                sessions=self.sessions,
                addresses=self.server_addresses,
                spend_ticket=self.budgets.spend_ticket,
            )
        )
        app_config.plugins.append(BoundaryResponses(self.path or "/"))  # ...and their errors, documented
        if app_config.cors_config is None:
            app_config.cors_config = cors_config(self.settings)
        # The session (health probes and scrapes need none) and the request id.
        app_config.middleware.append(
            RequestMiddleware(
                self.sessions, session_exempt_key=OPS_OPT_KEY, admit_session=self.budgets.admit_new_session
            )
        )
        app_config.before_send.append(echo_request_id)  # runs for 404/405 too, unlike middleware
        app_config.lifespan.append(self.lifespan)
        app_config.signature_namespace["TaskSystem"] = TaskSystem
        app_config.signature_namespace["ClientBudgets"] = ClientBudgets
        return app_config

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        """The task system, the push streams and the loop-lag probe live as long as the app."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.lag_probe.run)
            await tg.start(self.streams.run)
            async with self.system:
                app.state.task_system = self.system
                freeze_startup_objects()
                yield
            tg.cancel_scope.cancel()


def freeze_startup_objects() -> None:
    """Once per process, when the first app has started, move everything alive (modules,
    the app, its routes and schemas: most of the heap of a fresh server) out of the
    garbage collector's sight.

    They live as long as the process, yet every full collection walked them all: with
    them frozen, a collection costs what tasks and requests hold (a server under load:
    108 000 tracked objects down to 32 000, the longest pause 52 ms down to 21 ms;
    ``python -m bench.cpu --only create --concurrency 64 --gc``)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


_frozen = False

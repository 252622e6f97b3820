"""The app factory: ``uvicorn async_tasks.web:create_app --factory``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from litestar import Litestar
from litestar.logging.config import LoggingConfig
from litestar.openapi import OpenAPIConfig

from async_tasks import __version__
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.executor import TaskExecutor
from async_tasks.logs import logging_dict
from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from async_tasks.web.api.admin_page import admin_page
from async_tasks.web.api.dashboard import dashboard_route_handlers
from async_tasks.web.api.openapi import StrictStructSchemaPlugin
from async_tasks.web.api.reference import OfflineSwaggerRenderPlugin, reference_router
from async_tasks.web.errors import EXCEPTION_HANDLERS
from async_tasks.web.metrics import opentelemetry_plugins
from async_tasks.web.plugin import AsyncTasksPlugin, door_settings
from async_tasks.web.security import security_headers


def create_app(
    settings: Settings | None = None,
    executors: Iterable[type[TaskExecutor[Any, Any]] | TaskExecutor[Any, Any]] = (),
    *,
    environ: Mapping[str, str] | None = None,
    load_entry_points: bool = True,
    clock: Clock = SYSTEM_CLOCK,
    route_handlers: Iterable[Any] = (),
    system: TaskSystem | None = None,
) -> Litestar:
    """The standalone server: the task system under ``/api/v1``, docs under ``/schema``,
    the live dashboard at ``/`` (assets under ``/dashboard``), the admin page at ``/admin``
    (with ADMIN_API_KEYS), and the security headers
    (CSP, frame and sniffing protection, no referrer) on every response.

    Settings come from the environment unless given; `executors` are registered
    beside the installed ones (entry points). With `system`, the app serves that engine
    (built beforehand) and the arguments before it are unused.
    """
    settings = door_settings(settings, system, environ)
    plugin = AsyncTasksPlugin(
        executors, settings=settings, environ=environ, load_entry_points=load_entry_points, clock=clock, system=system
    )
    pages = [*dashboard_route_handlers(), *([admin_page] if settings.admin_keys else [])]
    return Litestar(
        route_handlers=[*pages, *route_handlers],
        plugins=[plugin, StrictStructSchemaPlugin(), *opentelemetry_plugins(settings)],
        exception_handlers=EXCEPTION_HANDLERS,
        before_send=[security_headers],
        logging_config=logging_config(settings),
        openapi_config=OpenAPIConfig(
            title="async-tasks",
            version=__version__,
            description="Background tasks with step progress for live demos and proofs of concept.",
            # Swagger UI from the package's own files: the reference renders with the network off.
            render_plugins=[OfflineSwaggerRenderPlugin()],
            openapi_router=reference_router(),
        ),
    )


def logging_config(settings: Settings | None = None, *, environ: Mapping[str, str] | None = None) -> LoggingConfig:
    """Our logs (`async_tasks.logs`) as Litestar's logging config, through its queue-listener
    handler: the LOG_FORMAT and LOG_LEVEL format, ``[request_id=...]`` on each line written
    for a request, no client addresses, and uvicorn's access log off. `create_app` uses it;
    an app of your own with `AsyncTasksPlugin` gets the same in one line::

        Litestar(..., plugins=[AsyncTasksPlugin(...)], logging_config=logging_config())

    Settings come from the environment (`environ`) unless given. (It configures the
    process's logging when the app is built, root logger included, as any Litestar
    logging config does.)"""
    settings = settings or Settings.from_env(environ)
    schema = logging_dict(
        settings, handler={"class": "litestar.logging.standard.QueueListenerHandler"}, handler_name="queue_listener"
    )
    return LoggingConfig(
        formatters=schema["formatters"],
        filters=schema["filters"],
        handlers=schema["handlers"],
        loggers=schema["loggers"],
        root=schema["root"],
        log_exceptions="never",  # our 500 handler logs the error once, with the route
    )

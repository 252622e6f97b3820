"""The worker process: ``async-tasks worker`` runs attempts a shared backend delivers.

It needs TASK_BACKEND=redis://... (or ``--backend``) and the same SECRET_KEY and
REDIS_KEY_PREFIX as the API processes. Executors come from the installed entry points,
plus ``--app module:attribute`` for executors registered in code: the attribute is an
executor class, an iterable of them, a `TaskSystem`, a Litestar app built with
`AsyncTasksPlugin`, or a callable (a factory) returning one of these.

On SIGTERM or SIGINT it takes no new attempts, gives the running ones most of
SHUTDOWN_GRACE_MS to finish, hands the others back to the queue (another worker runs
them) and exits; a watchdog ends the process if that takes longer than the grace period.
"""

from __future__ import annotations

import importlib
import logging
import logging.config
import signal
import sys
import threading
from collections.abc import Iterable
from typing import Any

import anyio

from async_tasks.backends import backend_class
from async_tasks.errors import ExecutorRegistrationError, SettingsError
from async_tasks.executor import TaskExecutor
from async_tasks.logs import flush_logs, logging_dict
from async_tasks.process import environment, shutdown_watchdog
from async_tasks.settings import Settings
from async_tasks.system import TaskSystem

logger = logging.getLogger("async_tasks.worker")


def load_app(spec: str) -> tuple[list[Any], bool]:
    """The executors `spec` (``module:attribute``) names, and whether the installed entry
    points must be loaded beside them (not when they come from a built app or engine,
    which already has them)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SettingsError(f"--app takes module:attribute (for example myapp:create_app), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
        found: Any = getattr(module, attribute)
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"--app {spec}: {exc}") from None
    if callable(found) and not isinstance(found, type):
        found = found()
    if isinstance(found, TaskSystem):
        return list(found.executors), False
    from litestar import Litestar

    if isinstance(found, Litestar):
        from async_tasks.web.plugin import AsyncTasksPlugin

        try:
            return list(found.plugins.get(AsyncTasksPlugin).system.executors), False
        except KeyError:
            raise SettingsError(f"--app {spec}: this Litestar app has no AsyncTasksPlugin") from None
    if isinstance(found, type) and issubclass(found, TaskExecutor):
        return [found], True
    if isinstance(found, TaskExecutor):
        return [found], True
    if isinstance(found, Iterable):
        return list(found), True
    raise SettingsError(f"--app {spec}: expected executors, a TaskSystem or a Litestar app, got {type(found).__name__}")


def run_worker(*, backend: str | None = None, concurrency: int | None = None, app: str | None = None) -> int:
    """Run a worker until SIGTERM or SIGINT; 2 on a bad setting or an unreachable Redis."""
    environ = environment(backend=backend, with_worker=True, concurrency=concurrency)
    try:
        settings = Settings.from_env(environ)
        chosen = backend_class(settings)
        if not chosen.shared:
            raise SettingsError(
                "The worker needs a shared backend (TASK_BACKEND=redis://... or --backend); "
                "with the memory backend, tasks run inside `async-tasks serve`"
            )
        executors, entry_points = load_app(app) if app else ([], True)
        chosen.check(settings)
        system = TaskSystem(executors, settings=settings, environ=environ, load_entry_points=entry_points)
    except (SettingsError, ExecutorRegistrationError) as exc:
        print(f"async-tasks: {exc}", file=sys.stderr)
        return 2
    logging.config.dictConfig(logging_dict(settings))
    signalled = threading.Event()
    threading.Thread(
        target=shutdown_watchdog, args=(system, signalled, settings), name="async-tasks shutdown watchdog", daemon=True
    ).start()
    anyio.run(_serve, system, settings, signalled)
    if system.abandoned:
        logger.warning("Exiting with %d abandoned tasks", len(system.abandoned))
        flush_logs()
        return 1
    return 0


async def _serve(system: TaskSystem, settings: Settings, signalled: threading.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with system:
            names = ", ".join(system.executors.names())
            print(
                f"async-tasks worker: up to {settings.worker_concurrency} tasks at once ({names})",
                file=sys.stderr,
            )
            async for _ in signals:
                signalled.set()
                system.request_shutdown()
                break

"""The worker process: ``async-tasks worker`` runs attempts a shared backend delivers.

It needs TASK_BACKEND=redis://... (or ``--backend``) and the same REDIS_KEY_PREFIX as
the API processes; it reads the engine's and backend's settings only (`BackendSettings`:
it signs no sessions, so it needs no SECRET_KEY). Executors come from the installed
entry points, plus ``--app module:attribute`` for executors registered in code, imported
from the current directory as uvicorn imports an app (`async_tasks.loading`): executors, a
`TaskSystem`, an app serving one, or a factory of any of these. ``--executors a,b``
(WORKER_EXECUTORS) runs some of them only: the worker takes tasks of those, and a task
of another executor waits for a worker that runs it.

On SIGTERM or SIGINT it takes no new attempts, gives the running ones most of
SHUTDOWN_GRACE_MS to finish, hands the others back to the queue (another worker runs
them) and exits; a watchdog ends the process if that takes longer than the grace period.
"""

from __future__ import annotations

import logging
import logging.config
import signal
import sys
import threading
from typing import Any

import anyio

from async_tasks.backends import backend_class
from async_tasks.errors import ExecutorRegistrationError, SettingsError
from async_tasks.loading import load_target
from async_tasks.logs import flush_logs, logging_dict
from async_tasks.process import environment, shutdown_watchdog
from async_tasks.settings import BackendSettings
from async_tasks.system import TaskSystem

logger = logging.getLogger("async_tasks.worker")


def load_app(spec: str) -> tuple[list[Any], bool]:
    """The executors `spec` (``module:attribute``, see `async_tasks.loading`) names, and
    whether the installed entry points must be loaded beside them (not when they come
    from a built app or engine, which already has them)."""
    target = load_target(spec)
    if target.executors is not None:
        return target.executors, True
    system = target.task_system
    assert system is not None
    return list(system.executors), False


def run_worker(
    *, backend: str | None = None, concurrency: int | None = None, app: str | None = None, executors: str | None = None
) -> int:
    """Run a worker until SIGTERM or SIGINT; 2 on a bad setting or an unreachable Redis.
    `executors` (comma-separated names, WORKER_EXECUTORS) limits it to some executors."""
    environ = environment(backend=backend, with_worker=True, concurrency=concurrency, executors=executors)
    try:
        settings = BackendSettings.from_env(environ)
        chosen = backend_class(settings)
        if not chosen.shared:
            raise SettingsError(
                "The worker needs a shared backend (TASK_BACKEND=redis://... or --backend); "
                "with the memory backend, tasks run inside `async-tasks serve`"
            )
        loaded, entry_points = load_app(app) if app else ([], True)
        chosen.check(settings)
        system = TaskSystem(loaded, settings=settings, environ=environ, load_entry_points=entry_points)
    except (SettingsError, ExecutorRegistrationError) as exc:
        print(f"async-tasks: {exc}", file=sys.stderr)
        return 2
    logging.config.dictConfig(logging_dict(settings))
    signalled = threading.Event()
    threading.Thread(
        target=shutdown_watchdog, args=(system, signalled, settings), name="async-tasks shutdown watchdog", daemon=True
    ).start()
    anyio.run(_serve, system, settings, signalled, backend_options=loop_options())
    if system.abandoned:
        logger.warning("Exiting with %d abandoned tasks", len(system.abandoned))
        flush_logs()
        return 1
    return 0


def loop_options() -> dict[str, Any]:
    """uvloop where it is installed (uvicorn[standard] brings it, as for the API servers):
    a worker's time goes mostly to its Redis round trips, and uvloop's sockets cost about
    half of asyncio's own."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


async def _serve(system: TaskSystem, settings: BackendSettings, signalled: threading.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with system:
            runs = system.worker.executors if system.worker is not None else system.executors
            names = ", ".join(runs.names())
            print(
                f"async-tasks worker: up to {settings.worker_concurrency} tasks at once ({names})",
                file=sys.stderr,
            )
            async for _ in signals:
                signalled.set()
                system.request_shutdown()
                break

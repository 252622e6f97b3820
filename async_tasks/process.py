"""What the server and the worker processes share: command-line overrides of settings
and the watchdog that bounds a shutdown."""

from __future__ import annotations

import logging
import os
import threading
import time

from async_tasks.logs import flush_logs
from async_tasks.settings import EngineSettings
from async_tasks.system import TaskSystem

logger = logging.getLogger("async_tasks.shutdown")


def environment(
    *,
    backend: str | None = None,
    with_worker: bool = False,
    concurrency: int | None = None,
    executors: str | None = None,
) -> dict[str, str]:
    """The process environment with the command line's overrides of settings."""
    environ = dict(os.environ)
    if backend is not None:
        environ["TASK_BACKEND"] = backend
    if with_worker:
        environ["EMBEDDED_WORKER"] = "true"
    if concurrency is not None:
        environ["WORKER_CONCURRENCY"] = str(concurrency)
    if executors is not None:
        environ["WORKER_EXECUTORS"] = executors
    return environ


def shutdown_watchdog(system: TaskSystem, signalled: threading.Event, settings: EngineSettings) -> None:
    """Once `signalled`, give the shutdown SHUTDOWN_GRACE_MS (at least 1 s), then end the
    process, naming the tasks that kept it alive."""
    signalled.wait()
    began = time.monotonic()
    logger.info(
        "Shutdown requested: refusing new tasks and cancelling running ones (grace %d ms)",
        settings.shutdown_grace_ms,
    )
    system.request_shutdown()  # after the line above: the cancellations are logged after it
    time.sleep(max(settings.shutdown_grace_ms / 1000, 1.0))
    # Still alive: something ignores cancellation or the event loop is blocked.
    reported = {task.id for task in system.abandoned}
    stuck = system.execution.running_tasks()
    for task in stuck:
        if task.id not in reported:
            logger.warning(
                "Abandoned task %s for session %s: it did not stop within the grace period",
                task.id,
                task.session_key,
                extra={
                    "task_id": task.id,
                    "session_key": task.session_key,
                    "executor": task.executor,
                    "status": task.status.value,
                    "reason": "shutdown",
                },
            )
    logger.error(
        "Shutdown did not finish within SHUTDOWN_GRACE_MS (%d ms, %.1f s elapsed): exiting now, %d tasks abandoned",
        settings.shutdown_grace_ms,
        time.monotonic() - began,
        len(reported | {task.id for task in stuck}),
    )
    flush_logs()
    os._exit(1)

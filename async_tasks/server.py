"""The server process: uvicorn serving the app, signals, and a bounded exit.

`serve` is what ``async-tasks serve`` runs. When SIGTERM or SIGINT arrives, the
task system begins shutting down at once (new tasks get 503 ``shutting_down``;
running ones are cancelled with reason ``shutdown``, see `TaskSystem.shutdown`)
while uvicorn still waits, for at most most of SHUTDOWN_GRACE_MS, for open
connections. A watchdog thread ends the process when the grace period is over and
it is still alive (a task that ignores cancellation keeps the lifespan from
finishing): it logs the abandoned tasks, flushes the logs and exits with status 1.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from async_tasks.backends import backend_class
from async_tasks.errors import ExecutorRegistrationError, SettingsError
from async_tasks.logs import flush_logs
from async_tasks.process import environment, shutdown_watchdog
from async_tasks.settings import Settings
from async_tasks.system import SHUTDOWN_TASK_SHARE

if TYPE_CHECKING:
    from async_tasks.web.plugin import AsyncTasksPlugin

logger = logging.getLogger("async_tasks.shutdown")


def serve(
    *,
    host: str | None = None,
    port: int | None = None,
    backend: str | None = None,
    with_worker: bool = False,
    concurrency: int | None = None,
    app: str | None = None,
) -> int:
    """Build the app from the environment and serve it; 2 on a bad setting, an
    unreachable Redis or an `app` that does not load, 1 when the address cannot be
    listened on (the port is taken).

    `backend` overrides TASK_BACKEND; `with_worker` runs a worker in the same process
    (Redis backend), with `concurrency` slots (default WORKER_CONCURRENCY). `app`
    (``module:attribute``, see `async_tasks.loading`) names executors, a `TaskSystem`,
    an app or a factory of one, imported from the current directory."""
    from async_tasks.web.app import create_app

    environ = environment(backend=backend, with_worker=with_worker, concurrency=concurrency)
    if app is not None:
        # The user's factory reads the process environment: it sees the command line's overrides too.
        os.environ.update(environ)
    try:
        settings = Settings.from_env(environ)
        chosen = backend_class(settings)
        if with_worker and not chosen.shared:
            raise SettingsError(
                "--with-worker needs a shared backend (TASK_BACKEND=redis://... or --backend); "
                "with the memory backend, tasks run inside `async-tasks serve` already"
            )
    except SettingsError as exc:
        print(f"async-tasks: {exc}", file=sys.stderr)
        return 2
    # A taken port is said first and only: before the app is built (it logs) and
    # before uvicorn runs the app's start-up, which it does before binding.
    refused = _cannot_listen(host or settings.host, port or settings.port)
    if refused:
        print(f"async-tasks: {refused}", file=sys.stderr)
        return 1
    try:
        chosen.check(settings)
        if app is None:
            served = create_app(settings, environ=environ)
        else:
            served, settings = _app_from(app, settings, environ)
    except (SettingsError, ExecutorRegistrationError) as exc:
        print(f"async-tasks: {exc}", file=sys.stderr)
        return 2
    return run_server(served, settings, host=host or settings.host, port=port or settings.port)


def _app_from(spec: str, settings: Settings, environ: dict[str, str]) -> tuple[Any, Settings]:
    """The app to serve for ``--app``, and the settings it runs with (an app's or a
    system's own, else the environment's)."""
    from async_tasks.loading import load_target
    from async_tasks.web.app import create_app

    target = load_target(spec)
    if target.app is not None:
        return target.app, plugin_of(target.app).settings
    if target.system is not None:
        app = create_app(system=target.system, environ=environ)
        return app, plugin_of(app).settings
    return create_app(settings, target.executors or (), environ=environ), settings


def plugin_of(app: Any) -> AsyncTasksPlugin:
    """The door an app serves the engine through (a Litestar app's `AsyncTasksPlugin`, a `TasksApp`'s)."""
    from async_tasks.loading import plugin_of_app

    plugin = plugin_of_app(app)
    if plugin is None:
        raise SettingsError("This app serves no task system: build it with AsyncTasksPlugin or create_app")
    return plugin


def run_server(app: Any, settings: Settings, *, host: str | None = None, port: int | None = None) -> int:
    """Serve `app` with uvicorn until SIGTERM or SIGINT, then shut down within
    SHUTDOWN_GRACE_MS (see the module docstring).

    Returns 0 after a clean shutdown. The process exits with status 1, at once, when
    the shutdown abandoned tasks (their worker threads would block the exit). No
    access log is written (it would print client IPs).
    """
    import uvicorn

    from async_tasks.web.api.streams import WS_MAX_MESSAGE_BYTES
    from async_tasks.web.security import exposure_warning

    plugin = plugin_of(app)
    system = plugin.system
    grace = settings.shutdown_grace_ms / 1000
    config = uvicorn.Config(
        app,
        host=host or settings.host,
        port=port or settings.port,
        # The app applies TRUST_PROXY_HEADERS itself (`async_tasks.web.security`), under any server.
        proxy_headers=False,
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        access_log=False,
        log_config=None,
        # uvicorn passes it to asyncio.wait_for: fractions of a second work.
        timeout_graceful_shutdown=max(0.1, grace * SHUTDOWN_TASK_SHARE),  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    plugin.server_addresses.add(config.host, config.port)  # executors never call their own server
    signalled = threading.Event()
    threading.Thread(
        target=shutdown_watchdog,
        args=(system, signalled, settings),
        name="async-tasks shutdown watchdog",
        daemon=True,
    ).start()

    def on_signal(sig: int, frame: Any) -> None:
        # uvicorn's own handler, except that it does not re-raise the signal once the
        # server has stopped (that would kill the process before the logs are written).
        # A signal handler: only signal-safe work here (no logging: it takes locks). The
        # watchdog thread wakes at once, says "Shutdown requested" and only then starts
        # the task system's shutdown, so the log tells the story in order.
        if server.should_exit and sig == signal.SIGINT:
            server.force_exit = True
        else:
            server.should_exit = True
        signalled.set()

    server.handle_exit = on_signal  # type: ignore[method-assign]
    if exposed := exposure_warning(config.host, settings):
        logging.getLogger("async_tasks").warning(exposed)
    print(f"async-tasks serving on http://{config.host}:{config.port} (docs at /schema)", file=sys.stderr)
    server.run()
    if system.abandoned:
        # Their worker threads would keep the interpreter from exiting.
        logger.warning("Exiting with %d abandoned tasks", len(system.abandoned))
        flush_logs()
        os._exit(1)
    return 0


def _cannot_listen(host: str, port: int) -> str | None:
    """Why the server could not listen on `host`:`port` (the port is taken, the host is
    not an address of this machine), or None. Binds and closes a socket per address,
    as asyncio's ``create_server`` will (an address family the machine lacks is skipped)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {where}: {exc.strerror}"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL and len(addresses) > 1:
                    continue
                hint = " (is another server running there? set PORT or --port)" if exc.errno == errno.EADDRINUSE else ""
                return f"cannot listen on {where}: {(exc.strerror or str(exc)).lower()}{hint}"
    return None

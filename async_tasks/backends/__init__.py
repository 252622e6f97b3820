"""Where tasks live and run: one backend object, built from TASK_BACKEND in one place.

    backend = backend_for(settings, executors)   # MemoryBackend, RedisBackend or PostgresBackend
    backend.store                                # the TaskStore (the authority on status)
    backend.execution                            # the ExecutionBackend (hands tasks to delivery)

A backend carries everything that differs between deployments: the task store, the
execution producer, the worker that runs attempts in other processes (`worker`; the
memory backend runs them in its execution), the cross-process event source of the push
streams (`events`) and a health check. Nothing outside `async_tasks.backends` asks
which backend it is, as `saq.Queue.from_url` picks a queue and Litestar takes a
`ChannelsBackend` object. Each shared backend's code lives in its own package, needing
its own extra (``pip install 'async-tasks[redis]'``, ``'async-tasks[postgres]'``),
imported only when chosen; what the two share (the producer, the worker, the reconciler,
written against the store's steps) is `async_tasks.backends.queued`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from async_tasks.errors import SettingsError

if TYPE_CHECKING:
    import anyio.abc

    from async_tasks.clock import Clock
    from async_tasks.execution.base import ExecutionBackend
    from async_tasks.executor import ExecutorRegistry
    from async_tasks.settings import BackendSettings
    from async_tasks.store.base import TaskStore


class Worker(Protocol):
    """Runs attempts of the tasks a shared backend delivers, in this process."""

    #: The executors it runs (WORKER_EXECUTORS, or every registered one): it is given
    #: tasks of these only.
    executors: ExecutorRegistry

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = ...) -> None:
        """Serve until cancelled (start it with ``await tg.start(worker.run)``)."""
        ...

    async def shutdown(self, grace: float) -> list[Any]:
        """Take no new attempts, wait up to `grace` for the running ones, hand the rest
        back; returns the tasks that did not stop."""
        ...

    def running_tasks(self) -> list[Any]: ...


class EventSource(Protocol):
    """How push streams in any process see every change (a shared backend publishes each
    change on the session's channel, ``<channel_prefix><session key>``, as an envelope
    with a sequence number ordering every change)."""

    channel_prefix: str

    def channels_backend(self, on_resubscribe: Callable[[], None]) -> Any:
        """A Litestar `ChannelsBackend` subscribed to those channels; `on_resubscribe` is
        called after a lost connection was restored (streams start again from snapshots)."""
        ...

    async def snapshot(self, session_key: str, task_id: str | None = None) -> tuple[int, list[bytes]]:
        """The snapshot events (JSON) of the session's newest tasks (or of one task),
        newest first, and the sequence number they reflect."""
        ...


class Backend(Protocol):
    #: What `/ready` and log lines call it: ``memory``, ``redis``, ``postgres``.
    name: str
    #: Whether other processes share it (API processes and workers); False: one process.
    shared: bool
    store: TaskStore
    execution: ExecutionBackend
    #: Push streams' cross-process source (None: the store's in-process events are all).
    events: EventSource | None
    #: Where queued work stays when this process stops (for the shutdown log line).
    keeps_queued_tasks: bool

    def worker(self, concurrency: int) -> Worker | None:
        """A worker for this process (None: the execution runs attempts itself)."""
        ...

    async def ping(self) -> bool | None:
        """Whether the backend's server answers now (None: there is none)."""
        ...

    @staticmethod
    def check(settings: BackendSettings) -> None:
        """Raise `SettingsError` (one line) when the backend cannot be reached at start-up."""
        ...


#: URL schemes of TASK_BACKEND and the module:class of their backend.
SCHEMES: dict[str, tuple[str, str, str]] = {
    "memory": ("async_tasks.backends.memory", "MemoryBackend", ""),
    "redis": ("async_tasks.backends.redis", "RedisBackend", "redis"),
    "rediss": ("async_tasks.backends.redis", "RedisBackend", "redis"),
    "unix": ("async_tasks.backends.redis", "RedisBackend", "redis"),
    "postgresql": ("async_tasks.backends.postgres", "PostgresBackend", "postgres"),
    "postgres": ("async_tasks.backends.postgres", "PostgresBackend", "postgres"),
}


#: The libraries each extra installs (a backend imports some of them only when first used,
#: so a missing one is found here, at start-up).
EXTRA_LIBRARIES: dict[str, tuple[str, ...]] = {
    "redis": ("redis", "saq"),
    "postgres": ("psycopg", "psycopg_pool", "saq"),
}


def scheme_of(url: str) -> str:
    return url if url == "memory" else url.partition("://")[0].lower()


def backend_class(settings: BackendSettings) -> type[Backend]:
    """The class of the backend TASK_BACKEND names. A missing extra is a `SettingsError`
    naming it."""
    module_name, class_name, extra = SCHEMES[scheme_of(settings.task_backend)]
    try:
        for library in EXTRA_LIBRARIES.get(extra, ()):  # some are imported only when first used
            importlib.import_module(library)
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SettingsError(
            f"TASK_BACKEND is {scheme_of(settings.task_backend)} but {exc.name or 'a dependency'} is not installed: "
            f"pip install 'async-tasks[{extra}]'"
        ) from None
    cls: type[Backend] = getattr(module, class_name)
    return cls


def backend_for(settings: BackendSettings, executors: ExecutorRegistry, clock: Clock) -> Backend:
    """The backend TASK_BACKEND names, built."""
    return backend_class(settings)(settings, executors, clock)  # type: ignore[call-arg]

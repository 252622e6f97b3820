"""The executor plugin API: a base class, declared steps, params, and the registry.

Write an executor by subclassing `TaskExecutor`::

    class Params(TaskParams):
        delay_ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 1000

    class SampleExecutor(TaskExecutor[Params]):
        name = "sample"
        title = "Sample Long-Running Task"
        Params = Params

        async def execute(self, task, progress):
            await progress(25)
            await progress(50, step="Processing Data", description="Analysing input")
            return {"ok": True}

`execute` may also be a plain ``def`` (blocking code): it then runs in a worker
thread and `progress` is a plain callable.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

import msgspec

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.errors import ExecutorRegistrationError
from async_tasks.settings import load_env

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from async_tasks.task import Task

ENTRY_POINT_GROUP = "async_tasks.executors"


class TaskParams(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Base for executor params: camelCase JSON names, unknown fields refused."""


class NoParams(TaskParams):
    """Params of an executor that takes none."""


P = TypeVar("P", bound=msgspec.Struct)


class Step(msgspec.Struct, frozen=True):
    """A declared step. `at` is the percent at which it begins.

    When an executor reports only a percent (``await progress(40)``), the task's
    current step becomes the last declared step whose `at` is not above it.
    """

    name: str
    description: str = ""
    at: float = 0


class Progress(Protocol):
    """What `execute` receives to report progress (async form)."""

    async def __call__(self, percent: float, step: str | None = None, description: str | None = None) -> None: ...

    def step(
        self, name: str, description: str = "", *, end: float | None = None
    ) -> AbstractAsyncContextManager[None]: ...


class SyncProgress(Protocol):
    """What a blocking ``def execute`` receives; calls cross back to the event loop."""

    def __call__(self, percent: float, step: str | None = None, description: str | None = None) -> None: ...


class TaskExecutor(Generic[P]):
    """Base class of every executor.

    Class attributes:
        name: registry key and the URL segment of ``POST /demo/tasks/{name}``.
        title: default task name.
        description: shown in ``GET /executors`` and the OpenAPI document.
        Params: msgspec Struct validated at the API edge; `task.params` is an instance.
        Config: optional msgspec Struct read from environment variables at start-up
            (field names encoded as the variable names, e.g. ``rename="upper"``).
        steps: declared steps, shown to clients and used to name percent-only reports.
        timeout_ms / max_retries: defaults for the execution policies.
    """

    name: ClassVar[str]
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[Any]] = NoParams
    Config: ClassVar[type[msgspec.Struct] | None] = None
    steps: ClassVar[Sequence[Step]] = ()
    timeout_ms: ClassVar[int | None] = None
    max_retries: ClassVar[int] = 0

    #: The server's clock; tests swap in `async_tasks.testing.FakeClock`.
    clock: Clock = SYSTEM_CLOCK

    def __init__(self, config: Any = None) -> None:
        self.config = config

    async def sleep(self, seconds: float) -> None:
        """Wait on the server's clock (a fake clock in tests), not the wall clock."""
        await self.clock.sleep(seconds)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TaskExecutor[Any]:
        """Build the executor, loading its `Config` from the environment."""
        config = load_env(cls.Config, environ) if cls.Config is not None else None
        return cls(config)

    @classmethod
    def is_blocking(cls) -> bool:
        """True when `execute` is a plain function, run in a worker thread."""
        return not inspect.iscoroutinefunction(cls.execute)

    async def validate(self, params: P) -> None:
        """Check params beyond their schema when a task is created.

        Raise `async_tasks.InvalidParams` to refuse the request with a 400.
        """

    def execute(self, task: Task, progress: Any) -> Any:
        """Do the work. The return value becomes the task's `result`."""
        raise NotImplementedError(f"{type(self).__name__} must implement execute()")

    def step_for(self, percent: float) -> Step | None:
        current = None
        for step in self.steps:
            if step.at <= percent:
                current = step
        return current


class ExecutorRegistry:
    """Executors by name; refuses duplicates and half-defined classes."""

    def __init__(self) -> None:
        self._executors: dict[str, TaskExecutor[Any]] = {}

    def register(self, executor: TaskExecutor[Any], *, origin: str = "code") -> None:
        cls = type(executor)
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name or "/" in name:
            raise ExecutorRegistrationError(f"{cls.__qualname__} ({origin}) needs a non-empty `name` without '/'")
        if name in self._executors:
            other = type(self._executors[name]).__qualname__
            raise ExecutorRegistrationError(
                f"Duplicate executor name {name!r}: {cls.__qualname__} ({origin}) and {other}"
            )
        if not (isinstance(cls.Params, type) and issubclass(cls.Params, msgspec.Struct)):
            raise ExecutorRegistrationError(f"{cls.__qualname__}.Params must be a msgspec.Struct subclass")
        if cls.execute is TaskExecutor.execute:
            raise ExecutorRegistrationError(f"{cls.__qualname__} must implement execute()")
        self._executors[name] = executor

    def get(self, name: str) -> TaskExecutor[Any] | None:
        return self._executors.get(name)

    def names(self) -> list[str]:
        return list(self._executors)

    def __iter__(self) -> Iterator[TaskExecutor[Any]]:
        return iter(self._executors.values())

    def __len__(self) -> int:
        return len(self._executors)

    @classmethod
    def build(
        cls,
        executors: Iterable[type[TaskExecutor[Any]] | TaskExecutor[Any]] = (),
        *,
        load_entry_points: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> ExecutorRegistry:
        """Entry-point executors first (as installed packages declare them), then `executors`."""
        registry = cls()
        if load_entry_points:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                try:
                    loaded = ep.load()
                except Exception as exc:
                    raise ExecutorRegistrationError(f"Cannot load executor entry point {ep.name!r}: {exc}") from exc
                if not (isinstance(loaded, type) and issubclass(loaded, TaskExecutor)):
                    raise ExecutorRegistrationError(f"Entry point {ep.name!r} is not a TaskExecutor subclass")
                if getattr(loaded, "name", None) != ep.name:
                    raise ExecutorRegistrationError(
                        f"Entry point {ep.name!r} names executor {getattr(loaded, 'name', None)!r}; they must match"
                    )
                registry.register(loaded.from_environ(environ), origin=f"entry point {ep.value}")
        for item in executors:
            instance = item.from_environ(environ) if isinstance(item, type) else item
            registry.register(instance)
        return registry

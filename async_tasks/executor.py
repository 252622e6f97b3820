"""The executor API: a base class or a decorated function, params, config, the registry.

A class::

    class GreetParams(TaskParams):
        who: str = "world"

    class GreetExecutor(TaskExecutor[GreetParams]):
        name = "greet"
        title = "Greeting"
        steps = (Step("Thinking", at=0), Step("Speaking", at=50))

        async def execute(self, task: Task[GreetParams], progress: Progress) -> dict[str, str]:
            await progress(50)
            return {"greeting": f"Hello, {task.params.who}!"}

`Params` is taken from ``TaskExecutor[GreetParams]``, so it is declared once and
``task.params`` is typed. The same as a function::

    @executor("greet", title="Greeting", steps=[Step("Thinking"), Step("Speaking", at=50)])
    async def greet(params: GreetParams, progress: Progress) -> dict[str, str]:
        await progress(50)
        return {"greeting": f"Hello, {params.who}!"}

`greet` is then an executor class, registered exactly like one. A plain ``def``
(blocking code) runs in a worker thread and gets a `SyncProgress`.

Settings of an executor come from environment variables through a typed `Config`
struct: ``TaskExecutor[MyParams, MyConfig]`` makes ``self.config`` a ``MyConfig``
loaded at start-up (field names encoded as the variable names, ``rename="upper"``;
every field needs a default).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, runtime_checkable

import msgspec
from typing_extensions import TypeVar

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.errors import ExecutorRegistrationError
from async_tasks.progress import Progress, Step, SyncProgress
from async_tasks.settings import load_env

if TYPE_CHECKING:
    from async_tasks.task import Task

ENTRY_POINT_GROUP = "async_tasks.executors"


class TaskParams(msgspec.Struct, rename="camel", forbid_unknown_fields=True, kw_only=True):
    """Base for executor params: camelCase JSON names, unknown fields refused."""


class NoParams(TaskParams):
    """Params of an executor that takes none."""


class NoConfig(msgspec.Struct, frozen=True):
    """Config of an executor that reads no environment variables."""


P = TypeVar("P", bound=msgspec.Struct, default=NoParams)
C = TypeVar("C", bound=msgspec.Struct, default=NoConfig)


class OwnAddresses(Protocol):
    """Where the server running the engine accepts connections (`async_tasks.web.addresses`
    keeps them as a web door learns them): host strings and ports."""

    @property
    def hosts(self) -> Collection[str]: ...

    @property
    def ports(self) -> Collection[int]: ...


@runtime_checkable
class CallsOut(Protocol):
    """An executor that makes outbound requests (``api-call``).

    The engine knows no server; a web door that runs it hands such an executor the
    addresses it serves on at start-up (`AsyncTasksPlugin`), so that a task never calls
    the server that runs it, with the server's own network position. Without a web door
    (a script, a worker process) it is never called: there is no server to protect.
    """

    def avoid(self, own: OwnAddresses) -> None:
        """Refuse requests to `own` (kept, not copied: the web door adds addresses later)."""


class TaskExecutor(Generic[P, C]):
    """Base class of every executor.

    Class attributes:
        name: registry key and the URL segment of ``POST /demo/tasks/{name}``.
        title: default task name.
        description: shown in ``GET /executors`` and the OpenAPI document.
        steps: declared steps, shown to clients and used to name percent-only reports.
        timeout_ms / max_retries: defaults for the execution policies.
        Params / Config: taken from ``TaskExecutor[Params, Config]``.
    """

    name: ClassVar[str]
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Params: ClassVar[type[Any]] = NoParams
    Config: ClassVar[type[Any]] = NoConfig
    steps: ClassVar[Sequence[Step]] = ()
    timeout_ms: ClassVar[int | None] = None
    max_retries: ClassVar[int] = 0

    #: The engine's clock; tests swap in `async_tasks.testing.FakeClock`.
    clock: Clock = SYSTEM_CLOCK
    #: This executor's settings (an instance of `Config`).
    config: C

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if not (isinstance(origin, type) and issubclass(origin, TaskExecutor)):
                continue
            # ``TaskExecutor[Any]`` (or a type variable) leaves the defaults alone.
            args = [
                arg if isinstance(arg, type) and issubclass(arg, msgspec.Struct) else None
                for arg in typing.get_args(base)
            ]
            if len(args) >= 1 and args[0] is not None and "Params" not in cls.__dict__:
                cls.Params = args[0]
            if len(args) >= 2 and args[1] is not None and "Config" not in cls.__dict__:
                cls.Config = args[1]

    def __init__(self, config: C | None = None) -> None:
        self.config = config if config is not None else type(self).Config()

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """Wait on the engine's clock (a fake clock in tests), not the wall clock:
        ``await self.sleep(2)``. (The clock's coroutine itself, without a frame of its own
        to hold while the task sleeps.)"""
        return self.clock.sleep(seconds)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TaskExecutor[Any, Any]:
        """Build the executor, loading its `Config` from the environment."""
        return cls(load_env(cls.Config, environ))

    @classmethod
    def is_blocking(cls) -> bool:
        """True when `execute` is a plain function, run in a worker thread."""
        return not inspect.iscoroutinefunction(cls.execute)

    async def validate(self, params: P) -> None:
        """Check params beyond their schema when a task is created.

        Raise `async_tasks.InvalidParams` to refuse the request with a 400.
        """

    def execute(self, task: Task[P], progress: Any) -> Any:
        """Do the work: ``async def execute(self, task, progress: Progress)``, or a plain
        ``def`` with a `SyncProgress` for blocking code. The return value (JSON-encodable)
        becomes the task's `result`."""
        raise NotImplementedError(f"{type(self).__name__} must implement execute()")


#: What `executor` decorates: ``async def f(params, progress: Progress)`` or a blocking
#: ``def f(params, progress: SyncProgress)``.
ExecuteFunction = Callable[[P, Progress], Awaitable[Any]] | Callable[[P, SyncProgress], Any]


def executor(
    name: str,
    *,
    title: str = "",
    description: str = "",
    steps: Sequence[Step] = (),
    timeout_ms: int | None = None,
    max_retries: int = 0,
    params: type[msgspec.Struct] | None = None,
) -> Callable[[ExecuteFunction[P]], type[TaskExecutor[P]]]:
    """Make an executor class of a function taking ``(params, progress)``.

    `Params` is the annotation of the function's first parameter (or `params`, when
    the annotation cannot be resolved at import time); the other arguments are the
    class attributes of `TaskExecutor`. The function's docstring describes it.
    """

    # Annotations are strings under `from __future__ import annotations`: resolve them in
    # the scope that applies the decorator too (a class defined in a function body).
    caller = inspect.currentframe()
    scope = dict(caller.f_back.f_locals) if caller is not None and caller.f_back is not None else {}
    del caller

    def decorate(func: ExecuteFunction[P]) -> type[TaskExecutor[P]]:
        params_type = params or _first_parameter_type(func, scope)
        call: Callable[..., Any] = func  # which of the two forms is known at run time only
        if inspect.iscoroutinefunction(func):

            async def run_async(self: TaskExecutor[Any], task: Task[Any], progress: Progress) -> Any:
                return await call(task.params, progress)

            run: Callable[..., Any] = run_async
        else:

            def run_blocking(self: TaskExecutor[Any], task: Task[Any], progress: SyncProgress) -> Any:
                return call(task.params, progress)

            run = run_blocking
        namespace: dict[str, Any] = {
            "name": name,
            "title": title,
            "description": description or inspect.cleandoc(func.__doc__ or "").split("\n\n")[0],
            "Params": params_type,
            "steps": tuple(steps),
            "timeout_ms": timeout_ms,
            "max_retries": max_retries,
            "execute": run,
            "__doc__": func.__doc__,
            "__module__": func.__module__,
            "__qualname__": getattr(func, "__qualname__", name),
        }
        return type(getattr(func, "__name__", name), (TaskExecutor,), namespace)

    return decorate


def _first_parameter_type(func: Callable[..., Any], scope: dict[str, Any]) -> type[msgspec.Struct]:
    parameters = list(inspect.signature(func).parameters)
    if len(parameters) != 2:
        raise ExecutorRegistrationError(
            f"{getattr(func, '__qualname__', func)!r} must take (params, progress): it takes {parameters}"
        )
    try:
        hints = typing.get_type_hints(func, localns=scope)
    except NameError as exc:
        raise ExecutorRegistrationError(
            f"Cannot resolve the params type of {func.__qualname__} ({exc}): pass it as @executor(..., params=...)"
        ) from None
    found = hints.get(parameters[0], NoParams)
    if not (isinstance(found, type) and issubclass(found, msgspec.Struct)):
        raise ExecutorRegistrationError(
            f"The first parameter of {func.__qualname__} must be annotated with a TaskParams subclass"
        )
    return found


def _shadowed(module: str) -> str:
    """A hint when the entry point's top-level package is not the installed one: a folder
    of the same name in the working directory (say a project's own ``executors/``) comes
    first on ``sys.path`` and hides the package that declared the entry point."""
    import importlib.util
    from pathlib import Path

    top = module.partition(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return ""
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    if not locations or not Path(locations[0]).resolve().is_relative_to(Path.cwd().resolve()):
        return ""
    return (
        f". A package named {top!r} in the current directory ({locations[0]}) hides the installed one: "
        "run from another directory, or rename your package"
    )


class ExecutorRegistry:
    """Executors by name; refuses duplicates and half-defined classes."""

    def __init__(self) -> None:
        self._executors: dict[str, TaskExecutor[Any, Any]] = {}

    def register(self, executor: TaskExecutor[Any, Any], *, origin: str = "code") -> None:
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

    def get(self, name: str) -> TaskExecutor[Any, Any] | None:
        return self._executors.get(name)

    def names(self) -> list[str]:
        return list(self._executors)

    def only(self, names: Iterable[str]) -> ExecutorRegistry:
        """The registry of these executors only (the same instances): what a worker started
        with ``--executors`` runs. `ExecutorRegistrationError` names any that is not registered."""
        wanted = list(dict.fromkeys(names))
        unknown = [name for name in wanted if name not in self._executors]
        if unknown:
            raise ExecutorRegistrationError(
                f"--executors / WORKER_EXECUTORS names {', '.join(map(repr, unknown))}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not registered (registered: {', '.join(self.names())})"
            )
        subset = ExecutorRegistry()
        subset._executors = {name: self._executors[name] for name in wanted}
        return subset

    def __iter__(self) -> Iterator[TaskExecutor[Any, Any]]:
        return iter(self._executors.values())

    def __len__(self) -> int:
        return len(self._executors)

    @classmethod
    def build(
        cls,
        executors: Iterable[type[TaskExecutor[Any, Any]] | TaskExecutor[Any, Any]] = (),
        *,
        load_entry_points: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> ExecutorRegistry:
        """Entry-point executors first (as installed packages declare them), then `executors`."""
        registry = cls()
        if load_entry_points:
            from importlib.metadata import entry_points  # costs ~40 ms to import: only when used

            for ep in entry_points(group=ENTRY_POINT_GROUP):
                try:
                    loaded = ep.load()
                except Exception as exc:
                    missing = isinstance(exc, ModuleNotFoundError | AttributeError)
                    hint = _shadowed(ep.module) if missing else ""
                    raise ExecutorRegistrationError(
                        f"Cannot load executor entry point {ep.name!r} ({ep.value}): {exc}{hint}"
                    ) from exc
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

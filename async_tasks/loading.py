"""What ``--app module:attribute`` names, for ``async-tasks serve`` and ``async-tasks worker``.

The module is imported as uvicorn imports an app: the current directory comes first
on ``sys.path``, so ``async-tasks worker --app poc_executors:EXECUTORS`` finds
``./poc_executors.py``. The attribute is one of:

- executors: a `TaskExecutor` class (``@executor`` functions are classes), an instance,
  or a list (any iterable) of them; they are registered beside the installed ones;
- a `TaskSystem` (its executors, settings and backend);
- an app: a Litestar app with `AsyncTasksPlugin`, or a `TasksApp` (`async_tasks.web.asgi`);
- a factory: a function taking no arguments that returns one of the above (called once).

Anything else, a module that does not import, or a factory that raises, is a
`SettingsError` of one line naming ``--app`` and what it takes.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from async_tasks.errors import SettingsError
from async_tasks.executor import TaskExecutor
from async_tasks.system import TaskSystem

if TYPE_CHECKING:
    from async_tasks.web.plugin import AsyncTasksPlugin

#: What ``--app`` takes, for the one-line refusals.
EXPECTED = (
    "executors (a TaskExecutor class or a list of them), a TaskSystem, a Litestar app with AsyncTasksPlugin, "
    "or a function returning one of these"
)


class AppTarget(NamedTuple):
    """What ``--app`` named, by kind: exactly one of `executors`, `system` or `app` is set."""

    spec: str
    executors: list[Any] | None = None
    system: TaskSystem | None = None
    #: An ASGI app that serves the task system (a Litestar app with `AsyncTasksPlugin`).
    app: Any = None

    @property
    def task_system(self) -> TaskSystem | None:
        """The engine the target carries (a system, or an app's), if any."""
        if self.system is not None:
            return self.system
        return system_of_app(self.app) if self.app is not None else None


def load_target(spec: str) -> AppTarget:
    """Import `spec` (``module:attribute``, ``attribute`` may be dotted) from the current
    directory and say what it is; a factory is called once. `SettingsError` otherwise."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SettingsError(f"--app takes module:attribute (for example poc_executors:EXECUTORS), got {spec!r}")
    found = _import(spec, module_name, attribute)
    target = _classify(spec, found)
    if target is not None:
        return target
    if callable(found):
        try:
            made = found()
        except Exception as exc:
            raise SettingsError(f"--app {spec}: calling {attribute}() failed: {_one_line(exc)}") from None
        target = _classify(spec, made)
        if target is not None:
            return target
        raise SettingsError(f"--app {spec}: {attribute}() returned {_kind(made)}; expected {EXPECTED}")
    raise SettingsError(f"--app {spec} is {_kind(found)}; expected {EXPECTED}")


def system_of_app(app: Any) -> TaskSystem | None:
    """The `TaskSystem` an app serves (a Litestar app's `AsyncTasksPlugin`, a `TasksApp`), or None."""
    plugin = plugin_of_app(app)
    return plugin.system if plugin is not None else None


def plugin_of_app(app: Any) -> AsyncTasksPlugin | None:
    """The `AsyncTasksPlugin` of an app (a Litestar app, or the one a `TasksApp` wraps), or None."""
    if "litestar" not in sys.modules:
        return None
    from litestar import Litestar

    from async_tasks.web.plugin import AsyncTasksPlugin

    if not isinstance(app, Litestar):
        app = getattr(app, "app", None)  # a TasksApp
        if not isinstance(app, Litestar):
            return None
    try:
        return app.plugins.get(AsyncTasksPlugin)
    except KeyError:
        return None


def _import(spec: str, module_name: str, attribute: str) -> Any:
    # As uvicorn does (its --app-dir defaults to "."): the current directory first.
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise SettingsError(
                f"--app {spec}: no module named {exc.name!r} in {here} or on the Python path "
                "(run the command from the folder that holds it)"
            ) from None
        raise SettingsError(f"--app {spec}: importing {module_name} failed: {_one_line(exc)}") from None
    except Exception as exc:
        raise SettingsError(f"--app {spec}: importing {module_name} failed: {_one_line(exc)}") from None
    found: Any = module
    for part in attribute.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise SettingsError(f"--app {spec}: module {module_name} has no attribute {attribute!r}") from None
    return found


def _classify(spec: str, found: Any) -> AppTarget | None:
    if isinstance(found, TaskSystem):
        return AppTarget(spec, system=found)
    if _is_executor(found):
        return AppTarget(spec, executors=[found])
    if getattr(found, "plugins", None) is not None or getattr(found, "task_system", None) is not None:
        if system_of_app(found) is not None:
            return AppTarget(spec, app=found)
        if "litestar" in sys.modules:
            from litestar import Litestar

            if isinstance(found, Litestar):
                raise SettingsError(
                    f"--app {spec}: this Litestar app has no AsyncTasksPlugin "
                    "(add plugins=[AsyncTasksPlugin(...)], or name its executors instead)"
                )
    if isinstance(found, Iterable) and not isinstance(found, str | bytes | dict):
        items = list(found)
        bad = [item for item in items if not _is_executor(item)]
        if items and not bad:
            return AppTarget(spec, executors=items)
        if bad and items:
            raise SettingsError(f"--app {spec}: the list holds {_kind(bad[0])}, not an executor; expected {EXPECTED}")
    return None


def _is_executor(found: Any) -> bool:
    return (isinstance(found, type) and issubclass(found, TaskExecutor)) or isinstance(found, TaskExecutor)


def _kind(value: Any) -> str:
    if isinstance(value, type):
        return f"the class {value.__qualname__}"
    if value is None:
        return "None"
    if isinstance(value, list | tuple | set) and not value:
        return "an empty list"
    name = type(value).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _one_line(exc: BaseException) -> str:
    """``Type: message (file.py, line N)``: where in the user's code it was raised."""
    text = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    frames = traceback.extract_tb(exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"SyntaxError: {exc.msg} ({os.path.basename(exc.filename)}, line {exc.lineno})"
    if frames:
        last = frames[-1]
        text += f" ({os.path.basename(last.filename)}, line {last.lineno})"
    return " ".join(text.split())

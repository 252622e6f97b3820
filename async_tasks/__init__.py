"""async-tasks: background tasks with step progress, per-session isolation and
bounded memory, for live demos and proofs of concept.

The menu (imported lazily, so ``import async_tasks`` and the CLI stay light and the
engine never pulls in the web framework):

- the engine: `TaskSystem`;
- writing executors: `TaskExecutor`, `executor`, `TaskParams`, `Progress`,
  `SyncProgress`, `Step`, `Task`, `TaskStatus`, `InvalidParams`;
- the web door: `AsyncTasksPlugin`, `create_app`, `EXCEPTION_HANDLERS`, `logging_config`
  (Litestar), `TasksApp` (mounted in FastAPI, Starlette, Django).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Imported now, not lazily: the decorator `executor` shares its name with the module
# `async_tasks.executor`, which would otherwise shadow it once anything imports it.
from async_tasks.executor import TaskExecutor, TaskParams, executor

__version__ = "0.1.0"

if TYPE_CHECKING:
    from async_tasks.errors import InvalidParams
    from async_tasks.progress import Progress, Step, SyncProgress
    from async_tasks.system import TaskSystem
    from async_tasks.task import Task, TaskStatus
    from async_tasks.web.app import create_app, logging_config
    from async_tasks.web.asgi import TasksApp
    from async_tasks.web.errors import EXCEPTION_HANDLERS
    from async_tasks.web.plugin import AsyncTasksPlugin

_LAZY = {
    "TaskSystem": "async_tasks.system",
    "Progress": "async_tasks.progress",
    "SyncProgress": "async_tasks.progress",
    "Step": "async_tasks.progress",
    "Task": "async_tasks.task",
    "TaskStatus": "async_tasks.task",
    "InvalidParams": "async_tasks.errors",
    "AsyncTasksPlugin": "async_tasks.web.plugin",
    "create_app": "async_tasks.web.app",
    "logging_config": "async_tasks.web.app",
    "TasksApp": "async_tasks.web.asgi",
    "EXCEPTION_HANDLERS": "async_tasks.web.errors",
}

__all__ = [
    "EXCEPTION_HANDLERS",
    "AsyncTasksPlugin",
    "InvalidParams",
    "Progress",
    "Step",
    "SyncProgress",
    "Task",
    "TaskExecutor",
    "TaskParams",
    "TaskStatus",
    "TaskSystem",
    "TasksApp",
    "__version__",
    "create_app",
    "executor",
    "logging_config",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'async_tasks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

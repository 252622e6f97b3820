"""async-tasks: in-process background tasks with step progress, per-session
isolation and bounded memory, for live demos and proofs of concept."""

from __future__ import annotations

__version__ = "0.1.0"

from async_tasks.errors import InvalidParams
from async_tasks.executor import Step, TaskExecutor, TaskParams
from async_tasks.manager import TaskManager
from async_tasks.plugin import AsyncTasksPlugin
from async_tasks.task import Task, TaskStatus

__all__ = [
    "AsyncTasksPlugin",
    "InvalidParams",
    "Step",
    "Task",
    "TaskExecutor",
    "TaskManager",
    "TaskParams",
    "TaskStatus",
    "__version__",
]

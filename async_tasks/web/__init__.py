"""The web door onto the task system: a Litestar plugin, the app factory, the HTTP API,
push streams and the dashboard. ``uvicorn async_tasks.web:create_app --factory``.

`TasksApp` (`async_tasks.web.asgi`) mounts the same app in FastAPI, Starlette or
Django; `logging_config` gives an app of your own the server's log format."""

from __future__ import annotations

from async_tasks.web.app import create_app, logging_config
from async_tasks.web.asgi import TasksApp
from async_tasks.web.errors import EXCEPTION_HANDLERS
from async_tasks.web.plugin import AsyncTasksPlugin

__all__ = ["EXCEPTION_HANDLERS", "AsyncTasksPlugin", "TasksApp", "create_app", "logging_config"]

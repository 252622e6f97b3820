"""The web door onto the task system: a Litestar plugin, the app factory, the HTTP API,
push streams and the dashboard. ``uvicorn async_tasks.web:create_app --factory``."""

from __future__ import annotations

from async_tasks.web.app import create_app
from async_tasks.web.errors import EXCEPTION_HANDLERS
from async_tasks.web.plugin import AsyncTasksPlugin

__all__ = ["EXCEPTION_HANDLERS", "AsyncTasksPlugin", "create_app"]

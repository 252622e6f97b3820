"""The log context: which request, session and task the current code works for.

Context variables, set by whoever knows them (the HTTP middleware for a request, the
execution backend for a task attempt) and read by the log filter
(`async_tasks.logs.ContextFilter`), so every log line carries them without being
passed around. A task started from a request inherits the request's context (anyio
copies the context when it spawns), then `bind_task` binds the task's own fields.
"""

from __future__ import annotations

from contextvars import ContextVar

#: The id of the current request (or of the request that created the current task).
request_id_var: ContextVar[str | None] = ContextVar("async_tasks_request_id", default=None)
#: The session key of the current request or task (a keyed hash or random key, never an IP).
session_key_var: ContextVar[str | None] = ContextVar("async_tasks_session_key", default=None)
#: The id of the task whose code is running.
task_id_var: ContextVar[str | None] = ContextVar("async_tasks_task_id", default=None)
#: The executor of the task whose code is running.
executor_var: ContextVar[str | None] = ContextVar("async_tasks_executor", default=None)


def bind_task(task_id: str, session_key: str, executor: str, request_id: str | None) -> None:
    """Bind a task's log context in the current (task-local) context."""
    task_id_var.set(task_id)
    session_key_var.set(session_key)
    executor_var.set(executor)
    request_id_var.set(request_id)

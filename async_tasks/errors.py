"""Domain errors. The core raises these; `api/errors.py` maps them to HTTP.

Each carries a stable snake_case `code` (the contract's `error.code`), a message
meant for a person, and optional `details`.
"""

from __future__ import annotations

from typing import Any


class TaskSystemError(Exception):
    code = "task_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class TaskNotFound(TaskSystemError):
    code = "task_not_found"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"Task {task_id} was not found in this session.")
        self.task_id = task_id


class InvalidTransition(TaskSystemError):
    code = "invalid_transition"

    def __init__(self, task_id: str, current: str, action: str, hint: str | None = None) -> None:
        message = f"Cannot {action} task {task_id}: it is {current}."
        if hint:
            message = f"{message} {hint}"
        super().__init__(message, details={"status": current, "action": action})
        self.task_id = task_id
        self.current = current


class UnknownExecutor(TaskSystemError):
    code = "unknown_executor"

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"No executor named {name!r}. Known executors: {', '.join(sorted(known)) or 'none'}.",
            details={"executor": name, "known": sorted(known)},
        )


class InvalidParams(TaskSystemError):
    """Raised at the API edge or by `TaskExecutor.validate` for bad task parameters."""

    code = "invalid_params"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, details=[{"key": field, "message": message}] if field else None)
        self.field = field


class IdempotencyConflict(TaskSystemError):
    code = "idempotency_key_reused"


class IdempotentTaskRemoved(TaskSystemError):
    """An Idempotency-Key whose task is no longer kept: answering it with a new task would
    run the work twice, so it is refused (409) until the key's window ends."""

    code = "idempotency_task_removed"

    def __init__(self, key: str, task_id: str) -> None:
        super().__init__(
            f"This Idempotency-Key already created task {task_id}, which is no longer kept (it was deleted or "
            "cleaned up after it finished). Use a new key to create another task.",
            details={"idempotencyKey": key, "taskId": task_id},
        )


class QuotaExceeded(TaskSystemError):
    """A per-session limit was hit; `retry_after` is in seconds."""

    code = "quota_exceeded"

    def __init__(self, message: str, *, retry_after: float, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class RateLimited(QuotaExceeded):
    code = "rate_limited"


class CapacityExceeded(TaskSystemError):
    """A server-wide limit was hit (stored tasks, live sessions, open streams); no single
    session is at fault, so this is a 503 with `retry_after` seconds."""

    code = "capacity_exceeded"

    def __init__(self, message: str, *, retry_after: float, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class TaskTooLarge(TaskSystemError):
    """A task's params, metadata and tags encode to more bytes than allowed (413)."""

    code = "task_too_large"


class ShuttingDown(TaskSystemError):
    code = "shutting_down"

    def __init__(self) -> None:
        super().__init__("The server is shutting down and accepts no new tasks.")


class StoreUnavailable(TaskSystemError):
    """The shared task store cannot be reached or refuses work for now (Redis restarting,
    out of memory, a failover); the request may be retried after `retry_after` seconds."""

    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: float = 2, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class ExecutorRegistrationError(Exception):
    """Misconfigured executors; raised at start-up, never at request time."""


class SettingsError(Exception):
    """A bad configuration value. Its message is one line naming the variable."""

"""`TaskManager`: the task system's service API, used by the HTTP handlers and by
application code that receives it by dependency injection as ``task_manager``.

It validates input against the executor, applies the per-session quotas and
idempotency, and delegates state to the store and execution to the runner.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from async_tasks.errors import (
    IdempotencyConflict,
    InvalidParams,
    InvalidTransition,
    QuotaExceeded,
    RateLimited,
    ShuttingDown,
    UnknownExecutor,
)
from async_tasks.task import Task, TaskStatus

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection

    from async_tasks.cleanup import Cleaner
    from async_tasks.executor import ExecutorRegistry, TaskExecutor
    from async_tasks.runner import Runner
    from async_tasks.sessions import SessionResolver
    from async_tasks.settings import Settings
    from async_tasks.store import TaskStore

SESSION_STATE_KEY = "async_tasks_session_key"
REQUEST_ID_STATE_KEY = "async_tasks_request_id"


class TaskManager:
    def __init__(
        self,
        *,
        settings: Settings,
        store: TaskStore,
        runner: Runner,
        executors: ExecutorRegistry,
        sessions: SessionResolver,
        cleaner: Cleaner,
        path: str = "/api/v1",
    ) -> None:
        self.settings = settings
        self.path = path
        self.store = store
        self.runner = runner
        self.executors = executors
        self.sessions = sessions
        self.cleaner = cleaner
        self._buckets: dict[str, tuple[float, float]] = {}

    # -- sessions ---------------------------------------------------------------

    @staticmethod
    def session_key_of(connection: ASGIConnection[Any, Any, Any, Any] | str) -> str:
        """The session key of a request (resolved by the session middleware) or a key."""
        if isinstance(connection, str):
            return connection
        key = connection.scope.get("state", {}).get(SESSION_STATE_KEY)
        if not key:
            raise RuntimeError(
                "No task session on this request: add AsyncTasksPlugin to the app so its session "
                "middleware runs, or pass a session key string."
            )
        return str(key)

    # -- create -----------------------------------------------------------------

    def executor(self, name: str) -> TaskExecutor[Any]:
        executor = self.executors.get(name)
        if executor is None:
            raise UnknownExecutor(name, self.executors.names())
        return executor

    async def create_task(self, request: ASGIConnection[Any, Any, Any, Any] | str, **options: Any) -> Task:
        """Create a task in the caller's session and (by default) start it.

        Options: `executor` (required), `params` (a mapping validated against the
        executor's `Params`, or a `Params` instance), `name`, `description`,
        `metadata`, `tags`, `start` (default True), `priority`, `timeout_ms`,
        `max_retries`, `idempotency_key`. Returns at once; the task runs in the
        background.
        """
        task, _ = await self.create_or_replay(request, **options)
        return task

    async def create_or_replay(
        self,
        request: ASGIConnection[Any, Any, Any, Any] | str,
        *,
        executor: str,
        params: Any = None,
        name: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        start: bool = True,
        priority: int = 0,
        timeout_ms: int | None = None,
        max_retries: int | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[Task, bool]:
        """`create_task`, also telling whether an Idempotency-Key replayed an earlier task."""
        session_key = self.session_key_of(request)
        request_id = None if isinstance(request, str) else request.scope.get("state", {}).get(REQUEST_ID_STATE_KEY)
        impl = self.executor(executor)
        cls = type(impl)
        if not self.runner.accepting:
            raise ShuttingDown()
        if params is None or isinstance(params, Mapping):
            try:
                params = msgspec.convert(dict(params or {}), cls.Params)
            except msgspec.ValidationError as exc:
                raise _invalid_params(exc) from None
        elif not isinstance(params, cls.Params):
            raise InvalidParams(f"params must be a {cls.Params.__name__} or a mapping", field="params")
        timeout_ms = timeout_ms if timeout_ms is not None else cls.timeout_ms
        if timeout_ms is not None and not 1 <= timeout_ms <= self.settings.max_task_timeout_ms:
            raise InvalidParams(f"timeoutMs must be from 1 to {self.settings.max_task_timeout_ms}", field="timeoutMs")
        max_retries = max_retries if max_retries is not None else cls.max_retries
        if not 0 <= max_retries <= self.settings.max_task_retries:
            raise InvalidParams(f"maxRetries must be from 0 to {self.settings.max_task_retries}", field="maxRetries")

        fingerprint = b""
        if idempotency_key is not None:
            fingerprint = hashlib.sha256(
                msgspec.json.encode([executor, params, name, description, metadata, tags, priority])
            ).digest()
            if (earlier := self._replay(session_key, idempotency_key, fingerprint)) is not None:
                return earlier, True
        self._check_quota(session_key)
        await impl.validate(params)
        # `validate` may await (a DNS lookup, a file check): a concurrent create may have used
        # this Idempotency-Key or filled the session's quota meanwhile.
        if idempotency_key is not None:
            if (earlier := self._replay(session_key, idempotency_key, fingerprint)) is not None:
                return earlier, True
        self._check_active(session_key)

        task = Task(
            id=str(uuid.uuid4()),
            session_key=session_key,
            executor=cls.name,
            name=name or cls.title or cls.name,
            description=description or "",
            params=params,
            metadata=dict(metadata or {}),
            tags=list(tags or ()),
            priority=priority,
            timeout_ms=timeout_ms,
            max_retries=max_retries,
            request_id=request_id,
        )
        self.store.add(task, idempotency=(idempotency_key, fingerprint) if idempotency_key else None)
        if start:
            self.runner.start(task)
        return task, False

    def _replay(self, session_key: str, idempotency_key: str, fingerprint: bytes) -> Task | None:
        """The task an earlier create with this key made in this session, if any."""
        session = self.store.session(session_key)
        if session is None or idempotency_key not in session.idempotency:
            return None
        task_id, seen = session.idempotency[idempotency_key]
        if seen != fingerprint:
            raise IdempotencyConflict(
                "This Idempotency-Key was already used with a different request in this session.",
                details={"idempotencyKey": idempotency_key, "taskId": task_id},
            )
        return session.tasks[task_id]

    def _check_active(self, session_key: str) -> None:
        session = self.store.session(session_key)
        active = session.active if session is not None else 0
        if active >= self.settings.max_active_tasks_per_session:
            raise QuotaExceeded(
                f"This session already has {active} active tasks (the limit is "
                f"{self.settings.max_active_tasks_per_session}). Wait for some to finish or cancel them.",
                retry_after=1,
                details={"limit": self.settings.max_active_tasks_per_session, "active": active},
            )

    def _check_quota(self, session_key: str) -> None:
        self._check_active(session_key)
        rate = self.settings.task_create_rate
        if rate <= 0:
            return
        burst = float(self.settings.task_create_burst)
        now = self.store.clock.monotonic()
        tokens, last = self._buckets.get(session_key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1:
            retry_after = (1 - tokens) / rate
            self._buckets[session_key] = (tokens, now)
            raise RateLimited(
                f"Too many tasks created too quickly (limit {rate:g} per second). Retry in {retry_after:.2f} s.",
                retry_after=retry_after,
                details={"ratePerSecond": rate, "burst": int(burst)},
            )
        self._buckets[session_key] = (tokens - 1, now)

    def prune_rate_buckets(self, *_: object) -> int:
        """Forget buckets that have refilled (called after every cleanup sweep)."""
        rate = self.settings.task_create_rate
        if rate <= 0:
            self._buckets.clear()
            return 0
        burst = float(self.settings.task_create_burst)
        now = self.store.clock.monotonic()
        full = [key for key, (tokens, last) in self._buckets.items() if tokens + (now - last) * rate >= burst]
        for key in full:
            del self._buckets[key]
        return len(full)

    # -- read -------------------------------------------------------------------

    def get_task(self, request: ASGIConnection[Any, Any, Any, Any] | str, task_id: str) -> Task:
        return self.store.get(self.session_key_of(request), task_id)

    def list_tasks(
        self,
        request: ASGIConnection[Any, Any, Any, Any] | str,
        *,
        status: TaskStatus | None = None,
        executor: str | None = None,
        tag: str | None = None,
        dead_letter: bool | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> tuple[list[Task], int]:
        """(page of tasks newest first, total matching)."""
        matching = list(
            self.store.query(
                self.session_key_of(request), status=status, executor=executor, tag=tag, dead_letter=dead_letter
            )
        )
        end = None if limit is None else offset + limit
        return matching[offset:end], len(matching)

    def stats(self, request: ASGIConnection[Any, Any, Any, Any] | str) -> dict[TaskStatus, int]:
        return self.store.counts(self.session_key_of(request))

    # -- control ----------------------------------------------------------------

    def start_task(self, request: ASGIConnection[Any, Any, Any, Any] | str, task_id: str) -> Task:
        task = self.get_task(request, task_id)
        self.runner.start(task)
        return task

    def cancel_task(self, request: ASGIConnection[Any, Any, Any, Any] | str, task_id: str) -> Task:
        task = self.get_task(request, task_id)
        self.runner.cancel(task)
        return task

    def retry_task(self, request: ASGIConnection[Any, Any, Any, Any] | str, task_id: str) -> Task:
        task = self.get_task(request, task_id)
        self.runner.retry(task)
        return task

    def delete_task(self, request: ASGIConnection[Any, Any, Any, Any] | str, task_id: str) -> None:
        task = self.get_task(request, task_id)
        if task.status is TaskStatus.RUNNING:
            raise InvalidTransition(task.id, task.status.value, "delete", "Cancel it first.")
        if task.status is TaskStatus.PENDING:
            self.runner.cancel(task, reason="deleted")
        self.runner.forget_id(task.id)
        self.store.remove(task)


def _invalid_params(exc: msgspec.ValidationError) -> InvalidParams:
    message = str(exc)
    field = "params"
    marker = " - at `$"
    if marker in message:
        message, path = message.split(marker, 1)
        field = "params" + path.rstrip("`")
    return InvalidParams(f"{message} (at {field})", field=field)

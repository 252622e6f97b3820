"""``/admin``: the operator's API across sessions (`async_tasks.admin`), on only with
ADMIN_API_KEYS.

Every route needs an admin key as ``Authorization: Bearer <key>`` (checked with the
other boundary checks, `async_tasks.web.security`; a guard here refuses any request
that did not pass there). Admin requests resolve no session (none is issued to them)
and the routes are not part of any session's API: a session's ``/tasks`` never shows
another session's tasks, whatever key it holds.

- ``GET /admin/sessions``: every session holding tasks, its task counts and when it
  was last active, the most recently active first (paged);
- ``GET /admin/tasks``: every session's tasks with the filters and paging of ``GET
  /tasks`` (plus ``sessionKey``), each with its session key; ``GET
  /admin/tasks/{id}``: one task with its history;
- ``POST /admin/tasks/cancel`` and ``/admin/tasks/retry``: by ``ids`` or a ``filter``
  (``{"filter": {"deadLetter": true}}`` retries the dead letter);
- ``GET /admin/workers``: the processes that run tasks; ``GET /admin/queues``: running
  and waiting tasks by executor.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec
from litestar import Controller, Request, Router, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import JSONBody, QueryParameter
from litestar.types import Scope

from async_tasks.admin import MAX_BULK, Admin, BulkResult
from async_tasks.errors import InvalidParams
from async_tasks.outlook import Outlook
from async_tasks.store.base import TaskFilter
from async_tasks.system import TaskSystem
from async_tasks.task import Task, TaskStatus
from async_tasks.web.api.body import strict_body
from async_tasks.web.api.schemas import Body, Response, TaskResponse, TaskSummary
from async_tasks.web.api.tasks import MAX_OFFSET, Cursor, TaskId
from async_tasks.web.errors import error_response, responses
from async_tasks.web.metrics import OPS_OPT_KEY
from async_tasks.web.security import ADMIN_PATH, ADMIN_STATE_KEY

#: The OpenAPI security of the admin routes: an admin key as a bearer token.
ADMIN_SECURITY_SCHEME = "adminKey"


class AdminSession(msgspec.Struct, rename="camel", kw_only=True):
    session_key: str
    total: int
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int
    #: When a task of the session was last created, changed or removed (epoch ms).
    last_active_at: int


class AdminSessionList(Response, kw_only=True):
    sessions: list[AdminSession]
    count: int
    total: int


class AdminTaskSummary(TaskSummary, kw_only=True):
    session_key: str
    attempts: int
    error: str | None
    dead_lettered: bool

    @classmethod
    def of(cls, task: Task, outlook: Outlook | None = None) -> AdminTaskSummary:
        """The task across sessions (`outlook` is not read: the admin view lists no estimates)."""
        return cls(
            id=task.id,
            name=task.name,
            executor=task.executor,
            status=task.status,
            progress=task.progress,
            created_at=task.created_at,
            completed_at=task.completed_at,
            current_step=task.current_step,
            session_key=task.session_key,
            attempts=task.attempts,
            error=task.error,
            dead_lettered=task.dead_lettered,
            scheduled_at=task.scheduled_at,
            waiting_reason=task.waiting_reason,
        )


class AdminTaskList(Response, kw_only=True):
    tasks: list[AdminTaskSummary]
    count: int
    total: int
    #: Pass as `cursor` for the next page (older tasks); null on the last page.
    next_cursor: str | None = None


class BulkFilter(Body):
    """Which tasks a bulk action takes (every given field must match); without `status`,
    the statuses the action applies to (cancel: pending and running; retry: failed and
    cancelled)."""

    status: TaskStatus | None = None
    executor: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    tag: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    dead_letter: bool | None = None
    session_key: Annotated[str, msgspec.Meta(max_length=200)] | None = None


TaskIdItem = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class BulkRequest(Body):
    """Name the tasks by `ids`, or by `filter` (at most `limit` of them, newest first)."""

    ids: Annotated[list[TaskIdItem], msgspec.Meta(max_length=MAX_BULK)] | None = None
    filter: BulkFilter | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_BULK)] = MAX_BULK


class BulkResponse(Response, kw_only=True):
    result: BulkResult


class AdminWorker(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    host: str
    pid: int
    executors: list[str]
    running: int
    concurrency: int
    started_at: int
    #: Since the worker last renewed its lease (ms); null for the process answering (memory backend).
    lease_age_ms: int | None


class AdminWorkerList(Response, kw_only=True):
    workers: list[AdminWorker]


class ExecutorQueue(msgspec.Struct, rename="camel", kw_only=True):
    executor: str
    running: int
    #: Tasks waiting for a slot, a worker or their time (queue depth).
    queued: int
    #: Live workers that run it (the memory backend: the server itself, 1); with 0, its tasks
    #: wait for a worker that runs it.
    workers: int


class AdminQueueList(Response, kw_only=True):
    queues: list[ExecutorQueue]


def admin_of(scope: Scope) -> str:
    """Who is calling the admin API (a key's name or fingerprint), as the boundary checked it."""
    return str(scope.get("state", {}).get(ADMIN_STATE_KEY))


def require_admin_key(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: only a request whose admin key the boundary accepted gets through."""
    if not connection.scope.get("state", {}).get(ADMIN_STATE_KEY):
        raise NotAuthorizedException("The admin API needs one of ADMIN_API_KEYS as 'Authorization: Bearer <key>'.")


def not_available(request: Request[Any, Any, Any], exc: NotImplementedError) -> Any:
    """What a backend cannot show yet: 501, in the contract's body."""
    return error_response(501, "not_implemented", str(exc) or "Not available on this backend.")


Limit = Annotated[int, QueryParameter(ge=1, le=1000)]
# Bounded as GET /tasks is: the stores' paging stops at 2**63.
Offset = Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)]


class AdminController(Controller):
    path = ADMIN_PATH
    tags = ["admin"]  # noqa: RUF012 (Litestar reads the class attribute)
    admin: ClassVar[Admin]

    @get("/sessions", summary="Every session holding tasks, most recently active first", responses=responses(400, 501))
    async def sessions(self, limit: Limit = 100, offset: Offset = 0) -> AdminSessionList:
        page = await self.admin.sessions(limit=limit, offset=offset)
        return AdminSessionList(
            sessions=[
                AdminSession(
                    session_key=s.key,
                    total=s.total,
                    pending=s.by_status[TaskStatus.PENDING],
                    running=s.by_status[TaskStatus.RUNNING],
                    completed=s.by_status[TaskStatus.COMPLETED],
                    failed=s.by_status[TaskStatus.FAILED],
                    cancelled=s.by_status[TaskStatus.CANCELLED],
                    last_active_at=s.last_active_ms,
                )
                for s in page.sessions
            ],
            count=len(page.sessions),
            total=page.total,
        )

    @get("/tasks", summary="Every session's tasks, newest first", responses=responses(400, 501))
    async def tasks(
        self,
        status: Annotated[TaskStatus | None, QueryParameter(description="Only tasks in this status.")] = None,
        executor: Annotated[str | None, QueryParameter(max_length=100)] = None,
        tag: Annotated[str | None, QueryParameter(max_length=64)] = None,
        dead_letter: Annotated[
            bool | None, QueryParameter(name="deadLetter", description="Only tasks that exhausted their retries.")
        ] = None,
        session: Annotated[
            str | None, QueryParameter(name="sessionKey", max_length=200, description="Only this session's tasks.")
        ] = None,
        limit: Limit = 100,
        offset: Offset = 0,
        cursor: Cursor = None,
    ) -> AdminTaskList:
        where = TaskFilter(status=status, executor=executor, tag=tag, dead_letter=dead_letter)
        page = await self.admin.tasks(where, session_key=session, limit=limit, offset=offset, cursor=cursor)
        return AdminTaskList(
            tasks=[AdminTaskSummary.of(t) for t in page.tasks],
            count=len(page.tasks),
            total=page.total,
            next_cursor=page.next_cursor,
        )

    @get("/tasks/{task_id:str}", summary="A task of any session, with its history", responses=responses(400, 404, 501))
    async def task(self, task_id: TaskId) -> TaskResponse:
        task = await self.admin.task(task_id)
        return TaskResponse(task=task, queue_position=await self.admin.system.queue_position(task))

    @post(
        "/tasks/cancel",
        status_code=200,
        summary="Cancel tasks of any session, by id or filter",
        responses=responses(400, 501),
    )
    async def cancel(self, request: Request[Any, Any, Any], data: JSONBody[BulkRequest]) -> BulkResponse:
        data = await strict_body(request, data)
        ids, where, session_key = _selection(data)
        result = await self.admin.cancel(
            actor=admin_of(request.scope), ids=ids, where=where, session_key=session_key, limit=data.limit
        )
        return BulkResponse(result=result)

    @post(
        "/tasks/retry",
        status_code=200,
        summary="Retry failed or cancelled tasks of any session, by id or filter",
        responses=responses(400, 501, 503),
    )
    async def retry(self, request: Request[Any, Any, Any], data: JSONBody[BulkRequest]) -> BulkResponse:
        data = await strict_body(request, data)
        ids, where, session_key = _selection(data)
        result = await self.admin.retry(
            actor=admin_of(request.scope), ids=ids, where=where, session_key=session_key, limit=data.limit
        )
        return BulkResponse(result=result)

    @get("/workers", summary="The processes that run tasks, and what they run", responses=responses(501))
    async def workers(self) -> AdminWorkerList:
        found = await self.admin.workers()
        return AdminWorkerList(
            workers=[
                AdminWorker(
                    id=w.id,
                    host=w.host,
                    pid=w.pid,
                    executors=w.executors,
                    running=w.running,
                    concurrency=w.concurrency,
                    started_at=w.started_at,
                    lease_age_ms=w.lease_age_ms,
                )
                for w in found
            ]
        )

    @get("/queues", summary="Running and waiting tasks by executor (queue depth)", responses=responses(501))
    async def queues(self) -> AdminQueueList:
        loads = await self.admin.queues()
        return AdminQueueList(
            queues=[
                ExecutorQueue(executor=name, running=load.running, queued=load.queued, workers=load.workers or 0)
                for name, load in sorted(loads.items())
            ]
        )


def _selection(data: BulkRequest) -> tuple[list[str] | None, TaskFilter | None, str | None]:
    if (data.ids is None) == (data.filter is None):
        raise InvalidParams("Name the tasks with either ids or filter (one of the two).", field="ids")
    if data.filter is None:
        return data.ids, None, None
    f = data.filter
    return None, TaskFilter(status=f.status, executor=f.executor, tag=f.tag, dead_letter=f.dead_letter), f.session_key


def admin_router(system: TaskSystem, **api: Any) -> Router:
    """The admin routes over `system`; `api`: the API router's own settings (its ``path``,
    error handlers, body limit), as `AsyncTasksPlugin.routers` mounts it beside that router."""
    controller = type("AdminController", (AdminController,), {"admin": Admin(system)})
    settings: dict[str, Any] = {"path": "/", **api}
    settings["exception_handlers"] = {**settings.get("exception_handlers", {}), NotImplementedError: not_available}
    return Router(
        route_handlers=[controller],
        guards=[require_admin_key],
        # No session for admin requests (none is issued), and none of the request metrics.
        opt={OPS_OPT_KEY: True},
        security=[{ADMIN_SECURITY_SCHEME: []}],
        **settings,
    )

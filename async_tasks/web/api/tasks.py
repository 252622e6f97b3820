"""``/tasks``: create, list, inspect, control and delete the session's tasks.

The polling routes (status, list) and the demo creates are the server's hot paths:
they take the engine from their controller and the session from the scope (no
per-request dependency injection), and answer with `encoded`: the body encoded once
by msgspec and sent as it is. Users' own handlers get ``task_system`` and
``session_key`` by injection as before.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, cast

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.types import Scope

from async_tasks.system import TaskSystem
from async_tasks.task import Task, TaskStatus
from async_tasks.web.api.body import strict_body
from async_tasks.web.api.openapi import OptionalBodyOperation
from async_tasks.web.api.schemas import (
    CleanupOptions,
    CleanupRunResponse,
    CleanupStatus,
    CleanupStatusResponse,
    CreateTaskRequest,
    SessionMetricsResponse,
    StartTaskRequest,
    Stats,
    StatsResponse,
    TaskListResponse,
    TaskResponse,
    TaskStatusResponse,
)
from async_tasks.web.errors import replay_responses, responses
from async_tasks.web.middleware import client_of, session_key_of
from async_tasks.web.responses import encoded
from async_tasks.web.summaries import EncodedSummaries, EncodedTaskList

#: The largest ``?offset=``: far past any session's tasks (MAX_TASKS holds them all), and
#: far below what the stores' paging takes (``islice`` and Redis ranges stop at 2**63).
MAX_OFFSET = 1_000_000_000

TaskId = Annotated[str, PathParameter(max_length=100, description="The task id (uuid4).")]
Cursor = Annotated[
    str | None,
    QueryParameter(
        max_length=20, pattern=r"^[0-9]+$", description="Where a page's `nextCursor` said the next one starts."
    ),
]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        max_length=200,
        min_length=1,
        description="Repeat a create safely: the same key in the same session returns the same task.",
    ),
]


async def task_response(system: TaskSystem, task: Task) -> TaskResponse:
    outlook = (await system.outlook(task.session_key, [task])).get(task.id)
    if outlook is None:
        return TaskResponse(task=task)
    return TaskResponse(task=task, queue_position=outlook.queue_position, eta=outlook.eta)


class TaskController(Controller):
    path = "/tasks"
    tags = ["tasks"]  # noqa: RUF012 (Litestar reads the class attribute)
    #: The engine, for the hot routes (set by `task_controller`).
    system: ClassVar[TaskSystem]
    #: Finished tasks' list items, encoded once (set by `task_controller`).
    summaries: ClassVar[EncodedSummaries]

    @post(
        "/",
        status_code=201,
        responses={**responses(400, 413, 422, 429, 503), **replay_responses(TaskResponse)},
        summary="Create a task (pending unless start is true)",
    )
    async def create_task(
        self,
        request: Request[Any, Any, Any],
        task_system: NamedDependency[TaskSystem],
        session_key: NamedDependency[str],
        data: JSONBody[CreateTaskRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[TaskResponse]:
        data = await strict_body(request, data)
        task, replayed = await task_system.create_or_replay(
            session_key,
            executor=data.executor,
            params=data.params,
            options=data.options(),
            idempotency_key=idempotency_key,
            client=client_of(request.scope),
        )
        return Response(
            await task_response(task_system, task),
            status_code=200 if replayed else 201,
            headers={"Idempotent-Replayed": "true"} if replayed else None,
        )

    @get("/", summary="List the session's tasks, newest first", responses=responses(400, 503))
    async def list_tasks(
        self,
        scope: Scope,
        status: Annotated[TaskStatus | None, QueryParameter(description="Only tasks in this status.")] = None,
        executor: Annotated[str | None, QueryParameter(max_length=100)] = None,
        tag: Annotated[str | None, QueryParameter(max_length=64)] = None,
        dead_letter: Annotated[
            bool | None, QueryParameter(name="deadLetter", description="Only tasks that exhausted their retries.")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, QueryParameter(ge=0, le=MAX_OFFSET)] = 0,
        cursor: Cursor = None,
    ) -> Response[TaskListResponse]:
        session_key = session_key_of(scope)
        tasks, total, next_cursor = await self.system.list_tasks(
            session_key,
            status=status,
            executor=executor,
            tag=tag,
            dead_letter=dead_letter,
            limit=limit,
            offset=offset,
            cursor=cursor,
        )
        summaries = self.summaries.page(tasks, await self.system.outlook(session_key, tasks))
        page = EncodedTaskList(tasks=summaries, count=len(tasks), total=total, next_cursor=next_cursor)
        return cast("Response[TaskListResponse]", encoded(page))

    @get("/stats", summary="Per-status counts of the session's tasks", responses=responses(503))
    async def stats(self, task_system: NamedDependency[TaskSystem], session_key: NamedDependency[str]) -> StatsResponse:
        counts = await task_system.stats(session_key)
        by_status = counts.by_status
        return StatsResponse(
            stats=Stats(
                total=counts.total,
                pending=by_status[TaskStatus.PENDING],
                running=by_status[TaskStatus.RUNNING],
                completed=by_status[TaskStatus.COMPLETED],
                failed=by_status[TaskStatus.FAILED],
                cancelled=by_status[TaskStatus.CANCELLED],
                average_duration_ms=round(counts.average_duration_ms, 3),
            )
        )

    @get(
        "/metrics",
        summary="The session's task count and average processing time (Task Processor shape)",
        responses=responses(503),
    )
    async def session_metrics(
        self, task_system: NamedDependency[TaskSystem], session_key: NamedDependency[str]
    ) -> SessionMetricsResponse:
        counts = await task_system.stats(session_key)
        return SessionMetricsResponse(
            total_tasks=counts.total,
            completed_tasks=counts.by_status[TaskStatus.COMPLETED],
            average_processing_time_ms=round(counts.average_duration_ms, 3),
        )

    @get("/cleanup/status", summary="The cleaner's state and retention options")
    async def cleanup_status(self, task_system: NamedDependency[TaskSystem]) -> CleanupStatusResponse:
        cleaner = task_system.cleaner
        settings = task_system.settings
        return CleanupStatusResponse(
            status=CleanupStatus(
                is_running=cleaner.is_running,
                is_active=cleaner.is_active,
                options=CleanupOptions(
                    max_completed_tasks=settings.max_completed_tasks,
                    max_failed_tasks=settings.max_failed_tasks,
                    max_cancelled_tasks=settings.max_cancelled_tasks,
                    cleanup_interval=settings.task_cleanup_interval,
                ),
                last_run=cleaner.last_run or "idle",
            )
        )

    @post(
        "/cleanup/run",
        status_code=200,
        summary="Apply retention to the session's finished tasks now",
        responses=responses(503),
    )
    async def cleanup_run(
        self, task_system: NamedDependency[TaskSystem], session_key: NamedDependency[str]
    ) -> CleanupRunResponse:
        return CleanupRunResponse(result=await task_system.run_cleanup(session_key))

    @get("/{task_id:str}", summary="A task with its history", responses=responses(400, 404, 503))
    async def get_task(
        self, task_system: NamedDependency[TaskSystem], session_key: NamedDependency[str], task_id: TaskId
    ) -> TaskResponse:
        return await task_response(task_system, await task_system.get_task(session_key, task_id, decode=False))

    @get(
        "/{task_id:str}/status",
        summary="Status and step progress (the polling endpoint)",
        responses=responses(400, 404, 503),
    )
    async def get_status(self, scope: Scope, task_id: TaskId) -> Response[TaskStatusResponse]:
        task = await self.system.get_task(session_key_of(scope), task_id, decode=False)
        outlook = None
        if task.status in (TaskStatus.PENDING, TaskStatus.RUNNING):
            outlook = (await self.system.outlook(task.session_key, [task])).get(task.id)
        return encoded(
            TaskStatusResponse(
                success=True,
                status=task.status,
                progress=task.progress,
                current_step=task.current_step,
                current_step_description=task.current_step_description,
                started_at=task.started_at,
                completed_at=task.completed_at,
                error=task.error,
                scheduled_at=task.scheduled_at,
                waiting_reason=task.waiting_reason,
                queue_position=None if outlook is None else outlook.queue_position,
                eta=None if outlook is None else outlook.eta,
            )
        )

    @post(
        "/{task_id:str}/start",
        status_code=200,
        summary="Start a pending task (now, or at startAt)",
        responses=responses(400, 404, 409, 503),
        operation_class=OptionalBodyOperation,
    )
    async def start_task(
        self,
        request: Request[Any, Any, Any],
        task_system: NamedDependency[TaskSystem],
        session_key: NamedDependency[str],
        task_id: TaskId,
        data: JSONBody[StartTaskRequest | None] = None,
    ) -> TaskResponse:
        start_at = None
        if data is not None:
            start_at = (await strict_body(request, data)).start_at
        started = await task_system.start_task(session_key, task_id, start_at=start_at, decode=False)
        return await task_response(task_system, started)

    @post(
        "/{task_id:str}/cancel",
        status_code=200,
        summary="Cancel a pending or running task",
        responses=responses(400, 404, 409, 503),
    )
    async def cancel_task(
        self, task_system: NamedDependency[TaskSystem], session_key: NamedDependency[str], task_id: TaskId
    ) -> TaskResponse:
        return await task_response(task_system, await task_system.cancel_task(session_key, task_id, decode=False))

    @post(
        "/{task_id:str}/retry",
        status_code=200,
        summary="Run a failed or cancelled task again",
        responses=responses(400, 404, 409, 503),
    )
    async def retry_task(
        self, task_system: NamedDependency[TaskSystem], session_key: NamedDependency[str], task_id: TaskId
    ) -> TaskResponse:
        return await task_response(task_system, await task_system.retry_task(session_key, task_id, decode=False))

    @delete(
        "/{task_id:str}",
        status_code=204,
        summary="Delete a task that is not running",
        responses=responses(400, 404, 409, 503),
    )
    async def delete_task(
        self, task_system: NamedDependency[TaskSystem], session_key: NamedDependency[str], task_id: TaskId
    ) -> None:
        await task_system.delete_task(session_key, task_id)


def task_controller(system: TaskSystem) -> type[TaskController]:
    """`TaskController` serving `system`."""
    return type("TaskController", (TaskController,), {"system": system, "summaries": EncodedSummaries()})

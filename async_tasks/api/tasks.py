"""``/tasks``: create, list, inspect, control and delete the session's tasks."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter

from async_tasks.api.body import strict_body
from async_tasks.api.errors import replay_responses, responses
from async_tasks.api.schemas import (
    CleanupOptions,
    CleanupRunResponse,
    CleanupStatus,
    CleanupStatusResponse,
    CreateTaskRequest,
    SessionMetricsResponse,
    Stats,
    StatsResponse,
    TaskListResponse,
    TaskResponse,
    TaskStatusResponse,
    TaskSummary,
)
from async_tasks.manager import TaskManager
from async_tasks.task import TaskStatus

TaskId = Annotated[str, PathParameter(max_length=100, description="The task id (uuid4).")]
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        max_length=200,
        min_length=1,
        description="Repeat a create safely: the same key in the same session returns the same task.",
    ),
]


def task_response(manager: TaskManager, task: Any) -> TaskResponse:
    return TaskResponse(task=task, queue_position=manager.runner.queue_position(task))


class TaskController(Controller):
    path = "/tasks"
    tags = ["tasks"]  # noqa: RUF012 (Litestar reads the class attribute)

    @post(
        "/",
        status_code=201,
        responses={**responses(400, 413, 422, 429, 503), **replay_responses(TaskResponse)},
        summary="Create a task (pending unless start is true)",
    )
    async def create_task(
        self,
        request: Request[Any, Any, Any],
        task_manager: NamedDependency[TaskManager],
        data: JSONBody[CreateTaskRequest],
        idempotency_key: IdempotencyKey = None,
    ) -> Response[TaskResponse]:
        data = await strict_body(request, data)
        task, replayed = await task_manager.create_or_replay(
            request,
            executor=data.executor,
            params=data.params,
            name=data.name,
            description=data.description,
            metadata=data.metadata,
            tags=data.tags,
            start=data.start,
            priority=data.priority,
            timeout_ms=data.timeout_ms,
            max_retries=data.max_retries,
            idempotency_key=idempotency_key,
        )
        return Response(
            task_response(task_manager, task),
            status_code=200 if replayed else 201,
            headers={"Idempotent-Replayed": "true"} if replayed else None,
        )

    @get("/", summary="List the session's tasks, newest first", responses=responses(400))
    async def list_tasks(
        self,
        request: Request[Any, Any, Any],
        task_manager: NamedDependency[TaskManager],
        status: Annotated[TaskStatus | None, QueryParameter(description="Only tasks in this status.")] = None,
        executor: Annotated[str | None, QueryParameter(max_length=100)] = None,
        tag: Annotated[str | None, QueryParameter(max_length=64)] = None,
        dead_letter: Annotated[
            bool | None, QueryParameter(name="deadLetter", description="Only tasks that exhausted their retries.")
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        offset: Annotated[int, QueryParameter(ge=0)] = 0,
    ) -> TaskListResponse:
        tasks, total = task_manager.list_tasks(
            request, status=status, executor=executor, tag=tag, dead_letter=dead_letter, limit=limit, offset=offset
        )
        return TaskListResponse(tasks=[TaskSummary.of(t) for t in tasks], count=len(tasks), total=total)

    @get("/stats", summary="Per-status counts of the session's tasks")
    async def stats(self, request: Request[Any, Any, Any], task_manager: NamedDependency[TaskManager]) -> StatsResponse:
        counts = task_manager.stats(request)
        session = task_manager.store.session(task_manager.session_key_of(request))
        return StatsResponse(
            stats=Stats(
                total=sum(counts.values()),
                pending=counts[TaskStatus.PENDING],
                running=counts[TaskStatus.RUNNING],
                completed=counts[TaskStatus.COMPLETED],
                failed=counts[TaskStatus.FAILED],
                cancelled=counts[TaskStatus.CANCELLED],
                average_duration_ms=round(session.average_duration_ms, 3) if session is not None else 0.0,
            )
        )

    @get("/metrics", summary="The session's task count and average processing time (Task Processor shape)")
    async def session_metrics(
        self, request: Request[Any, Any, Any], task_manager: NamedDependency[TaskManager]
    ) -> SessionMetricsResponse:
        session = task_manager.store.session(task_manager.session_key_of(request))
        if session is None:
            return SessionMetricsResponse(total_tasks=0, completed_tasks=0, average_processing_time_ms=0.0)
        return SessionMetricsResponse(
            total_tasks=len(session.tasks),
            completed_tasks=session.counts[TaskStatus.COMPLETED],
            average_processing_time_ms=round(session.average_duration_ms, 3),
        )

    @get("/cleanup/status", summary="The cleaner's state and retention options")
    async def cleanup_status(self, task_manager: NamedDependency[TaskManager]) -> CleanupStatusResponse:
        cleaner = task_manager.cleaner
        settings = task_manager.settings
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

    @post("/cleanup/run", status_code=200, summary="Apply retention to the session's finished tasks now")
    async def cleanup_run(
        self, request: Request[Any, Any, Any], task_manager: NamedDependency[TaskManager]
    ) -> CleanupRunResponse:
        return CleanupRunResponse(result=task_manager.cleaner.run_once(task_manager.session_key_of(request)))

    @get("/{task_id:str}", summary="A task with its history", responses=responses(400, 404))
    async def get_task(
        self, request: Request[Any, Any, Any], task_manager: NamedDependency[TaskManager], task_id: TaskId
    ) -> TaskResponse:
        return task_response(task_manager, task_manager.get_task(request, task_id))

    @get(
        "/{task_id:str}/status",
        summary="Status and step progress (the polling endpoint)",
        responses=responses(400, 404),
    )
    async def get_status(
        self, request: Request[Any, Any, Any], task_manager: NamedDependency[TaskManager], task_id: TaskId
    ) -> TaskStatusResponse:
        task = task_manager.get_task(request, task_id)
        return TaskStatusResponse(
            status=task.status,
            progress=task.progress,
            current_step=task.current_step,
            current_step_description=task.current_step_description,
            started_at=task.started_at,
            completed_at=task.completed_at,
            error=task.error,
        )

    @post(
        "/{task_id:str}/start", status_code=200, summary="Start a pending task", responses=responses(400, 404, 409, 503)
    )
    async def start_task(
        self, request: Request[Any, Any, Any], task_manager: NamedDependency[TaskManager], task_id: TaskId
    ) -> TaskResponse:
        return task_response(task_manager, task_manager.start_task(request, task_id))

    @post(
        "/{task_id:str}/cancel",
        status_code=200,
        summary="Cancel a pending or running task",
        responses=responses(400, 404, 409),
    )
    async def cancel_task(
        self, request: Request[Any, Any, Any], task_manager: NamedDependency[TaskManager], task_id: TaskId
    ) -> TaskResponse:
        return task_response(task_manager, task_manager.cancel_task(request, task_id))

    @post(
        "/{task_id:str}/retry",
        status_code=200,
        summary="Run a failed or cancelled task again",
        responses=responses(400, 404, 409, 503),
    )
    async def retry_task(
        self, request: Request[Any, Any, Any], task_manager: NamedDependency[TaskManager], task_id: TaskId
    ) -> TaskResponse:
        return task_response(task_manager, task_manager.retry_task(request, task_id))

    @delete(
        "/{task_id:str}",
        status_code=204,
        summary="Delete a task that is not running",
        responses=responses(400, 404, 409),
    )
    async def delete_task(
        self, request: Request[Any, Any, Any], task_manager: NamedDependency[TaskManager], task_id: TaskId
    ) -> None:
        task_manager.delete_task(request, task_id)

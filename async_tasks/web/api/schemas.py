"""Request and response bodies of the HTTP contract (camelCase JSON)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar.params import ParameterKwarg

from async_tasks.cleanup import CleanupResult, LastRun
from async_tasks.estimates import Estimate
from async_tasks.outlook import Outlook
from async_tasks.task import Task, TaskOptions, TaskStatus
from async_tasks.task_log import RECENT_LINES, LogLine

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Description = Annotated[str, msgspec.Meta(max_length=2000)]
# Litestar 2.x reads msgspec.Meta only on a field itself, not on list items; its own marker
# beside it puts the item constraints in the OpenAPI document too.
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64), ParameterKwarg(min_length=1, max_length=64)]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=20)]
Priority = Annotated[int, msgspec.Meta(ge=-1000, le=1000, description="Higher starts first when tasks queue.")]
TimeoutMs = Annotated[int, msgspec.Meta(ge=1, le=86_400_000, description="Fail the attempt after this long.")]
StartAt = Annotated[
    int,
    msgspec.Meta(
        ge=0,
        description=(
            "Start the task at this time (epoch milliseconds; implies `start`): it stays pending until then, "
            "`scheduledAt` saying when. A time already past starts it now; at most MAX_START_DELAY_MS (7 days) "
            "ahead."
        ),
    ),
    ParameterKwarg(ge=0),
]
# Litestar drops a falsy bound (ge=0) of an optional field from the document; its marker keeps it.
MaxRetries = Annotated[
    int,
    msgspec.Meta(ge=0, le=100, description="Automatic retries after a failure."),
    ParameterKwarg(ge=0, le=100),
]


class Body(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    pass


class CreateTaskRequest(Body):
    """``POST /tasks``: the executor, its params, and the task's options (`TaskOptions`,
    here with the contract's bounds; a test holds the two to the same fields)."""

    executor: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    name: Name | None = None
    description: Description | None = None
    params: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    tags: Tags | None = None
    start: bool = False
    priority: Priority = 0
    timeout_ms: TimeoutMs | None = None
    max_retries: MaxRetries | None = None
    start_at: StartAt | None = None

    def options(self) -> TaskOptions:
        """The task's options as the engine takes them (the fields of the same names)."""
        return msgspec.convert(self, TaskOptions, from_attributes=True)


class StartTaskRequest(Body):
    """``POST /tasks/{id}/start``'s optional body."""

    start_at: StartAt | None = None


class Response(msgspec.Struct, rename="camel"):
    """Success bodies: `success` first, then kw-only fields of the subclass."""

    success: bool = True


class TaskResponse(Response, kw_only=True):
    task: Task
    #: Its place in its session's line (1: next) while it waits; null otherwise.
    queue_position: int | None = None
    #: When it should start and finish (ms from this answer), while it waits or runs and
    #: something is known to estimate from; null otherwise.
    eta: Estimate | None = None


class TaskSummary(msgspec.Struct, rename="camel"):
    """A list item: the contract's summary (`id` to `completedAt`), then what a task's card
    shows, so a page that polls the list needs no request per task."""

    id: str
    name: str
    executor: str
    status: TaskStatus
    progress: float
    created_at: int
    completed_at: int | None
    current_step: str | None = None
    current_step_description: str | None = None
    error: str | None = None
    #: Attempts started (0 before the first run; a retry adds one).
    attempts: int = 0
    started_at: int | None = None
    updated_at: int = 0
    max_retries: int = 0
    #: Automatic retries used since the task was created or last retried by hand.
    auto_retries: int = 0
    #: It failed after its last automatic retry: it runs again only if retried by hand.
    dead_lettered: bool = False
    #: Its latest log lines (at most 3; `GET /tasks/{id}` has them all).
    logs: list[LogLine] = msgspec.field(default_factory=list)
    #: Its place in its session's line (1: next) while it waits; null otherwise.
    queue_position: int | None = None
    #: When it should start and finish (ms from this answer); null when not known.
    eta: Estimate | None = None
    #: When a pending task waiting for its time starts (a delayed start, a retry's backoff).
    scheduled_at: int | None = None
    #: Why a pending task has not started, when something other than its turn holds it up.
    waiting_reason: str | None = None

    @classmethod
    def of(cls, task: Task, outlook: Outlook | None = None) -> TaskSummary:
        # Positional, in the fields' order: a page of 1 000 summaries is a hot path, and
        # msgspec matches 21 keyword arguments in 1 µs against 0.2 µs for positions.
        return cls(
            task.id,
            task.name,
            task.executor,
            task.status,
            task.progress,
            task.created_at,
            task.completed_at,
            task.current_step,
            task.current_step_description,
            task.error,
            task.attempts,
            task.started_at,
            task.updated_at,
            task.max_retries,
            task.auto_retries,
            task.dead_lettered,
            task.logs[-RECENT_LINES:],
            outlook.queue_position if outlook is not None else None,
            outlook.eta if outlook is not None else None,
            task.scheduled_at,
            task.waiting_reason,
        )


class SharedTaskView(TaskSummary, kw_only=True):
    """A task as a share link shows it: the summary and the result; not its session,
    params, metadata or history."""

    result: Any = None

    @classmethod
    def of(cls, task: Task, outlook: Outlook | None = None) -> SharedTaskView:
        summary = TaskSummary.of(task, outlook)
        return cls(**msgspec.structs.asdict(summary), result=task.result)


class SharedTaskResponse(Response, kw_only=True):
    task: SharedTaskView
    #: When the link stops working (epoch ms).
    expires_at: int


class ShareLinkResponse(Response, kw_only=True):
    #: The page that follows the task, with the token in it: hand it to the viewer.
    url: str
    #: When the link stops working (epoch ms; SHARE_LINK_TTL after it was made).
    expires_at: int
    #: The token alone, for a page of your own (``GET /shared/{token}`` and ``/shared/{token}/events``).
    token: str


class TaskListResponse(Response, kw_only=True):
    tasks: list[TaskSummary]
    count: int
    total: int
    #: Pass as `cursor` for the next page (older tasks); null on the last page.
    next_cursor: str | None = None


class TaskStatusResponse(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    """The documented `/status` shape, exactly (clients poll it: fields never change), and
    fields that are there only when they say something (left out when null)."""

    success: bool
    status: TaskStatus
    progress: float
    current_step: str | None
    current_step_description: str | None
    started_at: int | None
    completed_at: int | None
    error: str | None
    #: When a pending task waiting for its time starts (a delayed start, a retry's backoff).
    scheduled_at: int | None = None
    #: Why a pending task has not started, when something other than its turn holds it up
    #: ("waiting for a worker that runs `report`").
    waiting_reason: str | None = None
    #: Its place in its session's line (1: next) while it waits, when known.
    queue_position: int | None = None
    #: When it should start and finish (ms from this answer), while it waits or runs and
    #: something is known to estimate from.
    eta: Estimate | None = None


class Stats(msgspec.Struct, rename="camel", kw_only=True):
    total: int
    pending: int
    running: int
    completed: int
    failed: int
    cancelled: int
    #: Mean run time (start to completion) of the session's completed tasks held, in ms; 0 if none.
    average_duration_ms: float = 0.0


class StatsResponse(Response, kw_only=True):
    stats: Stats


class CleanupOptions(msgspec.Struct, rename="camel", kw_only=True):
    max_completed_tasks: int
    max_failed_tasks: int
    max_cancelled_tasks: int
    cleanup_interval: int


class CleanupStatus(msgspec.Struct, rename="camel", kw_only=True):
    is_running: bool
    is_active: bool
    options: CleanupOptions
    last_run: LastRun | Literal["idle"]


class CleanupStatusResponse(Response, kw_only=True):
    status: CleanupStatus


class CleanupRunResponse(Response, kw_only=True):
    result: CleanupResult


class DemoTask(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    id: str
    name: str
    status: TaskStatus
    progress: float
    session_key: str
    #: When it starts, for a task created with `startAt` (left out otherwise: the seed's shape).
    scheduled_at: int | None = None


class DemoTaskResponse(Response, kw_only=True):
    message: str
    task: DemoTask
    note: str = "Task is running in the background. Use the task ID to check progress."


class StepInfo(msgspec.Struct, rename="camel", kw_only=True):
    name: str
    description: str
    at: float


class ExecutorInfo(msgspec.Struct, rename="camel", kw_only=True):
    name: str
    title: str
    description: str
    blocking: bool
    steps: list[StepInfo]
    params_schema: dict[str, Any]
    timeout_ms: int | None
    max_retries: int
    demo_path: str


class ExecutorListResponse(Response, kw_only=True):
    executors: list[ExecutorInfo]


class SessionInfo(Response, kw_only=True):
    session_key: str
    token: str | None = None


class ErrorDetail(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: str
    message: str
    details: Any = None


class ErrorResponse(msgspec.Struct, kw_only=True):
    success: bool = False
    error: ErrorDetail


class SessionMetricsResponse(Response, kw_only=True):
    """The session's task count and mean processing time (``GET /tasks/metrics``)."""

    total_tasks: int
    completed_tasks: int
    average_processing_time_ms: float


class HealthResponse(msgspec.Struct, kw_only=True):
    status: Literal["ok"] = "ok"


ReadyChecks = Annotated[
    dict[str, str],
    msgspec.Meta(
        description=(
            "Each check and its state: `runner` (ok or stopped), `cleaner` (ok or stopped), `eventLoop` (ok or "
            "lagging), `accepting` (ok or shutting_down), and with a shared backend its server, named as the "
            "backend (`redis`: ok or unreachable)."
        ),
        examples=[{"runner": "ok", "cleaner": "ok", "eventLoop": "ok", "accepting": "ok"}],
    ),
]


class ReadyResponse(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    status: Literal["ready", "unavailable"]
    checks: ReadyChecks
    loop_lag_ms: float
    max_loop_lag_ms: int
    #: The names of the failing checks (only when unavailable).
    failing: list[str] | None = None

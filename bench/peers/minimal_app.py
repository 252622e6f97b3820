"""Peer: the "minimal tracked-task app" of PERFORMANCE.md, on bare Litestar.

A dict of msgspec records, one anyio task group that lives as long as the app (its
lifespan), and tasks of 4 progress steps with ``await anyio.sleep(delayMs / 4 / 1000)``
between them (a zero-sleep checkpoint for ``{"delayMs": 0}``). No middleware, no
sessions, no metrics. Same routes and response shapes as the FastAPI peer:

- ``POST /api/v1/demo/tasks/sample`` ``{"delayMs": 0}``: 201 with the task's id;
- ``GET /api/v1/tasks/{id}/status``;
- ``GET /api/v1/tasks?limit=50``: the newest summaries and the total.

    uvicorn bench.peers.minimal_app:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import Enum
from itertools import islice
from typing import Annotated

import anyio
import msgspec
from anyio.abc import TaskGroup
from litestar import Litestar, get, post
from litestar.exceptions import NotFoundException
from litestar.params import Parameter

STEPS = (
    ("Initializing", "Setting up the task environment"),
    ("Loading Data", "Loading the input data set"),
    ("Processing Data", "Analyzing input data and preparing output"),
    ("Finalizing", "Cleaning up and saving the results"),
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class TaskStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class TaskRecord(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    name: str
    executor: str
    created_at: int
    status: TaskStatus = TaskStatus.PENDING
    progress: float = 0.0
    current_step: str | None = None
    current_step_description: str | None = None
    started_at: int | None = None
    completed_at: int | None = None
    error: str | None = None


class SampleRequest(msgspec.Struct, rename="camel"):
    delay_ms: Annotated[int, msgspec.Meta(ge=0, le=120_000)] = 3000


class CreatedTask(msgspec.Struct):
    id: str
    name: str
    status: TaskStatus
    progress: float


class CreateResponse(msgspec.Struct, kw_only=True):
    success: bool = True
    message: str
    task: CreatedTask


class StatusResponse(msgspec.Struct, rename="camel", kw_only=True):
    success: bool = True
    status: TaskStatus
    progress: float
    current_step: str | None
    current_step_description: str | None
    started_at: int | None
    completed_at: int | None
    error: str | None


class TaskSummary(msgspec.Struct, rename="camel", kw_only=True):
    id: str
    name: str
    executor: str
    status: TaskStatus
    progress: float
    created_at: int
    completed_at: int | None
    current_step: str | None


class TaskListResponse(msgspec.Struct, kw_only=True):
    success: bool = True
    tasks: list[TaskSummary]
    count: int
    total: int


class Tracker:
    """The records, and the task group every task runs in."""

    def __init__(self) -> None:
        self.records: dict[str, TaskRecord] = {}
        self._group: TaskGroup | None = None

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            self._group = group
            try:
                yield
            finally:
                self._group = None
                group.cancel_scope.cancel()

    def start(self, record: TaskRecord, delay_ms: int) -> None:
        assert self._group is not None, "the app's lifespan is not running"
        self.records[record.id] = record
        self._group.start_soon(self._run, record, delay_ms)

    async def _run(self, record: TaskRecord, delay_ms: int) -> None:
        record.status = TaskStatus.RUNNING
        record.started_at = now_ms()
        pause = delay_ms / len(STEPS) / 1000
        try:
            for index, (step, description) in enumerate(STEPS):
                record.current_step = step
                record.current_step_description = description
                record.progress = 100 * index / len(STEPS)
                await anyio.sleep(pause)
        except Exception as exc:
            record.status = TaskStatus.FAILED
            record.error = str(exc)
        else:
            record.progress = 100.0
            record.status = TaskStatus.COMPLETED
        finally:
            record.completed_at = now_ms()


tracker = Tracker()


@post("/api/v1/demo/tasks/sample", status_code=201)
async def create_sample_task(data: SampleRequest) -> CreateResponse:
    record = TaskRecord(id=str(uuid.uuid4()), name="Sample Long-Running Task", executor="sample", created_at=now_ms())
    tracker.start(record, data.delay_ms)
    return CreateResponse(
        message=f"{record.name} created and started",
        task=CreatedTask(id=record.id, name=record.name, status=record.status, progress=record.progress),
    )


@get("/api/v1/tasks/{task_id:str}/status")
async def task_status(task_id: str) -> StatusResponse:
    record = tracker.records.get(task_id)
    if record is None:
        raise NotFoundException(f"Task {task_id} not found")
    return StatusResponse(
        status=record.status,
        progress=record.progress,
        current_step=record.current_step,
        current_step_description=record.current_step_description,
        started_at=record.started_at,
        completed_at=record.completed_at,
        error=record.error,
    )


@get("/api/v1/tasks")
async def list_tasks(
    limit: Annotated[int, Parameter(ge=1, le=1000)] = 100, offset: Annotated[int, Parameter(ge=0)] = 0
) -> TaskListResponse:
    page = [
        TaskSummary(
            id=record.id,
            name=record.name,
            executor=record.executor,
            status=record.status,
            progress=record.progress,
            created_at=record.created_at,
            completed_at=record.completed_at,
            current_step=record.current_step,
        )
        for record in islice(reversed(tracker.records.values()), offset, offset + limit)
    ]
    return TaskListResponse(tasks=page, count=len(page), total=len(tracker.records))


app = Litestar(
    route_handlers=[create_sample_task, task_status, list_tasks], lifespan=[tracker.lifespan], openapi_config=None
)

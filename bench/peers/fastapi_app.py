"""Peer: FastAPI + ``BackgroundTasks``, pydantic records in a dict.

What a FastAPI developer would write for the three routes the benchmark measures on
the task server (same paths, bodies and response shapes, no sessions):

- ``POST /api/v1/demo/tasks/sample`` ``{"delayMs": 0}``: stores a pending record and
  schedules, with ``BackgroundTasks``, a run of 4 progress steps with
  ``await asyncio.sleep(delayMs / 4 / 1000)`` between them (``asyncio.sleep(0)``
  for a zero delay), then completes it. 201 with the task's id.
- ``GET /api/v1/tasks/{id}/status``: status, progress, currentStep,
  currentStepDescription, startedAt, completedAt, error.
- ``GET /api/v1/tasks?limit=50``: the newest summaries and the total.

    pip install -e ".[bench]"
    uvicorn bench.peers.fastapi_app:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import asyncio
import time
import uuid
from enum import Enum
from itertools import islice
from typing import Annotated

from fastapi import BackgroundTasks, FastAPI, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

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


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class TaskRecord(CamelModel):
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    name: str
    executor: str
    status: TaskStatus = TaskStatus.PENDING
    progress: float = 0.0
    current_step: str | None = None
    current_step_description: str | None = None
    created_at: int = Field(default_factory=now_ms)
    started_at: int | None = None
    completed_at: int | None = None
    error: str | None = None


class SampleRequest(CamelModel):
    delay_ms: int = Field(default=3000, ge=0, le=120_000)


class CreatedTask(CamelModel):
    id: str
    name: str
    status: TaskStatus
    progress: float


class CreateResponse(CamelModel):
    success: bool = True
    message: str
    task: CreatedTask


class StatusResponse(CamelModel):
    success: bool = True
    status: TaskStatus
    progress: float
    current_step: str | None
    current_step_description: str | None
    started_at: int | None
    completed_at: int | None
    error: str | None


class TaskSummary(CamelModel):
    id: str
    name: str
    executor: str
    status: TaskStatus
    progress: float
    created_at: int
    completed_at: int | None
    current_step: str | None


class TaskListResponse(CamelModel):
    success: bool = True
    tasks: list[TaskSummary]
    count: int
    total: int


tasks: dict[str, TaskRecord] = {}

app = FastAPI(title="async-tasks peer: FastAPI + BackgroundTasks")


async def run_sample(record: TaskRecord, delay_ms: int) -> None:
    record.status = TaskStatus.RUNNING
    record.started_at = now_ms()
    pause = delay_ms / len(STEPS) / 1000
    try:
        for index, (step, description) in enumerate(STEPS):
            record.current_step = step
            record.current_step_description = description
            record.progress = 100 * index / len(STEPS)
            await asyncio.sleep(pause)
    except Exception as exc:
        record.status = TaskStatus.FAILED
        record.error = str(exc)
    else:
        record.progress = 100.0
        record.status = TaskStatus.COMPLETED
    finally:
        record.completed_at = now_ms()


@app.post("/api/v1/demo/tasks/sample", status_code=201)
async def create_sample_task(body: SampleRequest, background_tasks: BackgroundTasks) -> CreateResponse:
    record = TaskRecord(name="Sample Long-Running Task", executor="sample")
    tasks[record.id] = record
    background_tasks.add_task(run_sample, record, body.delay_ms)
    return CreateResponse(
        message=f"{record.name} created and started",
        task=CreatedTask(id=record.id, name=record.name, status=record.status, progress=record.progress),
    )


@app.get("/api/v1/tasks/{task_id}/status")
async def task_status(task_id: str) -> StatusResponse:
    record = tasks.get(task_id)
    if record is None:
        raise HTTPException(status_code=404, detail=f"Task {task_id} not found")
    return StatusResponse(
        status=record.status,
        progress=record.progress,
        current_step=record.current_step,
        current_step_description=record.current_step_description,
        started_at=record.started_at,
        completed_at=record.completed_at,
        error=record.error,
    )


@app.get("/api/v1/tasks")
async def list_tasks(
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0)] = 0
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
        for record in islice(reversed(tasks.values()), offset, offset + limit)
    ]
    return TaskListResponse(tasks=page, count=len(page), total=len(tasks))

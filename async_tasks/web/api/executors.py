"""``GET /executors``: what can be run, with each executor's params schema."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import get
from litestar.di import NamedDependency

from async_tasks.executor import TaskExecutor
from async_tasks.system import TaskSystem
from async_tasks.web.api.schemas import ExecutorInfo, ExecutorListResponse, StepInfo


def executor_info(executor: TaskExecutor[Any], prefix: str) -> ExecutorInfo:
    cls = type(executor)
    schema = msgspec.json.schema(cls.Params)
    return ExecutorInfo(
        name=cls.name,
        title=cls.title or cls.name,
        description=cls.description or (cls.__doc__ or "").strip().split("\n\n")[0],
        blocking=cls.is_blocking(),
        steps=[StepInfo(name=s.name, description=s.description, at=s.at) for s in cls.steps],
        params_schema=schema,
        timeout_ms=cls.timeout_ms,
        max_retries=cls.max_retries,
        demo_path=f"{prefix}/demo/tasks/{cls.name}",
    )


@get("/executors", tags=["executors"], summary="Registered executors with their params schemas")
async def list_executors(
    task_system: NamedDependency[TaskSystem], api_path: NamedDependency[str]
) -> ExecutorListResponse:
    return ExecutorListResponse(executors=[executor_info(e, api_path) for e in task_system.executors])

"""The seed's "Integration Examples" in Python: the task system inside your own app.

Run it::

    uvicorn demos.integration:create_app --factory --port 3001

then::

    curl -X POST http://localhost:3001/files/process \\
      -H "Content-Type: application/json" \\
      -d '{"fileName": "report.csv", "filePath": "report.csv", "fileSize": 243}'

It answers at once with the task id; poll ``/api/v1/tasks/<id>/status`` on the
same server, or open ``/schema`` for the whole API.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from async_tasks import EXCEPTION_HANDLERS, AsyncTasksPlugin, TaskSystem
from demos.text_transform import TextTransformExecutor


class ProcessFileRequest(msgspec.Struct, rename="camel", forbid_unknown_fields=True):
    file_name: str
    file_path: str
    file_size: int = 0


@post("/files/process", status_code=202)
async def process_large_file(
    task_system: NamedDependency[TaskSystem],
    session_key: NamedDependency[str],
    data: JSONBody[ProcessFileRequest],
) -> dict[str, Any]:
    """Create a task in the caller's session, start it, and return immediately."""
    task = await task_system.create_task(
        session_key,
        executor="file-processing",
        params={"filePath": data.file_path},
        name="File Processing",
        description="Processing uploaded file",
        metadata={"fileName": data.file_name, "fileSize": data.file_size},
    )
    return {"message": "File processing started", "taskId": task.id, "status": task.status.value}


@get("/")
async def index() -> dict[str, str]:
    return {"app": "my-service", "try": "POST /files/process"}


def create_app() -> Litestar:
    return Litestar(
        route_handlers=[index, process_large_file],
        plugins=[AsyncTasksPlugin(executors=[TextTransformExecutor])],
        # Errors in the task system's envelope, in words for a person, for your routes too.
        exception_handlers=EXCEPTION_HANDLERS,
    )

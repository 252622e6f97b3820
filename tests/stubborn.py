"""Executors that do not stop when cancelled, for the shutdown tests (test-only).

- `stubborn-shield` shields itself from cancellation: its attempt never unwinds, so
  the runner's task group (and the app's lifespan) cannot finish.
- `stubborn-thread` blocks in a worker thread, which cannot be interrupted.

Both run for `seconds` (default an hour) unless the process ends first.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import anyio
import msgspec

from async_tasks import TaskExecutor, TaskParams
from async_tasks.task import Task


class StubbornParams(TaskParams):
    seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 3600


class ShieldedExecutor(TaskExecutor[StubbornParams]):
    name = "stubborn-shield"
    title = "Ignores cancellation"
    Params = StubbornParams

    async def execute(self, task: Task, progress: Any) -> Any:
        await progress(10, "Stubborn", "shielded from cancellation")
        with anyio.CancelScope(shield=True):
            await anyio.sleep(task.params.seconds)
        return {"done": True}


class BlockingThreadExecutor(TaskExecutor[StubbornParams]):
    name = "stubborn-thread"
    title = "Blocks in a worker thread"
    Params = StubbornParams

    def execute(self, task: Task, progress: Any) -> Any:
        progress(10, "Blocking", "sleeping in a worker thread")
        time.sleep(task.params.seconds)
        return {"done": True}


STUBBORN_EXECUTORS = [ShieldedExecutor, BlockingThreadExecutor]

"""The task server with one extra executor, for the "100 000 running tasks" measurement.

It is the task server's app factory (`bench.TASK_APP_FACTORY`: same plugin,
middleware, metrics and settings) plus:

- ``bench-sleeper``: an executor whose task sleeps ``seconds`` and does nothing
  else. The built-in ``sample`` executor cannot stand in: its ``delayMs`` is capped
  at 120 s, so 100 000 sample tasks would each wake every 6 s to report progress
  (about 17 000 wake-ups per second): that is load, not sleeping tasks.
- ``POST /bench/spawn`` ``{"count": N, "seconds": S}``: creates and starts N sleeper
  tasks in the caller's session through `TaskSystem.create_task` (the path every
  create route takes after decoding its body), yielding to the event loop every
  500 tasks. It exists so that 100 000 tasks can be started in seconds without
  measuring the client.

    uvicorn bench.sleeper_app:create_app --factory --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import msgspec
from litestar import Litestar, post
from litestar.di import NamedDependency

from async_tasks import TaskExecutor, TaskParams, TaskSystem
from bench import task_app_factory

if TYPE_CHECKING:
    from async_tasks import Progress, Task


class SleeperParams(TaskParams):
    seconds: float = 1800.0


class SleeperExecutor(TaskExecutor[SleeperParams]):
    """Sleeps, and nothing else."""

    name = "bench-sleeper"
    title = "Benchmark sleeper"

    async def execute(self, task: Task[SleeperParams], progress: Progress) -> None:
        await self.sleep(task.params.seconds)


class Spawn(msgspec.Struct):
    count: int
    seconds: float = 1800.0


@post("/bench/spawn", status_code=200)
async def spawn(
    task_system: NamedDependency[TaskSystem], session_key: NamedDependency[str], data: Spawn
) -> dict[str, int]:
    for index in range(data.count):
        await task_system.create_task(session_key, executor=SleeperExecutor.name, params={"seconds": data.seconds})
        if index % 500 == 499:
            await anyio.lowlevel.checkpoint()
    return {"created": data.count}


def create_app() -> Litestar:
    return task_app_factory()(executors=[SleeperExecutor], route_handlers=[spawn])

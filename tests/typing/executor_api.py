"""The executor API as users write it, checked by ``mypy --strict`` (never run).

Each ``# type: ignore[...]`` marks a mistake mypy must catch: with mypy's
``warn_unused_ignores`` (on under ``--strict``) an ignore that catches nothing is
itself an error, so these lines prove the typos are flagged.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

from async_tasks import Progress, Step, SyncProgress, Task, TaskExecutor, TaskParams, TaskSystem, executor
from async_tasks.testing import run_executor


class GreetParams(TaskParams):
    who: str = "world"


class GreetConfig(msgspec.Struct, rename="upper", frozen=True):
    greeting: str = "Hello"


class GreetExecutor(TaskExecutor[GreetParams, GreetConfig]):
    name = "greet"
    steps = (Step("Thinking", at=0), Step("Speaking", at=50))

    async def execute(self, task: Task[GreetParams], progress: Progress) -> dict[str, str]:
        await progress(50, "Speaking", "Saying it", data={"words": 2})
        await progress.log("Said it", data={"to": task.params.who})
        await progress.log(42)  # type: ignore[arg-type]
        async with progress.step("Waving", end=100):
            pass
        who: str = task.params.who
        _ = task.params.whoo  # type: ignore[attr-defined]
        _ = self.config.greetings  # type: ignore[attr-defined]
        return {"greeting": f"{self.config.greeting}, {who}!"}


class BlockingGreet(TaskExecutor[GreetParams]):
    name = "blocking-greet"

    def execute(self, task: Task[GreetParams], progress: SyncProgress) -> str:
        progress(50)
        progress.log("Shouting", data=[1, 2])
        return task.params.who.upper()


@executor("shout", title="Shout", steps=[Step("Shouting")])
async def shout(params: GreetParams, progress: Progress) -> str:
    await progress(10)
    _ = params.whom  # type: ignore[attr-defined]
    return params.who.upper()


@executor("whisper")
def whisper(params: GreetParams, progress: SyncProgress) -> str:
    progress(10)
    return params.who.lower()


async def engine_use() -> None:
    async with TaskSystem(executors=[GreetExecutor, BlockingGreet, shout, whisper]) as system:
        task = await system.create_task("session", executor="greet", params={"who": "Ada"})
        page = await system.list_tasks("session", limit=10)
        first: Task[Any] = page.tasks[0]
        assert first.id == task.id
        await system.cancel_task("session", task.id)
        await system.create_task("session", executr="greet")  # type: ignore[call-arg]
    run = await run_executor(GreetExecutor, {"who": "Bo"})
    assert run.result == {"greeting": "Hello, Bo!"}


if __name__ == "__main__":
    anyio.run(engine_use)

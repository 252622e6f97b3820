"""Executors of the execution contract suite."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import anyio

from async_tasks import TaskExecutor, TaskParams
from async_tasks.task import Task
from tests.helpers import BlockingExecutor, ScriptExecutor


class HoldParams(TaskParams):
    reports: int = 0


class HoldExecutor(TaskExecutor[HoldParams]):
    """Reports `reports` times as fast as it can, then holds until cancelled; records
    when its cancellation arrived."""

    name = "hold"
    stopped: ClassVar[dict[str, float]] = {}
    stopping: ClassVar[dict[str, anyio.Event]] = {}

    async def execute(self, task: Task[HoldParams], progress: Any) -> None:
        try:
            for i in range(task.params.reports):
                await progress(i * 90 / task.params.reports)
            await anyio.sleep_forever()
        finally:
            self.stopped[task.id] = time.monotonic()
            self.stopping.setdefault(task.id, anyio.Event()).set()


class ChattyParams(TaskParams):
    lines: int = 0
    hold: bool = False


class ChattyExecutor(TaskExecutor[ChattyParams]):
    """Writes `lines` log lines as fast as it can (``line 1``, ...; every tenth with data),
    then holds until cancelled if asked, else completes."""

    name = "chatty"

    async def execute(self, task: Task[ChattyParams], progress: Any) -> None:
        for i in range(1, task.params.lines + 1):
            await progress.log(f"line {i}", data={"i": i} if i % 10 == 0 else None)
        if task.params.hold:
            await anyio.sleep_forever()


class CountedExecutor(ScriptExecutor):
    """The script executor, counting how many of its runs execute at once (the engines of
    a test share one process, so the count covers every worker)."""

    name = "counted"
    executing: ClassVar[int] = 0
    most_at_once: ClassVar[int] = 0

    async def execute(self, task: Task, progress: Any) -> Any:
        cls = type(self)
        cls.executing += 1
        cls.most_at_once = max(cls.most_at_once, cls.executing)
        try:
            return await super().execute(task, progress)
        finally:
            cls.executing -= 1


EXECUTORS: list[type[TaskExecutor[Any, Any]]] = [
    ScriptExecutor,
    BlockingExecutor,
    HoldExecutor,
    CountedExecutor,
    ChattyExecutor,
]

"""Test helpers for people writing executors and apps (this project's own tests use them too).

    from async_tasks.testing import run_executor

    async def test_my_executor():
        run = await run_executor(MyExecutor, {"count": 3})
        assert run.result == {"done": 3}
        assert [r.percent for r in run.reports] == [0, 50, 100]
        assert run.messages == ["Counted 3"]  # its log lines

- `run_executor`: one attempt of an executor, in-process, with its reports recorded.
- `FakeClock`: the engine's clock, moved only when a test advances it; `sleep`
  returns as soon as the fake time reaches its deadline.
- `wait_for`: wait until a task reaches a status or a progress, on the store's
  events (never a sleep).
- `serve_in_loop`: a Litestar app (lifespan included) running in the test's own
  event loop, with an httpx client on it; `asgi_client` is that client alone.
- `capture_logs`: the log records the task system writes, as dicts.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.executor import TaskExecutor
from async_tasks.progress import ProgressReporter, ThreadProgress
from async_tasks.task import Task, TaskStatus
from async_tasks.task_log import LogLine

if TYPE_CHECKING:
    import httpx
    from litestar import Litestar

    from async_tasks.events import Event
    from async_tasks.system import TaskSystem


class ProgressReport(msgspec.Struct, frozen=True):
    percent: float
    step: str | None
    description: str | None


class ExecutorRun(msgspec.Struct):
    task: Task
    reports: list[ProgressReport]
    result: Any = None
    #: The log lines it wrote (`progress.log`, and reports with ``data=``), in order.
    logs: list[LogLine] = msgspec.field(default_factory=list)

    @property
    def messages(self) -> list[str]:
        """The messages of its log lines, in order."""
        return [line.message for line in self.logs]

    @property
    def steps(self) -> list[str]:
        """Distinct step names in the order they were first reported."""
        seen: list[str] = []
        for report in self.reports:
            if report.step is not None and report.step not in seen:
                seen.append(report.step)
        return seen


def make_task(executor: TaskExecutor[Any, Any], params: Any = None, **fields: Any) -> Task:
    """A running task for `executor`, with `params` validated like the API does."""
    cls = type(executor)
    if params is None or isinstance(params, Mapping):
        params = msgspec.convert(dict(params or {}), cls.Params)
    return Task(
        id=str(uuid.uuid4()),
        session_key="test",
        executor=cls.name,
        name=fields.pop("name", cls.title or cls.name),
        params=params,
        status=TaskStatus.RUNNING,
        attempts=1,
        **fields,
    )


async def run_executor(
    executor: type[TaskExecutor[Any, Any]] | TaskExecutor[Any, Any],
    params: Any = None,
    *,
    validate: bool = True,
    environ: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    **task_fields: Any,
) -> ExecutorRun:
    """Run one attempt of `executor` in-process and collect what it reports.

    Params are converted and (with `validate`) checked by `executor.validate` as the
    API would; exceptions from `execute` propagate to the test. With a `FakeClock`,
    the executor's `self.sleep(...)` waits until the test advances the clock.
    """
    instance = executor.from_environ(environ or {}) if isinstance(executor, type) else executor
    if clock is not None:
        instance.clock = clock
    task = make_task(instance, params, **task_fields)
    if validate:
        await instance.validate(task.params)
    reports: list[ProgressReport] = []

    async def record(percent: float, step: str | None, description: str | None) -> bool:
        reports.append(ProgressReport(percent, step, description))
        return True

    logs: list[LogLine] = []

    async def record_line(line: LogLine) -> bool:
        logs.append(line)
        return True

    reporter = ProgressReporter(
        record, type(instance).steps, log_sink=record_line, now_ms=(clock or SYSTEM_CLOCK).now_ms
    )
    try:
        if instance.is_blocking():
            result = await anyio.to_thread.run_sync(instance.execute, task, ThreadProgress(reporter))
        else:
            result = await instance.execute(task, reporter)
    finally:
        reporter.close()
    return ExecutorRun(task=task, reports=reports, result=result, logs=logs)


class FakeClock(Clock):
    """A clock that moves only when told to.

    `sleep(s)` waits until `advance` has moved the fake time `s` seconds on (or
    returns at once for `s <= 0`); every requested delay is kept in `sleeps`.
    """

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now = start_ms / 1000
        self._start = self._now
        self.sleeps: list[float] = []
        self._waiters: list[tuple[float, anyio.Event]] = []
        self._sleeping: anyio.Event | None = None

    def now_ms(self) -> int:
        return round(self._now * 1000)

    def monotonic(self) -> float:
        return self._now - self._start

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await anyio.lowlevel.checkpoint()
            return
        waiter = (self._now + seconds, anyio.Event())
        self._waiters.append(waiter)
        if self._sleeping is not None:
            self._sleeping.set()
        try:
            await waiter[1].wait()
        finally:
            if waiter in self._waiters:  # cancelled before its time
                self._waiters.remove(waiter)

    def advance(self, seconds: float) -> None:
        """Move time on and wake every sleeper whose deadline has passed."""
        self._now += seconds
        due = [w for w in self._waiters if w[0] <= self._now + 1e-9]
        self._waiters = [w for w in self._waiters if w[0] > self._now + 1e-9]
        for _, event in due:
            event.set()

    @property
    def sleepers(self) -> int:
        return len(self._waiters)

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Wait (without real sleeping) until `count` coroutines sleep on this clock."""
        while len(self._waiters) < count:
            self._sleeping = anyio.Event()
            await self._sleeping.wait()


async def wait_for(
    system: TaskSystem,
    session_key: str,
    task_id: str,
    *statuses: TaskStatus | str,
    progress: float | None = None,
    limit: float = 5,
) -> Task:
    """Wait until the task is in one of `statuses` (or has reached `progress`), woken by
    the store's events: never a sleep. Fails after `limit` seconds. The task comes with
    its data decoded (`TaskSystem.decoded`)."""
    wanted = {TaskStatus(status) for status in statuses}
    store = system.store
    changed = anyio.Event()

    def reached(task: Task) -> bool:
        return task.status in wanted or (progress is not None and task.progress >= progress)

    def listener(event: Event) -> None:
        if event.task_id == task_id:
            changed.set()

    unsubscribe = store.events.subscribe(listener)
    try:
        with anyio.fail_after(limit):
            while not reached(task := await store.get(session_key, task_id)):
                await changed.wait()
                changed = anyio.Event()
    finally:
        unsubscribe()
    return system.decoded(task)


@asynccontextmanager
async def serve_in_loop(
    app: Litestar, client_ip: str = "127.0.0.1", *, base_url: str = "http://localhost"
) -> AsyncIterator[httpx.AsyncClient]:
    """Run `app` (lifespan included) in the test's own event loop and give an httpx client.

    Unlike Litestar's AsyncTestClient (which runs the app in a portal thread), the
    engine's tasks then share the test's loop, so a test can wait on events and
    `anyio.wait_all_tasks_blocked()` instead of sleeping. The default `base_url` is a
    loopback name, which the server accepts in the Host header (ALLOWED_HOSTS).
    """
    async with app.lifespan(), asgi_client(app, client_ip, base_url=base_url) as http:
        yield http


def asgi_client(
    app: Litestar, client_ip: str = "127.0.0.1", *, base_url: str = "http://localhost"
) -> httpx.AsyncClient:
    """An httpx client calling `app` in-process as `client_ip` (no lifespan: see
    `serve_in_loop` for the app with its task system running)."""
    import httpx

    # httpx types an ASGI app more narrowly than Litestar types its __call__.
    transport = httpx.ASGITransport(app=cast("Any", app), client=(client_ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@contextmanager
def capture_logs(logger: str = "async_tasks") -> Iterator[list[dict[str, Any]]]:
    """Collect what `logger` (and its children) log, as dicts: ``level``, ``logger``,
    ``message`` and the context fields (``task_id``, ``session_key``, ...) when set."""
    from async_tasks.logs import ContextFilter

    records: list[dict[str, Any]] = []
    context = ContextFilter()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            context.filter(record)
            entry = {"level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
            for field in ("request_id", "session_key", "task_id", "executor", "status", "reason", "error"):
                value = getattr(record, field, None)
                if value is not None:
                    entry[field] = value
            records.append(entry)

    handler = Collect(logging.DEBUG)
    target = logging.getLogger(logger)
    level = target.level
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        target.removeHandler(handler)
        target.setLevel(level)

"""What the tests share besides fixtures: constants, test executors, apps with test
settings and waiting helpers (no real sleeping anywhere)."""

from __future__ import annotations

import itertools
import threading
from typing import Annotated, Any, ClassVar

import anyio
import msgspec
from litestar import Litestar

from async_tasks import Step, TaskExecutor, TaskParams, testing
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.settings import Settings
from async_tasks.store.memory import MemoryTaskStore
from async_tasks.system import TaskSystem
from async_tasks.task import Task
from async_tasks.web.app import create_app
from async_tasks.web.plugin import AsyncTasksPlugin
from executors.api_call import ApiCallExecutor
from executors.batch import BatchExecutor
from executors.file_processing import FileProcessingExecutor
from executors.sample import SampleExecutor

SECRET = "test-secret-key-0123456789abcdef"
#: The Host of Litestar's test clients and of our in-process clients: not a loopback
#: name, so the tests allow it (the default ALLOWED_HOSTS does not).
TEST_HOST = "testserver.local"
#: Client addresses handed out to `session_client`s: each test its own IP session.
_ADDRESSES = (f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}" for i in itertools.count(1))


class ScriptParams(TaskParams):
    steps: Annotated[int, msgspec.Meta(ge=0, le=100)] = 3
    hold: bool = False
    fail: str | None = None
    fail_attempts: Annotated[int, msgspec.Meta(ge=0)] = 0
    result: Any = None


class ScriptExecutor(TaskExecutor[ScriptParams]):
    """Does what its params say: report `steps` steps, then hold (until cancelled or
    released), fail with a message, fail the first `failAttempts` attempts, or return
    `result`."""

    name = "script"
    title = "Scripted Task"
    Params = ScriptParams
    steps = (Step("Warming Up", "getting ready", 0), Step("Working", "doing the work", 50))
    released: ClassVar[dict[str, anyio.Event]] = {}

    async def execute(self, task: Task, progress: Any) -> Any:
        params: ScriptParams = task.params
        for i in range(params.steps):
            await progress(round((i + 1) * 90 / max(params.steps, 1)))
        if params.hold:
            event = self.released.setdefault(task.id, anyio.Event())
            await event.wait()
        if params.fail_attempts and task.attempts <= params.fail_attempts:
            raise RuntimeError(f"attempt {task.attempts} failed on purpose")
        if params.fail:
            raise RuntimeError(params.fail)
        return params.result if params.result is not None else {"steps": params.steps}

    @classmethod
    def release(cls, task_id: str) -> None:
        cls.released.setdefault(task_id, anyio.Event()).set()


class BlockingParams(TaskParams):
    steps: int = 2


class BlockingExecutor(TaskExecutor[BlockingParams]):
    """A plain ``def execute``: runs in a worker thread, waits on a threading.Event."""

    name = "blocking"
    title = "Blocking Task"
    Params = BlockingParams
    gates: ClassVar[dict[str, threading.Event]] = {}

    def execute(self, task: Task, progress: Any) -> Any:
        gate = self.gates.setdefault(task.id, threading.Event())
        progress(10, step="Blocking", description="in a worker thread")
        gate.wait(5)
        for i in range(task.params.steps):
            progress(50 + i)
        return {"thread": threading.current_thread().name != "MainThread"}


TEST_EXECUTORS: list[type[TaskExecutor[Any, Any]]] = [ScriptExecutor, BlockingExecutor]
#: The executors this package installs as entry points.
BUILTIN_EXECUTORS: list[type[TaskExecutor[Any, Any]]] = [
    SampleExecutor,
    FileProcessingExecutor,
    ApiCallExecutor,
    BatchExecutor,
]


def build_app(
    executors: Any = TEST_EXECUTORS,
    *,
    environ: dict[str, str] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    load_entry_points: bool = True,
    **overrides: Any,
) -> Litestar:
    """An app with test settings; keyword arguments override `Settings` fields."""
    fields: dict[str, Any] = {
        "secret_key": SECRET,
        "task_create_rate": 0.0,
        "task_read_rate": 0.0,
        "allowed_hosts": TEST_HOST,
    }
    fields.update(overrides)
    if load_entry_points:
        # The installed built-ins, without scanning every installed
        # distribution's metadata again for each app (a third of building one; the scan
        # itself is tested in test_plugin.py).
        executors, load_entry_points = [*BUILTIN_EXECUTORS, *executors], False
    return create_app(
        Settings(**fields), executors, environ=environ or {}, clock=clock, load_entry_points=load_entry_points
    )


def new_address() -> str:
    """A client address no other test of this process uses (so an IP session of its own)."""
    return next(_ADDRESSES)


def system_of(app: Litestar) -> TaskSystem:
    return app.plugins.get(AsyncTasksPlugin).system


def memory_store_of(app: Litestar) -> MemoryTaskStore:
    store = system_of(app).store
    assert isinstance(store, MemoryTaskStore)
    return store


def find_task(app: Litestar, task_id: str) -> Task | None:
    """The task (its data decoded) in whichever session of `app`'s memory store holds it."""
    for session in memory_store_of(app).sessions.values():
        if task_id in session.tasks:
            return system_of(app).decoded(session.tasks[task_id])
    return None


async def wait_for(app: Litestar, task_id: str, *statuses: str, progress: float | None = None) -> Task:
    """`async_tasks.testing.wait_for` for a task of any session of `app`, on any backend
    (the app must run in the caller's event loop: the `client` fixture / `serve_in_loop`)."""
    system = system_of(app)
    task = await system.store.find(task_id)
    return await testing.wait_for(system, task.session_key, task_id, *statuses, progress=progress)


def tampered(token: str) -> str:
    """`token` with one character of its signature changed, so that it no longer verifies.
    Not the last character: in base64 its low bits may be unused, and changing only those
    leaves the signature as it was."""
    at = len(token) - 5
    return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]

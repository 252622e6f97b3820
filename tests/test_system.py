"""The engine on its own: `TaskSystem` without a web app, and the promises of creation."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest

from async_tasks import Progress, Task, TaskExecutor, TaskParams, TaskSystem, executor
from async_tasks.errors import IdempotencyConflict, ShuttingDown
from async_tasks.settings import Settings
from async_tasks.task import TaskStatus
from async_tasks.testing import wait_for
from tests.helpers import SECRET, ScriptExecutor

ROOT = Path(__file__).resolve().parent.parent
#: Modules of the engine: none of them may import the web framework or the session signer.
ENGINE_MODULES = [
    "async_tasks",
    "async_tasks.task",
    "async_tasks.errors",
    "async_tasks.clock",
    "async_tasks.settings",
    "async_tasks.context",
    "async_tasks.executor",
    "async_tasks.progress",
    "async_tasks.events",
    "async_tasks.store",
    "async_tasks.store.base",
    "async_tasks.store.memory",
    "async_tasks.execution.base",
    "async_tasks.execution.local",
    "async_tasks.backends",
    "async_tasks.backends.memory",
    "async_tasks.backends.redis",
    "async_tasks.backends.redis.worker",
    "async_tasks.faults",
    "async_tasks.system",
    "async_tasks.outlook",
    "async_tasks.process",
    "async_tasks.worker",
    "async_tasks.cleanup",
    "async_tasks.metrics",
    "async_tasks.logs",
    "async_tasks.testing",
    "async_tasks.client",
    "async_tasks.client._sync",
    "async_tasks.client._async",
    "async_tasks.client.tokens",
    "async_tasks.cli",
]


def settings(**overrides: Any) -> Settings:
    return Settings(**{"secret_key": SECRET, "task_create_rate": 0.0, **overrides})


@pytest.mark.e2e
def test_the_engine_never_imports_the_web_framework() -> None:
    """Importing every engine module (and the CLI and client) leaves Litestar and itsdangerous unimported."""
    imports = "".join(f"import {module}\n" for module in ENGINE_MODULES)
    code = f"import sys\n{imports}print('litestar' in sys.modules, 'itsdangerous' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False False", out.stderr


@pytest.mark.e2e
def test_a_plain_script_runs_a_function_and_a_class_executor_without_litestar(tmp_path: Path) -> None:
    """The engine in a script: both executor forms and a built-in one run end to end; neither Litestar nor
    itsdangerous is imported, and nothing is logged about SECRET_KEY or session tokens."""
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            """
            import logging
            import sys
            import anyio
            from async_tasks import Progress, Step, Task, TaskExecutor, TaskParams, TaskSystem, executor
            from async_tasks.testing import wait_for

            class GreetParams(TaskParams):
                who: str = "world"

            @executor("greet", title="Greeting", steps=[Step("Thinking"), Step("Speaking", at=50)])
            async def greet(params: GreetParams, progress: Progress) -> dict[str, str]:
                await progress(50)
                return {"greeting": f"Hello, {params.who}!"}

            class Shout(TaskExecutor[GreetParams]):
                name = "shout"

                def execute(self, task: Task[GreetParams], progress) -> str:  # blocking: a worker thread
                    progress(50)
                    return task.params.who.upper()

            async def main() -> None:
                async with TaskSystem([greet, Shout]) as system:  # the installed executors too
                    ids = [
                        (await system.create_task("me", executor=name, params={"who": "Ada"})).id
                        for name in ("greet", "shout")
                    ]
                    ids.append((await system.create_task("me", executor="sample", params={"delayMs": 0})).id)
                    with anyio.fail_after(5):
                        for task_id in ids:
                            task = await wait_for(system, "me", task_id, "completed")
                            result = "" if task.executor == "sample" else task.result
                            print(task.status.value, result, task.current_step)
                print("litestar" in sys.modules, "itsdangerous" in sys.modules)

            logging.basicConfig(level=logging.DEBUG)
            anyio.run(main)
            """
        )
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "completed {'greeting': 'Hello, Ada!'} Speaking",
        "completed ADA None",
        "completed  Finalizing",
        "False False",
    ]
    assert "Task system initialized" in out.stderr  # the log is captured...
    assert "SECRET_KEY" not in out.stderr and "token" not in out.stderr.lower()  # ...and says nothing of sessions


async def test_a_function_executor_is_a_class_registered_like_one() -> None:
    class Numbers(TaskParams):
        count: int = 2

    @executor("count", title="Counting", max_retries=1)
    async def count(params: Numbers, progress: Progress) -> int:
        """Counts to `count`."""
        for i in range(params.count):
            await progress((i + 1) * 100 / params.count)
        return params.count

    assert issubclass(count, TaskExecutor) and count.Params is Numbers and count.max_retries == 1
    assert count.description == "Counts to `count`." and not count.is_blocking()
    async with TaskSystem([count], settings=settings(), load_entry_points=False) as system:
        task = await system.create_task("s", executor="count", params={"count": 4})
        done = await wait_for(system, "s", task.id, "completed")
        assert done.result == 4 and done.name == "Counting"


async def test_params_are_declared_once_in_the_generic_base() -> None:
    class Greet(TaskParams):
        who: str = "world"

    class Hello(TaskExecutor[Greet]):
        name = "hello"

        async def execute(self, task: Task[Greet], progress: Progress) -> str:
            return task.params.who

    assert Hello.Params is Greet


async def test_shutdown_during_validation_leaves_no_task_behind() -> None:
    """A create whose validation awaits while shutdown begins is refused and leaves nothing
    (no pending task that will never run and counts against the quota)."""
    entered, release = anyio.Event(), anyio.Event()

    class Slow(TaskExecutor[TaskParams]):
        name = "slow"

        async def validate(self, params: TaskParams) -> None:
            entered.set()
            await release.wait()

        async def execute(self, task: Task[TaskParams], progress: Progress) -> None: ...

    async with TaskSystem([Slow], settings=settings(), load_entry_points=False) as system:
        outcome: list[BaseException] = []

        async def create() -> None:
            try:
                await system.create_task("s", executor="slow")
            except ShuttingDown as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(create)
            await entered.wait()
            system.request_shutdown()
            release.set()
        assert len(outcome) == 1
        assert (await system.stats("s")).total == 0


async def test_a_create_refused_for_shutdown_leaves_nothing_behind() -> None:
    """Create-and-start is one step: refused once shutdown has begun, it stores nothing."""
    async with TaskSystem([ScriptExecutor], settings=settings(), load_entry_points=False) as system:
        system.execution.stop_accepting()
        with pytest.raises(ShuttingDown):
            await system.create_task("s", executor="script")
        assert (await system.stats("s")).total == 0


@pytest.mark.parametrize(
    "changed", [{"timeout_ms": 5000}, {"max_retries": 2}, {"start": False}, {"priority": 3}, {"tags": ["x"]}]
)
async def test_an_idempotency_key_reused_with_other_options_is_refused(changed: dict[str, Any]) -> None:
    """Every option of the create is part of the Idempotency-Key's fingerprint."""
    async with TaskSystem([ScriptExecutor], settings=settings(), load_entry_points=False) as system:
        first = await system.create_task("s", executor="script", idempotency_key="k", params={"hold": True})
        again = await system.create_task("s", executor="script", idempotency_key="k", params={"hold": True})
        assert again.id == first.id
        with pytest.raises(IdempotencyConflict):
            await system.create_task("s", executor="script", idempotency_key="k", params={"hold": True}, **changed)
        await system.cancel_task("s", first.id)


async def test_cancel_freezes_progress_in_the_store_at_once() -> None:
    """After a cancel the store refuses the attempt's reports and its outcome."""
    async with TaskSystem([ScriptExecutor], settings=settings(), load_entry_points=False) as system:
        task = await system.create_task("s", executor="script", params={"hold": True})
        await wait_for(system, "s", task.id, progress=90)
        cancelled = await system.cancel_task("s", task.id)
        assert cancelled.status is TaskStatus.CANCELLED
        assert not await system.store.report_progress("s", task.id, 1, 95, None, None)
        ScriptExecutor.release(task.id)
        await anyio.wait_all_tasks_blocked()
        final = await system.get_task("s", task.id)
        assert (final.status, final.progress, final.result) == (TaskStatus.CANCELLED, 90, None)

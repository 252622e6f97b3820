"""The `sample` executor: timed steps, zero delay, bounds, prompt cancellation."""

from __future__ import annotations

import time

import anyio
import anyio.lowlevel
import msgspec
import pytest

from async_tasks.progress import ProgressReporter
from async_tasks.testing import make_task, run_executor
from executors.sample import MAX_DELAY_MS, SampleExecutor, SampleParams


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record every anyio.sleep the executor asks for, without waiting."""
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    return recorded


STEP_NAMES = ["Initializing", "Loading Data", "Processing Data", "Generating Results", "Finalizing"]


async def test_zero_delay_completes_without_sleeping(sleeps: list[float]) -> None:
    started = time.monotonic()
    run = await run_executor(SampleExecutor, {"delayMs": 0})
    assert time.monotonic() - started < 0.5
    assert sleeps == []
    assert run.result == {"message": "Sample task completed", "delayMs": 0, "steps": 5}
    assert run.steps == STEP_NAMES
    # With no time to show them in, no intermediate percentages: each step once, then 100.
    assert [r.percent for r in run.reports] == [0, 20, 40, 60, 80, 100]


async def test_delay_is_spread_over_the_steps(sleeps: list[float]) -> None:
    run = await run_executor(SampleExecutor, {"delayMs": 1000})
    assert sum(sleeps) == pytest.approx(1.0)
    assert len(sleeps) == 20 and len(set(sleeps)) == 1
    assert len(run.reports) == 21  # four percentages a step, then 100
    assert run.result["delayMs"] == 1000
    assert run.steps == STEP_NAMES
    # Each step is entered at its declared percent and keeps its description.
    for step in SampleExecutor.steps:
        first = next(r for r in run.reports if r.step == step.name)
        assert first.percent == step.at
        assert first.description == step.description


async def test_seed_step_description_and_default_delay(sleeps: list[float]) -> None:
    run = await run_executor(SampleExecutor)
    assert run.result["delayMs"] == 3000
    assert sum(sleeps) == pytest.approx(3.0)
    processing = [r for r in run.reports if r.step == "Processing Data"]
    assert {r.description for r in processing} == {"Analyzing input data and preparing output"}
    assert 45 in [r.percent for r in processing]


def test_delay_bounds_are_in_the_schema() -> None:
    schema = msgspec.json.schema(SampleParams)
    props = schema["$defs"]["SampleParams"]["properties"]["delayMs"]
    assert props["minimum"] == 0
    assert props["maximum"] == MAX_DELAY_MS == 120_000
    assert props["default"] == 3000
    assert "description" in props
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"delayMs": MAX_DELAY_MS + 1}, SampleParams)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"delayMs": -1}, SampleParams)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"delay": 5}, SampleParams)


async def test_cancel_is_prompt_during_a_long_step() -> None:
    executor = SampleExecutor.from_environ({})
    task = make_task(executor, {"delayMs": MAX_DELAY_MS})
    first_report = anyio.Event()
    reports: list[tuple[float, str | None]] = []

    async def sink(percent: float, step: str | None, description: str | None) -> bool:
        reports.append((percent, step))
        first_report.set()
        return True

    reporter = ProgressReporter(sink, SampleExecutor.steps)
    finished = False
    started = time.monotonic()
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                nonlocal finished
                await executor.execute(task, reporter)
                finished = True

            tg.start_soon(run)
            await first_report.wait()
            tg.cancel_scope.cancel()
    assert time.monotonic() - started < 1
    assert not finished
    assert reports == [(0, "Initializing")]


async def test_cancel_when_blocked_in_sleep() -> None:
    """Cancelled once every task is blocked, i.e. while the executor sleeps."""
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_executor, SampleExecutor, {"delayMs": MAX_DELAY_MS})
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()

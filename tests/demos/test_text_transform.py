"""The worked example executor, tested the way DEMO_GUIDE.md shows."""

from __future__ import annotations

import msgspec
import pytest

from async_tasks.testing import run_executor
from demos.text_transform import TextTransformExecutor


async def test_reverses_and_appends_length() -> None:
    run = await run_executor(TextTransformExecutor, {"payload": "Hello world!", "delayMs": 0})
    assert run.result["result"] == "!dlrow olleH (len=12)"
    assert run.result["taskId"] == run.task.id
    assert run.steps == ["Reading Payload", "Reversing", "Measuring"]
    assert [r.percent for r in run.reports] == [0, 40, 80]
    assert run.messages == ["Reversed 12 characters"] and run.logs[0].data == {"length": 12}


async def test_empty_payload_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="payload"):
        await run_executor(TextTransformExecutor, {"payload": ""})


async def test_steps_follow_the_clock() -> None:
    """The guide's FakeClock example: the executor's waits move only with the clock."""
    from functools import partial

    import anyio

    from async_tasks.testing import FakeClock

    clock = FakeClock()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(run_executor, TextTransformExecutor, {"payload": "abc", "delayMs": 1000}, clock=clock))
        await clock.wait_for_sleepers(1)
        clock.advance(1)
        await clock.wait_for_sleepers(1)
        clock.advance(1)
    assert clock.sleeps == [1.0, 1.0]

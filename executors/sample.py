"""`sample`: a timed walk through five named steps — the first demo to show.

It does no real work: it shows what a client polling ``/status`` sees while a task
runs (moving progress, step names and descriptions). The whole run takes
``delayMs`` milliseconds, spread evenly over the five steps; each step reports a
few intermediate percentages so progress moves smoothly. ``delayMs: 0`` finishes
at once without sleeping, reporting each step once (there is no time to show
intermediate percentages in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec

from async_tasks import Step, TaskExecutor, TaskParams

if TYPE_CHECKING:
    from async_tasks import Progress, Task

#: The documented maximum of ``delayMs`` (two minutes).
MAX_DELAY_MS = 120_000
#: Progress reports per step (each followed by a sleep of delayMs / (5 * TICKS)).
TICKS_PER_STEP = 4


class SampleParams(TaskParams):
    """Parameters of the `sample` executor."""

    delay_ms: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=MAX_DELAY_MS,
            description=(
                "Total run time in milliseconds, spread evenly over the five steps "
                f"(0 finishes at once; at most {MAX_DELAY_MS})."
            ),
        ),
    ] = 3000


class SampleExecutor(TaskExecutor[SampleParams]):
    """Walks through five timed steps; the result echoes the delay."""

    name = "sample"
    title = "Sample Long-Running Task"
    description = (
        "A timed walk through five named steps (Initializing → Finalizing) taking "
        "`delayMs` milliseconds in total. Shows live progress without doing real work."
    )
    steps: ClassVar[tuple[Step, ...]] = (
        Step("Initializing", "Setting up the task environment", at=0),
        Step("Loading Data", "Loading the input data set", at=20),
        Step("Processing Data", "Analyzing input data and preparing output", at=40),
        Step("Generating Results", "Building the result summary", at=60),
        Step("Finalizing", "Cleaning up and saving the results", at=80),
    )

    async def execute(self, task: Task[SampleParams], progress: Progress) -> dict[str, Any]:
        params = task.params
        steps = type(self).steps
        ticks = TICKS_PER_STEP if params.delay_ms else 1
        tick_seconds = params.delay_ms / 1000 / (len(steps) * ticks)
        for index, step in enumerate(steps):
            end = steps[index + 1].at if index + 1 < len(steps) else 100
            await progress.log(f"{step.name}: {step.description}")
            for tick in range(ticks):
                percent = step.at + (end - step.at) * tick / ticks
                await progress(percent, step.name, step.description)
                if tick_seconds > 0:
                    await self.sleep(tick_seconds)
        last = steps[-1]
        await progress(100, last.name, "Sample task completed")
        return {"message": "Sample task completed", "delayMs": params.delay_ms, "steps": len(steps)}

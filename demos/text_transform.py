"""`text-transform`: the worked example of writing an executor.

Reverses a payload and appends its length (``"Hello world!"`` →
``"!dlrow olleH (len=12)"``) and returns a result object ``{taskId, result,
processedAt}``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from async_tasks import Progress, Step, Task, TaskExecutor, TaskParams


class TextTransformParams(TaskParams):
    payload: Annotated[str, msgspec.Meta(min_length=1, max_length=10_000, description="The text to transform.")]
    delay_ms: Annotated[int, msgspec.Meta(ge=0, le=10_000, description="Pause per step, to watch it move.")] = 500


class TextTransformExecutor(TaskExecutor[TextTransformParams]):
    name = "text-transform"
    title = "Text Transform"
    description = "Reverses a payload and appends its length."
    steps = (
        Step("Reading Payload", "Decoding the submitted text", at=0),
        Step("Reversing", "Reversing the characters", at=40),
        Step("Measuring", "Counting the characters", at=80),
    )

    async def execute(self, task: Task[TextTransformParams], progress: Progress) -> dict[str, Any]:
        params = task.params
        await progress(0)
        await self.sleep(params.delay_ms / 1000)
        await progress(40)
        reversed_text = params.payload[::-1]
        await progress.log(f"Reversed {len(params.payload)} characters", data={"length": len(params.payload)})
        await self.sleep(params.delay_ms / 1000)
        await progress(80)
        result = f"{reversed_text} (len={len(params.payload)})"
        return {"taskId": task.id, "result": result, "processedAt": datetime.now(UTC).isoformat()}

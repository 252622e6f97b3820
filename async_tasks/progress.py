"""The narrow handle an executor reports progress through.

One `ProgressReporter` exists per attempt. It checks each report (a number in
0..100; a lower number than the last keeps the last, so progress never moves
back), names the step from the executor's declared steps when the report does not,
and hands the report to a sink (the store in the server, a recorder in tests).
Each report is a cancellation point, so cancelling a task that reports progress
takes effect at once even if the executor never sleeps.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import anyio
import anyio.from_thread
import anyio.lowlevel

from async_tasks.executor import Step

#: Receives (percent, step, description) for each accepted report.
ProgressSink = Callable[[float, str | None, str | None], None]


class AttemptEnded(Exception):
    """Raised inside a blocking executor's thread when its attempt is over (cancelled
    or timed out): the next progress call stops the thread's work."""


def _checkpoint_function() -> Callable[[], Awaitable[None]]:
    """The running event loop's checkpoint: what `anyio.lowlevel.checkpoint` awaits,
    without the look-up of the current async library it repeats on every call (about
    a quarter of a checkpoint's cost). Resolved once per reporter, inside the event loop."""
    try:
        from anyio._core._eventloop import get_async_backend

        return get_async_backend().checkpoint
    except Exception:  # an anyio without this private helper: the public function
        return anyio.lowlevel.checkpoint


class ProgressReporter:
    def __init__(self, sink: ProgressSink, steps: Sequence[Step] = (), start: float = 0) -> None:
        self._sink = sink
        self._steps = steps
        self.percent = start
        self.closed = False
        self._checkpoint: Callable[[], Awaitable[None]] | None = None

    def _apply(self, percent: float, step: str | None, description: str | None) -> None:
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not math.isfinite(percent):
            raise ValueError(f"progress must be a number from 0 to 100, got {percent!r}")
        if percent < 0 or percent > 100:
            raise ValueError(f"progress must be from 0 to 100, got {percent!r}")
        if self.closed:
            raise AttemptEnded("this attempt has ended; progress is no longer accepted")
        percent = max(self.percent, percent)
        # Whole numbers stay ints so clients see `45`, not `45.0`.
        percent = int(percent) if float(percent).is_integer() else round(percent, 2)
        if step is None and self._steps:
            current = None
            for declared in self._steps:
                if declared.at <= percent:
                    current = declared
            if current is not None:
                step = current.name
                description = current.description if description is None else description
        self.percent = percent
        self._sink(percent, step, description)

    async def __call__(self, percent: float, step: str | None = None, description: str | None = None) -> None:
        self._apply(percent, step, description)
        checkpoint = self._checkpoint
        if checkpoint is None:
            checkpoint = self._checkpoint = _checkpoint_function()
        await checkpoint()

    @asynccontextmanager
    async def step(self, name: str, description: str = "", *, end: float | None = None) -> AsyncIterator[None]:
        """Mark a named step for the duration of the block; report `end` when it exits."""
        await self(self.percent, name, description)
        yield
        if end is not None:
            await self(end, name, description)

    def close(self) -> None:
        self.closed = True


class ThreadProgress:
    """The sync `progress` a blocking executor gets: each call crosses to the loop."""

    def __init__(self, reporter: ProgressReporter) -> None:
        self._reporter = reporter

    def __call__(self, percent: float, step: str | None = None, description: str | None = None) -> None:
        if self._reporter.closed:
            raise AttemptEnded("this attempt has ended; stop working")
        try:
            anyio.from_thread.run_sync(self._reporter._apply, percent, step, description)
        except RuntimeError as exc:  # the event loop is gone (shutdown)
            raise AttemptEnded(str(exc)) from exc

"""How an executor reports progress: declared steps and the handle it is given.

An executor's `execute` receives a `Progress` (or, when it is a blocking ``def``, a
`SyncProgress`) and calls it between steps::

    await progress(25)                                   # a percent; the step is named from `steps`
    await progress(50, "Loading", "Reading the input")   # a percent, a step name and a description
    async with progress.step("Saving", "Writing the result", end=100):
        ...
    await progress.log("Read 4 096 bytes")               # a line in the task's log, with its time
    await progress(60, data={"rows": 120})               # a report with partial results (a log line)

One `ProgressReporter` exists per attempt. It checks each report (a number in
0..100; a lower number than the last keeps the last, so progress never moves back),
names the step from the executor's declared steps when the report does not, and
hands it to a sink (the task store in the engine, a recorder in tests). When the
sink refuses the report (the attempt was cancelled or is over), the executor's
next report raises `AttemptEnded`. Cancelling a task that reports progress takes
effect at its next report even if the executor never sleeps: the engine closes the
attempt's reporter as it cancels it, so that report raises `AttemptEnded` at once.
An async report (or log line) also yields to the event loop once at least
`YIELD_EVERY` has passed since the attempt last did, so an executor that never
sleeps still lets requests (a cancel among them) and other tasks run, and its
deadline is checked there. A short run of reports does not yield at each one: a
zero-delay task with a dozen reports runs as one step of the event loop instead of
a dozen, and the requests of a burst do not wait behind the loop turns of the
attempts it started.

Log lines (`log`, and `data=` on a report) go to a second sink the same way; each is
stamped with the time it was written and checked against TASK_LOG_LINE_BYTES (a long
message is cut short, data too large is a `ValueError`; see `async_tasks.task_log`).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import anyio
import anyio.from_thread
import anyio.lowlevel
import msgspec

from async_tasks.clock import SYSTEM_CLOCK
from async_tasks.task_log import DEFAULT_LINE_BYTES, LogLine, make_line

#: Receives (percent, step, description) of each checked report; answers whether the
#: report was accepted (False once the attempt is over).
ProgressSink = Callable[[float, str | None, str | None], Awaitable[bool]]
#: Receives each checked log line; answers whether it was accepted (False once the attempt is over).
LogSink = Callable[[LogLine], Awaitable[bool]]


class Step(msgspec.Struct, frozen=True):
    """A declared step. `at` is the percent at which it begins.

    When an executor reports only a percent (``await progress(40)``), the task's
    current step becomes the last declared step whose `at` is not above it.
    """

    name: str
    description: str = ""
    at: float = 0


class Progress(Protocol):
    """What an async `execute` receives to report progress."""

    async def __call__(
        self, percent: float, step: str | None = None, description: str | None = None, *, data: Any = None
    ) -> None:
        """Report `percent` (0-100, never lower than before), optionally naming the step;
        `data` (small, JSON) adds a log line carrying it as partial results, its message
        the report's description (or step)."""
        ...

    def step(self, name: str, description: str = "", *, end: float | None = None) -> AbstractAsyncContextManager[None]:
        """Mark a named step for the duration of a block; report `end` when it exits."""
        ...

    async def log(self, message: str, *, data: Any = None) -> None:
        """Add a line to the task's log, stamped with the time, optionally with `data`
        (small structured partial results, any JSON value). Clients see it live."""
        ...


class SyncProgress(Protocol):
    """What a blocking ``def execute`` receives; each call crosses back to the event loop."""

    def __call__(
        self, percent: float, step: str | None = None, description: str | None = None, *, data: Any = None
    ) -> None: ...

    def log(self, message: str, *, data: Any = None) -> None:
        """Add a line to the task's log (see `Progress.log`)."""
        ...


class AttemptEnded(Exception):
    """Raised by a progress report once the attempt is over (cancelled, timed out or
    taken over elsewhere): the executor's work is no longer wanted."""


#: Seconds: an attempt's reports and log lines yield to the event loop at most this often.
YIELD_EVERY = 0.001


async def _discard(line: LogLine) -> bool:
    return True


class ProgressReporter:
    """The `Progress` of one attempt.

    `log_sink` receives its log lines (by default they are checked and discarded), each
    at most `line_bytes` and stamped by `now_ms` (the engine's clock).
    """

    # One per running attempt: slots keep it to its fields (no per-instance dict).
    __slots__ = ("_line_bytes", "_log_sink", "_now_ms", "_sink", "_steps", "_yield_at", "closed", "percent")

    def __init__(
        self,
        sink: ProgressSink,
        steps: Sequence[Step] = (),
        start: float = 0,
        *,
        log_sink: LogSink = _discard,
        line_bytes: int = DEFAULT_LINE_BYTES,
        now_ms: Callable[[], int] = SYSTEM_CLOCK.now_ms,
    ) -> None:
        self._sink = sink
        self._steps = steps
        self._log_sink = log_sink
        self._line_bytes = line_bytes
        self._now_ms = now_ms
        self.percent = start
        self.closed = False
        #: When the next report yields (monotonic seconds); None until the first report.
        self._yield_at: float | None = None

    def _check(self, percent: float, step: str | None, description: str | None) -> tuple[float, str | None, str | None]:
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not math.isfinite(percent):
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
        return percent, step, description

    async def report(
        self, percent: float, step: str | None = None, description: str | None = None, *, data: Any = None
    ) -> None:
        """Check and record a report (and its `data` line), without the cancellation point
        of ``__call__``."""
        percent, step, description = self._check(percent, step, description)
        line = None if data is None else self._line(description or step or f"{percent}%", data)
        self.percent = percent
        if not await self._sink(percent, step, description):
            self.closed = True
            raise AttemptEnded("this attempt has ended; progress is no longer accepted")
        if line is not None:
            await self._store_line(line)

    async def __call__(
        self, percent: float, step: str | None = None, description: str | None = None, *, data: Any = None
    ) -> None:
        await self.report(percent, step, description, data=data)
        await self._pause()

    async def _pause(self) -> None:
        """Yield to the event loop (a cancellation point) once the attempt has run
        `YIELD_EVERY` since its first report or since it last yielded here (counted from
        when it got the loop back: on a busy loop a turn is longer than that, and counting
        the turn would make every report yield again); an attempt the engine cancelled
        meanwhile fails its next report anyway (its reporter is closed)."""
        now = time.monotonic()
        if self._yield_at is None:
            self._yield_at = now + YIELD_EVERY
        elif now >= self._yield_at:
            await anyio.lowlevel.checkpoint()
            self._yield_at = time.monotonic() + YIELD_EVERY

    def _line(self, message: str, data: Any) -> LogLine:
        if self.closed:
            raise AttemptEnded("this attempt has ended; its log is closed")
        return make_line(message, data, self._now_ms(), self._line_bytes)

    async def _store_line(self, line: LogLine) -> None:
        if not await self._log_sink(line):
            self.closed = True
            raise AttemptEnded("this attempt has ended; its log is closed")

    async def add_line(self, message: str, *, data: Any = None) -> None:
        """Check and record a log line, without the cancellation point of `log`."""
        await self._store_line(self._line(message, data))

    async def log(self, message: str, *, data: Any = None) -> None:
        await self.add_line(message, data=data)
        await self._pause()

    @asynccontextmanager
    async def step(self, name: str, description: str = "", *, end: float | None = None) -> AsyncIterator[None]:
        await self(self.percent, name, description)
        yield
        if end is not None:
            await self(end, name, description)

    def close(self) -> None:
        self.closed = True


class ThreadProgress:
    """The `SyncProgress` a blocking executor gets: each call runs the report on the loop."""

    def __init__(self, reporter: ProgressReporter) -> None:
        self._reporter = reporter

    def __call__(
        self, percent: float, step: str | None = None, description: str | None = None, *, data: Any = None
    ) -> None:
        self._run(functools.partial(self._reporter.report, percent, step, description, data=data))

    def log(self, message: str, *, data: Any = None) -> None:
        self._run(functools.partial(self._reporter.add_line, message, data=data))

    def _run(self, call: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._reporter.closed:
            raise AttemptEnded("this attempt has ended; stop working")
        try:
            anyio.from_thread.run(call)
        except RuntimeError as exc:  # the event loop is gone (shutdown)
            raise AttemptEnded(str(exc)) from exc

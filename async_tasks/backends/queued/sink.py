"""An attempt's progress and log sink: coalesced writes to a queued backend's store.

An executor may report progress and write log lines as fast as it likes; the store (Redis,
PostgreSQL) sees at most one write per task per window (`Coalescer`), carrying the latest
report and the lines written meanwhile, and one task per worker makes those writes
(`Flusher`). What is still held when the attempt ends is stored with its outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import anyio

from async_tasks.errors import StoreUnavailable
from async_tasks.task_log import LogLine

if TYPE_CHECKING:
    from async_tasks.backends.queued.store import QueueStore
    from async_tasks.store.base import Report
    from async_tasks.task import Task

logger = logging.getLogger("async_tasks.execution")


def _merge(earlier: Report | None, later: Report) -> Report:
    """Two reports as one, as the store would apply them one after the other."""
    percent, step, description = later
    if earlier is None or step is not None:
        return later
    return percent, earlier[1], description if description is not None else earlier[2]


class Held(NamedTuple):
    """What an attempt's sink holds back: its latest progress report, and the log lines
    written since the last write (`skipped`: older ones it dropped, beyond the task's bound)."""

    report: Report | None = None
    lines: Sequence[LogLine] = ()
    skipped: int = 0


class Coalescer:
    """The progress and log sink of one attempt: at most one store write per window (the
    first a window after the start) carrying the latest report (latest wins) and the lines
    written meanwhile (at most the task's bound of them: older ones are dropped and
    counted, as the store would); what is still held when the attempt ends is stored with
    its outcome. Once the store refuses a write, every later report and line is refused.
    The writes themselves are made by `Flusher`."""

    __slots__ = ("_flusher", "_lines", "_pending", "_skipped", "closed", "due", "key", "last", "max_lines", "refused")

    def __init__(self, flusher: Flusher, task: Task, number: int, max_lines: int) -> None:
        self._flusher = flusher
        self.key = (task.session_key, task.id, number)
        self.last = time.monotonic()
        self._pending: Report | None = None
        self._lines: list[LogLine] = []
        self._skipped = 0
        self.max_lines = max_lines
        self.due = 0.0
        self.refused = False
        self.closed = False

    def _hold(self) -> None:
        if self._pending is None and not self._lines and not self._skipped:
            self.due = self.last + self._flusher.window
            self._flusher.hold(self)

    async def __call__(self, percent: float, step: str | None, description: str | None) -> bool:
        if self.refused:
            return False
        self._hold()
        self._pending = _merge(self._pending, (percent, step, description))
        return True

    async def log(self, line: LogLine) -> bool:
        if self.refused:
            return False
        self._hold()
        self._lines.append(line)
        if len(self._lines) > self.max_lines:  # a flood: the store would drop them anyway
            del self._lines[0]
            self._skipped += 1
        return True

    def pop(self) -> Held:
        held = Held(self._pending, self._lines, self._skipped)
        self._pending, self._lines, self._skipped = None, [], 0
        return held

    def take(self) -> Held:
        """End the sink; what it still holds back, to be stored with the outcome."""
        self.closed = True
        held = self.pop()
        return Held() if self.refused else held


class Flusher:
    """Writes the held-back reports of every attempt of a worker when their window ends
    (one task for all of them, not one per attempt)."""

    def __init__(self, store: QueueStore, window: float) -> None:
        self.store = store
        self.window = window
        self._held: dict[Coalescer, None] = {}
        self._wakeup = anyio.Event()

    def hold(self, sink: Coalescer) -> None:
        self._held[sink] = None
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            while self._held:
                now = time.monotonic()
                due = [sink for sink in self._held if sink.due <= now]
                if not due:
                    with anyio.move_on_after(min(sink.due for sink in self._held) - now):
                        await self._wakeup.wait()
                        self._wakeup = anyio.Event()
                    continue
                for sink in due:
                    del self._held[sink]
                    await self._write(sink)

    async def _write(self, sink: Coalescer) -> None:
        held = sink.pop()
        if (held.report is None and not held.lines and not held.skipped) or sink.closed or sink.refused:
            return
        sink.last = time.monotonic()
        try:
            sink.refused = not await self.store.report(*sink.key, held.report, held.lines, skipped=held.skipped)
        except StoreUnavailable:
            pass  # said once by the store's availability; the next report tries again
        except Exception:
            logger.exception("Could not store the progress of task %s", sink.key[1])

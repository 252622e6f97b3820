"""The one place the task system reads time or waits for it.

Everything that stamps a time or sleeps on a policy (retry backoff, the cleaner's
interval) goes through a `Clock`, so tests swap in `async_tasks.testing.FakeClock`
and advance time instead of waiting for it.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine
from typing import Any

import anyio


class Clock:
    """Wall-clock milliseconds for records, monotonic seconds for durations."""

    #: The last time `now_ms` gave: asked again within the same millisecond, it gives the
    #: same int object, so the timestamps of one burst (a task's created, started and
    #: completed times, its history and log lines) share one object instead of 32 bytes each.
    _last_ms = 0

    def now_ms(self) -> int:
        now = time.time_ns() // 1_000_000
        last = self._last_ms
        if now == last:
            return last
        self._last_ms = now
        return now

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> Coroutine[Any, Any, None]:
        """`anyio.sleep`'s coroutine itself, not one wrapping it: a task sleeping for an
        hour would hold the wrapper's frame (about 200 bytes) all that time."""
        return anyio.sleep(seconds)


SYSTEM_CLOCK = Clock()

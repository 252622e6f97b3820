"""The one place the task system reads time or waits for it.

Everything that stamps a time or sleeps on a policy (retry backoff, the cleaner's
interval) goes through a `Clock`, so tests swap in `async_tasks.testing.FakeClock`
and advance time instead of waiting for it.
"""

from __future__ import annotations

import time

import anyio


class Clock:
    """Wall-clock milliseconds for records, monotonic seconds for durations."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


SYSTEM_CLOCK = Clock()

"""Token buckets in this process: how many actions a name may take per second.

A bucket refills at `rate` tokens a second up to `burst`; taking one answers 0 when
granted, else the seconds until one will be there (none taken). A full bucket is the
same as none, so buckets that have refilled are forgotten: however many names a flood
invents, at most about twice the live ones are kept.
"""

from __future__ import annotations

from typing import Final

from async_tasks.clock import SYSTEM_CLOCK, Clock

#: Buckets held before the full ones are pruned (then twice what is left).
PRUNE_AT: Final = 4096


class TokenBuckets:
    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        #: name -> (tokens, monotonic time of the last update, rate, burst).
        self._buckets: dict[str, tuple[float, float, float, int]] = {}
        self._prune_at = PRUNE_AT

    def take(self, name: str, rate: float, burst: int) -> float:
        """Take one token from bucket `name`: 0 when granted, else the seconds to wait."""
        now = self.clock.monotonic()
        tokens, last, _, _ = self._buckets.get(name, (float(burst), now, rate, burst))
        tokens = min(float(burst), tokens + (now - last) * rate)
        if tokens < 1:
            self._buckets[name] = (tokens, now, rate, burst)
            return (1 - tokens) / rate
        self._buckets[name] = (tokens - 1, now, rate, burst)
        if len(self._buckets) > self._prune_at:
            self.prune()
            self._prune_at = max(PRUNE_AT, 2 * len(self._buckets))
        return 0.0

    def forget(self, name: str) -> None:
        self._buckets.pop(name, None)

    def prune(self) -> None:
        """Forget the buckets that have refilled."""
        now = self.clock.monotonic()
        full = [
            name for name, (tokens, last, rate, burst) in self._buckets.items() if tokens + (now - last) * rate >= burst
        ]
        for name in full:
            del self._buckets[name]

    def __len__(self) -> int:
        return len(self._buckets)

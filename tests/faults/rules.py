"""A fault the proxy applies, and how a test learns that it happened.

The proxy decides in its own thread; the test waits on the rule, from any thread or
event loop, instead of sleeping: `rule.wait()` blocks, `await rule.wait_async()` waits
in a worker thread (anyio), and `rule.fired` is a `threading.Event` set at the first
firing.
"""

from __future__ import annotations

import random
import threading

from tests.faults.commands import Match


class Rule:
    """Lose the reply to a command `match` accepts, `times` times (None: with no
    limit), each time with `probability` (drawn from a generator seeded with `seed`)."""

    def __init__(self, match: Match, *, times: int | None = 1, probability: float = 1.0, seed: int = 0) -> None:
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (or None for no limit), not {times}")
        if not 0 < probability <= 1:
            raise ValueError(f"probability must be in (0, 1], not {probability}")
        self.match = match
        self.probability = probability
        self.fired = threading.Event()
        self._remaining = times
        self._random = random.Random(seed)
        self._count = 0
        self._changed = threading.Condition()

    @property
    def count(self) -> int:
        """How many times the rule has fired."""
        with self._changed:
            return self._count

    def wait(self, count: int = 1, timeout: float = 10) -> None:
        """Block until the rule has fired `count` times in all; `TimeoutError` after `timeout` s."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._count >= count, timeout):
                raise TimeoutError(f"the rule fired {self._count} of {count} times within {timeout} s")

    async def wait_async(self, count: int = 1, limit: float = 10) -> None:
        """`wait` (with `limit` as its timeout) from an async test, in a worker thread so
        that the test's loop keeps running."""
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.wait, count, limit, abandon_on_cancel=True)

    def cancel(self) -> None:
        """Fire no more."""
        with self._changed:
            self._remaining = 0

    def claim(self, commands: list[list[bytes]]) -> bool:
        """Whether the reply answering `commands` is to be lost (and one use taken).
        Called by the proxy; a transaction's EXEC is tried with every queued command."""
        with self._changed:
            if self._remaining == 0 or not any(self.match(sent) for sent in commands):
                return False
            if self.probability < 1 and self._random.random() >= self.probability:
                return False
            if self._remaining is not None:
                self._remaining -= 1
            return True

    def record(self) -> None:
        """Called by the proxy once the reply is gone and the connection closed."""
        with self._changed:
            self._count += 1
            self.fired.set()
            self._changed.notify_all()

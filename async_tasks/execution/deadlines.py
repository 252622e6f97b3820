"""The deadlines of the attempts running in one process, kept by one task.

A cancel scope with a deadline schedules an event-loop timer of its own (in uvloop a
timer handle, its callback and a libuv timer: about 550 bytes), and an attempt holds it
for as long as it runs: an hour, for a task that sleeps. `Deadlines` keeps every
attempt's deadline in one heap instead (about 60 bytes each) and one task, asleep until
the earliest, cancels the scope of each attempt whose deadline has passed, at the same
moment its own timer would have (`anyio.current_time`, the event loop's clock), so
`run_attempt` sees the same timed-out attempt.

An attempt that ends first takes its deadline back (`discard`); the heap drops what was
taken back once it is more than half of it, so a stream of short tasks under a long
timeout does not keep their scopes alive until their deadlines.
"""

from __future__ import annotations

import heapq

import anyio


class Deadline:
    """One attempt's deadline in the heap; `scope` is None once it was taken back."""

    __slots__ = ("at", "scope")

    def __init__(self, at: float, scope: anyio.CancelScope) -> None:
        self.at = at
        self.scope: anyio.CancelScope | None = scope

    def __lt__(self, other: Deadline) -> bool:
        return self.at < other.at


class Deadlines:
    """Attempts' deadlines, watched by one task (`watch`, run for the backend's life)."""

    def __init__(self) -> None:
        self._heap: list[Deadline] = []
        #: Entries in the heap taken back before their time.
        self._discarded = 0
        self._wake: anyio.CancelScope | None = None

    @property
    def held(self) -> int:
        """Entries in the heap: the deadlines watched, and those taken back not yet dropped."""
        return len(self._heap)

    def add(self, scope: anyio.CancelScope, seconds: float) -> Deadline:
        """Cancel `scope` once `seconds` have passed, unless it is `discard`ed first."""
        deadline = Deadline(anyio.current_time() + seconds, scope)
        heapq.heappush(self._heap, deadline)
        if self._heap[0] is deadline and self._wake is not None:
            self._wake.cancel()  # a new earliest: the watcher sleeps until it instead
        return deadline

    def discard(self, deadline: Deadline) -> None:
        """The attempt ended: its deadline no longer matters."""
        if deadline.scope is None:
            return
        deadline.scope = None
        self._discarded += 1
        if self._discarded > len(self._heap) // 2 + 32:
            self._heap = [entry for entry in self._heap if entry.scope is not None]
            heapq.heapify(self._heap)
            self._discarded = 0

    async def watch(self) -> None:
        """Cancel each scope whose deadline has passed; sleep until the next. Runs until cancelled."""
        while True:
            now = anyio.current_time()
            heap = self._heap
            while heap and heap[0].at <= now:
                deadline = heapq.heappop(heap)
                if deadline.scope is None:
                    self._discarded -= 1
                else:
                    deadline.scope.cancel()
                    deadline.scope = None
            try:
                with anyio.CancelScope() as self._wake:
                    if heap:
                        await anyio.sleep(heap[0].at - now)
                    else:
                        await anyio.sleep_forever()
            finally:
                self._wake = None  # (also when the backend stops: a later run watches afresh)

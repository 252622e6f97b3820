"""Where tasks wait in this process (`LocalExecution`): for a slot, or for their time.

`FairQueue`: tasks over a limit wait in their session's own queue (higher `priority`
first, then first come first served: priority orders a session's own tasks, never other
sessions'). A free slot goes to the session with queued work that runs the fewest tasks
(ties: the one waiting longest), and a session starts a task only while it runs fewer
tasks than there are free slots. So however many tasks one session (or a few) queue, the
others always find a slot: a session alone takes at most half the slots, n busy sessions
together at most n/(n+1) of them, and a newcomer's task starts at once. Taking the next
task costs O(log sessions); nothing scans the queue.

`Timeline`: delayed tasks (a retry's backoff, a delayed start) in a heap by due time, so
one timer can sleep until the earliest.

Both skip stale heap entries lazily and drop them once they outnumber the live ones
(amortized O(1)).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

from async_tasks.task import Task

#: (-priority, sequence, task): the order of a session's queue.
Entry = tuple[int, int, Task]


class _SessionQueue:
    """One session's queued tasks, and its place among the sessions waiting for a slot."""

    __slots__ = ("heap", "queued", "ticket")

    def __init__(self) -> None:
        self.heap: list[Entry] = []
        self.queued: dict[str, Entry] = {}
        #: The sequence number of this session's valid entry in `_ready` (None: not there).
        self.ticket: int | None = None


def _may_start(running: int, free: int, per_session: int) -> bool:
    """A session running `running` tasks may start one more with `free` slots free."""
    return running < per_session and running < free


class FairQueue:
    """Tasks waiting for a slot, shared fairly across sessions (see the module docstring).

    `running` is the runner's count of the tasks each session runs (read here only).
    """

    def __init__(self, running: dict[str, int]) -> None:
        self._running = running
        #: Every queued task by id (what cancel, load and shutdown look at).
        self._queued: dict[str, Entry] = {}
        #: Sessions with queued tasks, and the heap that picks the next one to run:
        #: (tasks it runs, ticket, session key); entries whose ticket is stale are skipped.
        self._sessions: dict[str, _SessionQueue] = {}
        self._ready: list[tuple[int, int, str]] = []
        self._seq = itertools.count()

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._queued

    def __len__(self) -> int:
        return len(self._queued)

    def tasks(self) -> list[Task]:
        return [entry[2] for entry in self._queued.values()]

    def clear(self) -> None:
        self._queued.clear()
        self._sessions.clear()
        self._ready.clear()

    def put(self, task: Task) -> None:
        entry = (-task.priority, next(self._seq), task)
        self._queued[task.id] = entry
        queue = self._sessions.get(task.session_key)
        if queue is None:
            queue = self._sessions[task.session_key] = _SessionQueue()
        heapq.heappush(queue.heap, entry)
        queue.queued[task.id] = entry
        if queue.ticket is None:
            self._mark_ready(task.session_key, queue)

    def remove(self, task: Task) -> None:
        """Forget a queued task (its heap entry is skipped when it comes up)."""
        if self._queued.pop(task.id, None) is None:
            return
        queue = self._sessions.get(task.session_key)
        if queue is not None:
            queue.queued.pop(task.id, None)
            if not queue.queued:
                del self._sessions[task.session_key]

    def ran_one(self, session_key: str) -> None:
        """The session runs one task fewer: an earlier turn, if it has queued work."""
        queue = self._sessions.get(session_key)
        if queue is not None:
            self._mark_ready(session_key, queue)

    def _mark_ready(self, key: str, queue: _SessionQueue) -> None:
        """(Re)place the session among those waiting, with the number of tasks it runs now."""
        queue.ticket = ticket = next(self._seq)
        heapq.heappush(self._ready, (self._running.get(key, 0), ticket, key))
        if len(self._ready) > 2 * len(self._sessions) + 64:  # drop the stale entries (amortized O(1))
            self._ready = [item for item in self._ready if (q := self._sessions.get(item[2])) and q.ticket == item[1]]
            heapq.heapify(self._ready)

    def takes_at_once(self, session_key: str, free: int, per_session: int) -> bool:
        """Whether a task of `session_key` added now would be the next taken: nothing is
        queued and the session may start one (the runner then starts it without queueing)."""
        return not self._queued and _may_start(self._running.get(session_key, 0), free, per_session)

    def take(self, free: int, per_session: int) -> Task | None:
        """The next task to start with `free` slots free (taken out of the queue), or None
        when no session may start one now."""
        while self._ready:
            running, ticket, key = self._ready[0]
            queue = self._sessions.get(key)
            if queue is None or queue.ticket != ticket:
                heapq.heappop(self._ready)  # stale: the session's queue emptied or it was re-placed
                continue
            if running != self._running.get(key, 0):
                heapq.heappop(self._ready)
                self._mark_ready(key, queue)
                continue
            # The least busy session with queued work: if it may not start a task, none may.
            if not _may_start(running, free, per_session):
                return None
            heapq.heappop(self._ready)
            queue.ticket = None
            entry = heapq.heappop(queue.heap)
            while queue.queued.get(entry[2].id) is not entry:
                entry = heapq.heappop(queue.heap)  # cancelled while queued
            task = entry[2]
            del queue.queued[task.id]
            del self._queued[task.id]
            if queue.queued:
                self._running[key] = running + 1  # counted now, so its new place is right
                self._mark_ready(key, queue)
                self._running[key] = running
            else:
                del self._sessions[key]
            return task
        return None

    def position(self, task: Task) -> int | None:
        """The place among the task's own session's queued tasks (other sessions'
        activity is not revealed, and does not decide the order)."""
        entry = self._queued.get(task.id)
        queue = self._sessions.get(task.session_key)
        if entry is None or queue is None:
            return None
        return 1 + sum(1 for other in queue.queued.values() if other[:2] < entry[:2])

    def positions(self, session_key: str, tasks: Sequence[Task]) -> dict[str, int]:
        """One sort of the session's queued tasks: O(q log q)."""
        queue = self._sessions.get(session_key)
        wanted = {task.id for task in tasks}
        if queue is None or not wanted.intersection(queue.queued):
            return {}
        ordered = sorted(queue.queued.values(), key=lambda entry: entry[:2])
        return {entry[2].id: place for place, entry in enumerate(ordered, 1) if entry[2].id in wanted}


class Timeline:
    """Tasks waiting for their time: id -> (due ms, task), and the heap of (due, sequence,
    id) a timer sleeps on (stale entries skipped)."""

    def __init__(self) -> None:
        self._delayed: dict[str, tuple[int, Task]] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._seq = itertools.count()

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._delayed

    def due_of(self, task_id: str) -> int | None:
        entry = self._delayed.get(task_id)
        return None if entry is None else entry[0]

    def tasks(self) -> list[Task]:
        return [task for _, task in self._delayed.values()]

    def clear(self) -> None:
        self._delayed.clear()

    def add(self, task: Task, due_ms: int) -> bool:
        """Keep `task` until `due_ms`; whether it is the earliest now (the timer must wake)."""
        self._delayed[task.id] = (due_ms, task)
        heapq.heappush(self._heap, (due_ms, next(self._seq), task.id))
        earliest = self._heap[0][2] == task.id
        if len(self._heap) > 2 * len(self._delayed) + 64:  # drop the stale entries (amortized O(1))
            self._heap = [item for item in self._heap if self._delayed.get(item[2], (None,))[0] == item[0]]
            heapq.heapify(self._heap)
        return earliest

    def remove(self, task_id: str) -> bool:
        """Forget a task; whether it was kept (it may have been the earliest)."""
        return self._delayed.pop(task_id, None) is not None

    def next_due(self) -> int | None:
        """The due time the timer sleeps until (a stale entry's wakes it early: harmless)."""
        return self._heap[0][0] if self._heap else None

    def take_due(self, now: int) -> list[Task]:
        """The delayed tasks due at `now`, out of the heap (and the stale entries before them)."""
        heap = self._heap
        due_now = []
        while heap:
            due, _, task_id = heap[0]
            entry = self._delayed.get(task_id)
            valid = entry is not None and entry[0] == due
            if valid and due > now:
                break
            heapq.heappop(heap)
            if entry is not None and valid:
                del self._delayed[task_id]
                due_now.append(entry[1])
        return due_now

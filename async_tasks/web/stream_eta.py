"""A task stream's ``eta`` events: where its task stands (its place in its session's line,
when it should start and finish: `async_tasks.outlook`), sent when that moved.

`EtaWatch` decides when a stream looks again and whether what it finds is worth an
event; the bridge (`async_tasks.web.streams.StreamBridge`) reads the outlook and
schedules the later looks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final

from async_tasks.events import EtaEvent, EventType
from async_tasks.outlook import Outlook
from async_tasks.task import Task, TaskStatus
from async_tasks.web.frames import Envelope, Frame, encode

if TYPE_CHECKING:
    from async_tasks.web.streams import StreamBridge, StreamSubscriber

#: Where queue positions and estimates come from: ``TaskSystem.outlook``.
OutlookSource = Callable[[str, Sequence[Task]], Awaitable[dict[str, Outlook]]]
#: Seconds between two estimates of a running task on its stream (its progress events
#: ask for one), and between two looks at a waiting task's place (others' transitions ask).
OUTLOOK_RUNNING_EVERY: Final = 2.0
OUTLOOK_WAITING_EVERY: Final = 0.25
#: An estimate that moved less than this (ms, as a time of day) is not sent again.
OUTLOOK_MIN_CHANGE_MS: Final = 1000


class EtaWatch:
    """When a task's stream sends an ``eta`` event (its queue position and estimate), and
    what it last sent: after the snapshot; when the task changes status; while it runs, on
    a progress event at most every `OUTLOOK_RUNNING_EVERY`; while it waits, when another
    task of the session changes status (the line may have moved), at most every
    `OUTLOOK_WAITING_EVERY` (a move sooner than that is looked at when that time is up).
    Sent only when the place, the status or the estimated times moved (by
    `OUTLOOK_MIN_CHANGE_MS` or more)."""

    __slots__ = ("bridge", "last", "looked", "scheduled", "session_key", "status", "subscriber", "task_id")

    def __init__(self, bridge: StreamBridge, session_key: str, task_id: str, subscriber: StreamSubscriber) -> None:
        self.bridge = bridge
        self.session_key = session_key
        self.task_id = task_id
        self.subscriber = subscriber
        self.status = ""
        self.looked = -math.inf
        #: A later look is on its way (`StreamBridge.look_later`).
        self.scheduled = False
        #: (status, attempt, place, starts at, finishes at) of the last event sent.
        self.last: tuple[str, int, int | None, int | None, int | None] | None = None

    def changed_by(self, envelope: Envelope) -> bool:
        """Whether an event of the task itself calls for a fresh look."""
        if envelope.type == EventType.TRANSITION.value or envelope.status != self.status:
            return True
        return envelope.type == EventType.PROGRESS.value and self._due(OUTLOOK_RUNNING_EVERY)

    def moved_by(self, envelope: Envelope) -> bool:
        """Whether another task's event may have moved this one's place in line and calls
        for a look now (too soon after the last one: a look is scheduled instead)."""
        if self.status != TaskStatus.PENDING.value or envelope.type not in MOVES_LINE:
            return False
        if self._due(OUTLOOK_WAITING_EVERY):
            return True
        if not self.scheduled:
            self.scheduled = True
            self.bridge.look_later(self.subscriber, self.looked + OUTLOOK_WAITING_EVERY - time.monotonic())
        return False

    def _due(self, every: float) -> bool:
        return time.monotonic() - self.looked >= every

    async def frame(self, *, own: bool = True) -> Frame | None:
        """The ``eta`` event to send now, if what the task's outlook says changed. Looking
        because another task moved (not `own`), nothing is sent once this task's status has
        changed too: its own event, still on its way to the stream, comes first."""
        bridge = self.bridge
        if bridge.outlook is None:
            return None
        self.looked = time.monotonic()
        task = await bridge.snapshots.task(self.session_key, self.task_id)
        if task is None or not task.is_active or (not own and task.status.value != self.status):
            return None
        self.status = task.status.value
        outlook = await bridge.outlook_of(self.session_key, task)
        place = outlook.queue_position if outlook is not None else None
        guess = outlook.eta if outlook is not None else None
        now = bridge.store.clock.now_ms()
        starts = None if guess is None or guess.starts_in_ms is None else now + guess.starts_in_ms
        finishes = None if guess is None else now + guess.finishes_in_ms
        state = (self.status, task.attempts, place, starts, finishes)
        said = self.last
        self.last = state
        if said is None and place is None and guess is None:
            return None  # nothing to say (not waiting in line, nothing to estimate from)
        if said is not None and not _moved(said, state):
            return None
        event = EtaEvent(
            task_id=task.id,
            session_key=task.session_key,
            status=self.status,
            attempt=task.attempts,
            at=task.updated_at,
            queue_position=place,
            eta=guess,
        )
        return Frame(EventType.ETA.value, encode(event))


def _moved(
    before: tuple[str, int, int | None, int | None, int | None],
    after: tuple[str, int, int | None, int | None, int | None],
) -> bool:
    if before[:3] != after[:3]:
        return True
    for old, new in zip(before[3:], after[3:], strict=True):
        if (old is None) != (new is None) or (
            old is not None and new is not None and abs(new - old) >= OUTLOOK_MIN_CHANGE_MS
        ):
            return True
    return False


#: Events of other tasks that can move a waiting task's place in its session's line.
MOVES_LINE: Final = frozenset({EventType.TRANSITION.value, EventType.REMOVED.value})

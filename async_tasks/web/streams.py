"""Push streams: task events to SSE and WebSocket clients, through Litestar channels.

    store ──TaskEvent/LogEvent──▶ EventHub ──▶ StreamBridge ──▶ ChannelsPlugin channel ``session:<key>``
                                                        └──▶ one Subscriber per open stream ──▶ SSE / WS

The bridge is an `EventHub` listener. It forwards the events of a session only
while that session has an open stream, and it is attached to the hub only while
some stream is open: with no stream anywhere it costs nothing (the store builds
events only when the hub has a listener); with streams in other sessions, one dict
lookup per event.

* **Coalescing.** Progress events are throttled per task: the first report after a
  quiet `coalesce_window` goes out at once, later ones inside the window collapse
  into one pending event (latest wins) sent when the window ends. Log events are
  batched the same way: the lines written inside the window go out as one ``log``
  event (none is lost; the store's bounds already apply). Transitions and removals are
  never coalesced and always flush the task's pending lines and progress first, so a
  client sees the order the store produced.
* **Back-pressure.** Each open stream is a channels `Subscriber` with a bounded
  backlog (`max_backlog`, ``dropleft``). Overflow is counted in
  `events_dropped_total`; a stream that lost events re-synchronises by sending fresh
  `snapshot` events from the store, so a slow client ends up right, just coarser.
* **Consistency.** A stream first yields `OPENED` once it is subscribed (the HTTP
  layer waits for it before sending the response headers, so a client holding the
  headers misses nothing). Every forwarded event carries a sequence number taken
  when the store produced it; a stream sends its snapshots, then only events newer
  than them, so a snapshot is never followed by an older state.
* **Across processes** (the Redis backend): the store itself publishes every change on
  the session's channel with a global sequence number, and the bridge only subscribes
  (`shared`); a stream's floor is the sequence its snapshots were read at, and a
  channel that reconnected (`resync`) sends fresh snapshots to every open stream.
* **Bounded, fairly, and cheap.** At most `max_streams` streams are open at once,
  `max_streams_per_session` in one session and `max_streams_per_client` for one client
  (an address: `async_tasks.clients`) (MAX_STREAMS, MAX_STREAMS_PER_SESSION,
  MAX_STREAMS_PER_CLIENT): beyond, opening one raises `QuotaExceeded` (429), except
  that when all `max_streams` are open, a client holding fewer than the largest holder
  gets in and that holder's oldest stream ends (it gets an ``error`` event,
  ``stream_evicted``, and may reconnect later). Streams opened through share links
  (``shared``) count against the viewer's client and against a cap of their own per
  session, never against the session's own streams: viewers cannot lock the owner
  out. Each event is encoded once for all its subscribers: the channel message is
  decoded once (cached by its bytes) into a `Frame` that carries the SSE lines and
  the WebSocket text ready to send. The caps count this process's streams (with
  Redis, each API process has its own): what a stream holds, a socket, memory and a
  share of the event loop, is the process's.
* **A session that ends** (forgotten by the store when idle, or to make room:
  `EventHub.on_session_ended`; on Redis, an ``ended`` envelope on its channel) ends
  its streams, ticketed ones included.
* **Shutdown.** `close()` sets `closing`, stops forwarding and ends every open
  stream at once. The plugin calls it when shutdown begins (SIGTERM through
  `AsyncTasksPlugin.request_shutdown`, or the end of the lifespan), before the
  runner cancels tasks, so open streams never hold the server open.

Channels runs on asyncio (``asyncio.Queue`` and tasks), like the rest of the server.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, NamedTuple

import anyio
import anyio.abc
import msgspec
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.base import ChannelsBackend
from litestar.channels.backends.memory import MemoryChannelsBackend
from litestar.channels.subscriber import BacklogStrategy, Subscriber

from async_tasks.clients import fair_victims
from async_tasks.errors import QuotaExceeded, TaskNotFound
from async_tasks.events import EtaEvent, Event, EventHub, EventType, LogEvent, SnapshotEvent
from async_tasks.store.base import TaskFilter, TaskStore
from async_tasks.system import Outlook
from async_tasks.task import TERMINAL, Task, TaskStatus

if TYPE_CHECKING:
    from async_tasks.backends import EventSource

logger = logging.getLogger("async_tasks.streams")

#: Seconds between keep-alive comments on an idle SSE stream.
KEEPALIVE_INTERVAL: Final = 15.0
#: Seconds: at most one progress event per task per window reaches clients.
COALESCE_WINDOW: Final = 0.1
#: Events held for one stream that is not reading fast enough; older ones are dropped.
MAX_BACKLOG: Final = 1000
CHANNEL_PREFIX: Final = "session:"
#: Decoded channel messages kept so each is decoded once for all its streams.
FRAME_CACHE_SIZE: Final = 4096

_TERMINAL_VALUES: Final = frozenset(status.value for status in TERMINAL)
_KEEPALIVE_ITEM: Final = b""  # never a valid envelope
_RESYNC_ITEM: Final = b"resync"  # nor this
_LOOK_ITEM: Final = b"look"  # nor this: a task's stream looks again at where its task stands
_EVICTED_ITEM: Final = b"evicted"  # nor this
#: The envelope type announcing that a session ended (its streams end).
ENDED: Final = "ended"
#: Seconds an evicted stream is told to wait before it reconnects.
EVICTED_RETRY_AFTER: Final = 30


class StreamEvicted(QuotaExceeded):
    """A stream ended to let another client's in: the server was at MAX_STREAMS and this
    stream's client held the most."""

    code = "stream_evicted"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The server had all its {limit} streams open (MAX_STREAMS) and another address needed one; yours "
            "held the most, so its oldest stream ended. Reconnect later, or poll /tasks/{id}/status.",
            retry_after=EVICTED_RETRY_AFTER,
            details={"limit": limit, "setting": "MAX_STREAMS"},
        )


class Frame(NamedTuple):
    """One message of a stream: the event type and the event's JSON (camelCase); for
    forwarded events also the SSE ``event:``/``data:`` lines and the WebSocket text,
    made once for every stream (`sse_lines` makes them for the others)."""

    type: str
    data: bytes
    sse: bytes = b""
    text: str = ""


def sse_lines(frame: Frame) -> bytes:
    """The ``event:`` and ``data:`` lines of `frame` (the JSON is one line) and the blank line."""
    return frame.sse or b"event: " + frame.type.encode() + b"\r\ndata: " + frame.data + b"\r\n\r\n"


def shared_frame(type: str, data: bytes) -> Frame:
    """A frame every stream of a session sends as is."""
    frame = Frame(type, data)
    return Frame(type, data, sse_lines(frame), data.decode())


#: Yielded by an SSE stream when it has been idle (the SSE layer writes a comment).
KEEPALIVE: Final = Frame("keep-alive", b"")
#: The first item of every stream, once it is subscribed: whatever happens from then
#: on reaches it. The HTTP layer waits for it before sending the response headers.
OPENED: Final = Frame("opened", b"")


#: Where queue positions and estimates come from: ``TaskSystem.outlook``.
OutlookSource = Callable[[str, Sequence[Task]], Awaitable[dict[str, Outlook]]]
#: Seconds between two estimates of a running task on its stream (its progress events
#: ask for one), and between two looks at a waiting task's place (others' transitions ask).
OUTLOOK_RUNNING_EVERY: Final = 2.0
OUTLOOK_WAITING_EVERY: Final = 0.25
#: An estimate that moved less than this (ms, as a time of day) is not sent again.
OUTLOOK_MIN_CHANGE_MS: Final = 1000


class _Outlook:
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

    def changed_by(self, envelope: _Envelope) -> bool:
        """Whether an event of the task itself calls for a fresh look."""
        if envelope.type == EventType.TRANSITION.value or envelope.status != self.status:
            return True
        return envelope.type == EventType.PROGRESS.value and self._due(OUTLOOK_RUNNING_EVERY)

    def moved_by(self, envelope: _Envelope) -> bool:
        """Whether another task's event may have moved this one's place in line and calls
        for a look now (too soon after the last one: a look is scheduled instead)."""
        if self.status != TaskStatus.PENDING.value or envelope.type not in _MOVES_LINE:
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
        task = await bridge._task(self.session_key, self.task_id)
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
        return Frame(EventType.ETA.value, _encode(event))


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
_MOVES_LINE: Final = frozenset({EventType.TRANSITION.value, EventType.REMOVED.value})


class _Envelope(msgspec.Struct, array_like=True, gc=False):
    """What travels through the channel: routing fields and the encoded event."""

    seq: int
    task_id: str
    type: str
    status: str
    attempt: int
    event: msgspec.Raw


class _Status(msgspec.Struct):
    status: str


_encode = msgspec.json.Encoder().encode
_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_status = msgspec.json.Decoder(_Status).decode


class StreamSubscriber(Subscriber):
    """A channels subscriber that counts what its bounded backlog drops."""

    def __init__(
        self,
        plugin: ChannelsPlugin,
        max_backlog: int | None = None,
        backlog_strategy: BacklogStrategy = "backoff",
    ) -> None:
        super().__init__(plugin, max_backlog, backlog_strategy)
        self.max_backlog = max_backlog or 0
        #: Events lost by this subscriber (its backlog was full).
        self.dropped = 0
        #: Whether the stream wants keep-alive items when idle (SSE does, WS does not).
        self.keepalive = False
        self.on_drop: Callable[[], None] | None = None

    def put_nowait(self, item: bytes | None) -> bool:
        if item and self.max_backlog and self.qsize >= self.max_backlog:
            # "dropleft" discards the oldest item, "backoff" refuses this one: one lost either way.
            self.dropped += 1
            if self.on_drop is not None:
                self.on_drop()
        return super().put_nowait(item)


class _Session:
    """Bookkeeping of one session with at least one open stream."""

    __slots__ = ("channel", "key", "last_sent", "shared_streams", "streams", "subscribers")

    def __init__(self, key: str, channel_prefix: str = CHANNEL_PREFIX) -> None:
        self.key = key
        self.channel = channel_prefix + key
        self.subscribers: set[StreamSubscriber] = set()
        #: Streams open or opening here (counted before subscribing, for the caps): the
        #: session's own, and those opened through its share links.
        self.streams = 0
        self.shared_streams = 0
        #: (task id, event type) -> monotonic time its last progress or log event went out
        #: (coalescing only).
        self.last_sent: dict[tuple[str, EventType], float] = {}


class _Stream:
    """One open (or opening) stream, as the caps count it."""

    __slots__ = ("client", "evicted", "released", "session", "shared", "subscriber")

    def __init__(self, session: _Session, client: str, shared: bool) -> None:
        self.session = session
        self.client = client
        self.shared = shared
        self.subscriber: StreamSubscriber | None = None
        self.evicted = False
        self.released = False


class _Pending:
    """A task's progress event held back by coalescing (the latest), or its log lines (all
    of them, as one event)."""

    __slots__ = ("due", "event", "seq", "session")

    def __init__(self, session: _Session, event: Event, seq: int, due: float) -> None:
        self.session = session
        self.event = event
        self.seq = seq
        self.due = due

    def add(self, event: Event, seq: int) -> None:
        """A later event of the same kind: progress replaces, lines join the batch."""
        if isinstance(event, LogEvent) and isinstance(self.event, LogEvent):
            lines = [*self.event.lines, *event.lines]
            event = msgspec.structs.replace(event, lines=lines[-MAX_BATCHED_LINES:])
        self.event, self.seq = event, seq


#: Log lines held for one task inside a coalescing window (a flood keeps the newest).
MAX_BATCHED_LINES: Final = 10_000
_COALESCED: Final = frozenset({EventType.PROGRESS, EventType.LOG})


class StreamBridge:
    """Forwards task events to the open push streams of their session."""

    def __init__(
        self,
        store: TaskStore,
        *,
        coalesce_window: float = COALESCE_WINDOW,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        max_backlog: int = MAX_BACKLOG,
        backend: ChannelsBackend | None = None,
        max_streams: int | None = None,
        max_streams_per_session: int | None = None,
        max_streams_per_client: int | None = None,
        shared: EventSource | None = None,
        outlook: OutlookSource | None = None,
    ) -> None:
        """
        Args:
            store: where snapshots come from; its `EventHub` is where events come from.
            coalesce_window: seconds; 0 forwards every progress event.
            keepalive_interval: seconds between keep-alives on idle SSE streams.
            max_backlog: events held per stream before the oldest are dropped.
            backend: the channels backend (in-memory by default; `shared`'s when given).
            max_streams / max_streams_per_session / max_streams_per_client: open streams
                allowed (None: no cap).
            shared: the backend's event source, when changes happen in other processes
                too (Redis): the bridge then only subscribes to its channels, and takes
                snapshots and floors from it.
            outlook: where a task's queue position and estimate come from
                (`TaskSystem.outlook`): a task's stream sends them as ``eta`` events.
        """
        self.outlook = outlook
        if shared is not None and backend is None:
            backend = shared.channels_backend(on_resubscribe=self.resync)
        self.max_streams = max_streams
        self.max_streams_per_session = max_streams_per_session
        self.max_streams_per_client = max_streams_per_client
        #: Streams open or opening, in all sessions.
        self.open_streams = 0
        #: Each client's open streams, the oldest first.
        self.clients: dict[str, dict[_Stream, None]] = {}
        #: Streams ended to let another client's in (for metrics and tests).
        self.streams_evicted_total = 0
        self._frames: dict[bytes, tuple[_Envelope, Frame]] = {}
        self.store = store
        self.hub: EventHub = store.events
        self.coalesce_window = coalesce_window
        self.keepalive_interval = keepalive_interval
        self.channels = ChannelsPlugin(
            backend=backend or MemoryChannelsBackend(),
            arbitrary_channels_allowed=True,
            subscriber_max_backlog=max_backlog,
            subscriber_backlog_strategy="dropleft",
            subscriber_class=StreamSubscriber,
        )
        #: Sessions with at least one open stream, by session key.
        self.sessions: dict[str, _Session] = {}
        #: Events lost because a stream's backlog was full (for metrics).
        self.events_dropped_total = 0
        #: Progress events replaced by a later one inside the coalescing window.
        self.events_coalesced_total = 0
        #: Events handed to the channels (one per event, whatever the number of streams).
        self.events_published_total = 0
        self.running = False
        self._closing: anyio.Event | None = None
        self._wakeup: anyio.Event | None = None
        self._seq = 0
        self._pending: dict[tuple[str, EventType], _Pending] = {}
        self._tg: anyio.abc.TaskGroup | None = None
        self._detach: Callable[[], None] | None = None
        self.shared = shared
        self.channel_prefix = shared.channel_prefix if shared is not None else CHANNEL_PREFIX

    # -- lifecycle ----------------------------------------------------------------

    @property
    def closing(self) -> anyio.Event:
        """Set when the app shuts down: every stream returns, nothing more is forwarded."""
        if self._closing is None:
            self._closing = anyio.Event()
        return self._closing

    @property
    def subscriber_count(self) -> int:
        """Open streams (SSE and WebSocket) in all sessions."""
        return sum(len(session.subscribers) for session in self.sessions.values())

    def _frame_of(self, raw: bytes) -> tuple[_Envelope, Frame]:
        """The envelope and frame of a channel message, decoded once for all streams."""
        known = self._frames.get(raw)
        if known is None:
            envelope = _decode_envelope(raw)
            known = self._remember(raw, envelope, shared_frame(envelope.type, bytes(envelope.event)))
        return known

    def _remember(self, raw: bytes, envelope: _Envelope, frame: Frame) -> tuple[_Envelope, Frame]:
        frames = self._frames
        if len(frames) >= FRAME_CACHE_SIZE:
            del frames[next(iter(frames))]  # the oldest: streams that far behind decode again
        frames[raw] = known = (envelope, frame)
        return known

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; start with ``await tg.start(bridge.run)`` in the lifespan."""
        self._closing = anyio.Event()
        self._wakeup = anyio.Event()
        await self.channels.__aenter__()
        self.running = True
        if self.shared is None:  # (a shared backend announces ended sessions on their channels)
            self.hub.on_session_ended.append(self._on_session_ended)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._flush_loop)
                tg.start_soon(self._keepalive_loop)
                task_status.started()
        finally:
            if self._on_session_ended in self.hub.on_session_ended:
                self.hub.on_session_ended.remove(self._on_session_ended)
            self._tg = None
            self.close()
            self.running = False
            with anyio.move_on_after(2, shield=True):
                await self.channels.__aexit__(None, None, None)

    def close(self) -> None:
        """End every open stream now and stop forwarding events (idempotent)."""
        self.closing.set()
        self._detach_hub()
        self._pending.clear()
        for session in self.sessions.values():
            for subscriber in session.subscribers:
                subscriber.put_nowait(None)  # ends its iter_events()

    def resync(self) -> None:
        """Make every open stream start again from snapshots (its channel lost messages)."""
        for session in self.sessions.values():
            for subscriber in session.subscribers:
                subscriber.dropped += 1
                subscriber.put_nowait(_RESYNC_ITEM)

    def look_later(self, subscriber: StreamSubscriber, delay: float) -> None:
        """Have a task's stream look again at where its task stands in `delay` seconds."""
        if self._tg is not None:
            self._tg.start_soon(self._wake, subscriber, delay)

    @staticmethod
    async def _wake(subscriber: StreamSubscriber, delay: float) -> None:
        await anyio.sleep(delay)
        subscriber.put_nowait(_LOOK_ITEM)

    def _count_drop(self) -> None:
        self.events_dropped_total += 1

    def _detach_hub(self) -> None:
        if self._detach is not None:
            detach, self._detach = self._detach, None
            detach()

    # -- from the hub: coalescing and forwarding -------------------------------------

    def _on_event(self, event: Event) -> None:
        # Called synchronously inside the store's transition: never raise into it.
        try:
            self._forward(event)
        except Exception:
            logger.exception("Could not forward a %s event of task %s", event.type.value, event.task_id)

    def _forward(self, event: Event) -> None:
        session = self.sessions.get(event.session_key)
        if session is None or not self.running or self.closing.is_set():
            return  # nobody in this session is listening
        self._seq += 1
        seq = self._seq
        task_id = event.task_id
        if event.type in _COALESCED:
            window = self.coalesce_window
            if window > 0:
                key = (task_id, event.type)
                pending = self._pending.get(key)
                if pending is not None:
                    pending.add(event, seq)
                    self.events_coalesced_total += 1
                    return
                now = time.monotonic()
                last = session.last_sent.get(key)
                if last is not None and now - last < window:
                    self._pending[key] = _Pending(session, event, seq, last + window)
                    if self._wakeup is not None:
                        self._wakeup.set()
                    return
                session.last_sent[key] = now
            self._publish(session, event, seq)
            return
        for kind in (EventType.LOG, EventType.PROGRESS):  # held back: they came first
            pending = self._pending.pop((task_id, kind), None)
            if pending is not None:
                self._publish(session, pending.event, pending.seq)
        if event.type is EventType.REMOVED or event.status in _TERMINAL_VALUES:
            for kind in _COALESCED:
                session.last_sent.pop((task_id, kind), None)
        self._publish(session, event, seq)

    def _on_session_ended(self, session_key: str, cause: str) -> None:
        """The store forgot a session: its streams end, after the events already sent."""
        session = self.sessions.get(session_key)
        if session is None or not self.running or self.closing.is_set():
            return
        self._seq += 1
        data = _encode({"type": ENDED, "sessionKey": session_key, "reason": cause})
        self.channels.publish(_encode(_Envelope(self._seq, "", ENDED, "", 0, msgspec.Raw(data))), session.channel)

    def _publish(self, session: _Session, event: Event, seq: int) -> None:
        data = _encode(event)
        envelope = _Envelope(seq, event.task_id, event.type.value, event.status, event.attempt, msgspec.Raw(data))
        raw = _encode(envelope)
        self._remember(raw, envelope, shared_frame(envelope.type, data))
        self.channels.publish(raw, session.channel)
        self.events_published_total += 1

    async def _flush_loop(self) -> None:
        """Send each held-back progress event when its task's window ends."""
        while True:
            assert self._wakeup is not None
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            while self._pending:
                delay = min(pending.due for pending in self._pending.values()) - time.monotonic()
                if delay > 0:
                    await anyio.sleep(delay)
                self._flush_due(time.monotonic())

    def _flush_due(self, now: float) -> None:
        for key, pending in list(self._pending.items()):
            if pending.due <= now:
                del self._pending[key]
                if self.sessions.get(pending.session.key) is pending.session:
                    pending.session.last_sent[key] = now
                    self._publish(pending.session, pending.event, pending.seq)

    async def _keepalive_loop(self) -> None:
        while True:
            await anyio.sleep(self.keepalive_interval)
            for session in list(self.sessions.values()):
                for subscriber in list(session.subscribers):
                    if subscriber.keepalive and subscriber.qsize == 0:
                        subscriber.put_nowait(_KEEPALIVE_ITEM)

    # -- subscriptions ----------------------------------------------------------------

    def _check_caps(self, session: _Session | None, client: str, shared: bool) -> None:
        """Refuse a stream beyond a cap (`QuotaExceeded`), or end the largest holder's oldest
        stream to make room for it in a full server."""
        per_session = self.max_streams_per_session
        held = 0 if session is None else session.shared_streams if shared else session.streams
        if per_session is not None and held >= per_session:
            raise QuotaExceeded(
                f"This task's share links already have {held} open streams (the limit is {per_session}, "
                "MAX_STREAMS_PER_SESSION). Close one first."
                if shared
                else f"This session already has {held} open streams (the limit is {per_session}, "
                "MAX_STREAMS_PER_SESSION). Close one first, or follow several tasks on the session stream.",
                retry_after=5,
                details={"limit": per_session, "setting": "MAX_STREAMS_PER_SESSION"},
            )
        own = len(self.clients.get(client, ()))
        per_client = self.max_streams_per_client
        if per_client is not None and own >= per_client:
            raise QuotaExceeded(
                f"Your address already has {own} open streams (the limit is {per_client}, MAX_STREAMS_PER_CLIENT). "
                "Close one first, or follow several tasks on one session stream.",
                retry_after=5,
                details={"limit": per_client, "setting": "MAX_STREAMS_PER_CLIENT"},
            )
        if self.max_streams is not None and self.open_streams >= self.max_streams:
            others = [streams for key, streams in self.clients.items() if key != client]
            victims = fair_victims(others, len, own, most=1)
            if not victims:
                raise QuotaExceeded(
                    f"The server has {self.open_streams} open streams (the limit is {self.max_streams}, MAX_STREAMS), "
                    "and no address holds more than yours. Try again later, or poll /tasks/{id}/status.",
                    retry_after=5,
                    details={"limit": self.max_streams, "setting": "MAX_STREAMS"},
                )
            self._evict(next(iter(victims[0])))

    def _evict(self, stream: _Stream) -> None:
        """End `stream` to make room: its place is free at once, and it ends with an error
        saying why (`StreamEvicted`) as soon as it reads."""
        self._release(stream)
        stream.evicted = True
        self.streams_evicted_total += 1
        if stream.subscriber is not None:
            stream.subscriber.put_nowait(_EVICTED_ITEM)

    def _release(self, stream: _Stream) -> None:
        """Give `stream`'s places back (once)."""
        if stream.released:
            return
        stream.released = True
        if stream.shared:
            stream.session.shared_streams -= 1
        else:
            stream.session.streams -= 1
        self.open_streams -= 1
        streams = self.clients.get(stream.client)
        if streams is not None:
            streams.pop(stream, None)
            if not streams:
                del self.clients[stream.client]

    @asynccontextmanager
    async def _subscription(
        self, session_key: str, *, keepalive: bool, client: str, shared: bool
    ) -> AsyncIterator[StreamSubscriber]:
        session = self.sessions.get(session_key)
        self._check_caps(session, client, shared)
        if session is None:
            session = self.sessions[session_key] = _Session(session_key, self.channel_prefix)
            if self._detach is None and not self.closing.is_set() and self.shared is None:
                self._detach = self.hub.subscribe(self._on_event)
        stream = _Stream(session, client, shared)
        if shared:
            session.shared_streams += 1
        else:
            session.streams += 1
        self.open_streams += 1
        self.clients.setdefault(client, {})[stream] = None
        subscriber: StreamSubscriber | None = None
        try:
            new = await self.channels.subscribe(session.channel)
            assert isinstance(new, StreamSubscriber)
            subscriber = stream.subscriber = new
            subscriber.keepalive = keepalive
            subscriber.on_drop = self._count_drop
            session.subscribers.add(subscriber)
            if stream.evicted:  # evicted while we subscribed
                subscriber.put_nowait(_EVICTED_ITEM)
            if self.closing.is_set():  # closed while we subscribed: end after the snapshot
                subscriber.put_nowait(None)
            yield subscriber
        finally:
            self._release(stream)
            with anyio.CancelScope(shield=True):
                if subscriber is not None:
                    session.subscribers.discard(subscriber)
                    await self.channels.unsubscribe(subscriber, session.channel)
                    self._forget_channel(session.channel)
                if (
                    not session.streams
                    and not session.shared_streams
                    and not session.subscribers
                    and self.sessions.get(session_key) is session
                ):
                    del self.sessions[session_key]
                    for key in [key for key, p in self._pending.items() if p.session is session]:
                        del self._pending[key]
                    if not self.sessions:
                        self._detach_hub()

    def _forget_channel(self, channel: str) -> None:
        # ChannelsPlugin keeps an empty subscriber set per channel ever used; with one
        # channel per session that would grow with every session that ever streamed.
        known: dict[str, set[Subscriber]] | None = getattr(self.channels, "_channels", None)
        if known is not None and not known.get(channel, True):
            del known[channel]

    # -- streams ----------------------------------------------------------------------

    async def session_stream(
        self, session_key: str, *, keepalive: bool = True, client: str | None = None
    ) -> AsyncGenerator[Frame, None]:
        """`OPENED`, a `snapshot` of each task of the session (oldest first), then its
        events live, until `closing`, the session ends (or the consumer stops). Yields
        `KEEPALIVE` when idle if `keepalive`. It counts against `client`'s streams (None:
        the session is its own client); `StreamEvicted` when it ends to make room."""
        if not self.running or self.closing.is_set():
            yield OPENED
            for frame in await self._snapshots(session_key):
                yield frame
            return
        subscription = self._subscription(session_key, keepalive=keepalive, client=client or session_key, shared=False)
        async with subscription as subscriber:
            yield OPENED
            # Snapshots as late as possible (when the consumer starts reading), and the
            # floor at the same moment: queued events up to it are already in them.
            floor, frames = await self._floor_and_snapshots(session_key)
            for frame in frames:
                yield frame
            seen_drops = 0
            async for raw in subscriber.iter_events():
                if self.closing.is_set() or self._ends(raw):
                    return
                if not raw:
                    yield KEEPALIVE
                    continue
                if subscriber.dropped != seen_drops:
                    # We fell behind and lost events: start again from the store's state.
                    seen_drops = subscriber.dropped
                    floor, frames = await self._floor_and_snapshots(session_key)
                    for frame in frames:
                        yield frame
                    continue
                if raw == _RESYNC_ITEM:
                    continue
                envelope, frame = self._frame_of(raw)
                if envelope.seq > floor:
                    yield frame

    async def task_stream(
        self,
        session_key: str,
        task_id: str,
        *,
        keepalive: bool = True,
        client: str | None = None,
        shared: bool = False,
    ) -> AsyncGenerator[Frame, None]:
        """`OPENED`, a `snapshot` of one task, then its events, ending after the task
        settles: a terminal status it stays in (a failure followed by an automatic
        retry does not end it), or `removed` (or when its session ends). Check the task
        exists (404) first. It counts against `client`'s streams (None: the session is its
        own client) and, opened through a share link (`shared`), against the session's
        shared streams rather than its own."""
        task = await self._task(session_key, task_id)
        if task is None:
            yield OPENED
            return
        if not self.running or self.closing.is_set() or task.status in TERMINAL:
            yield OPENED
            yield self._snapshot(task)
            return
        subscription = self._subscription(session_key, keepalive=keepalive, client=client or session_key, shared=shared)
        async with subscription as subscriber:
            yield OPENED
            floor, snapshot, settled = await self._floor_and_task(session_key, task_id)
            if snapshot is None:  # removed meanwhile
                return
            yield snapshot
            if settled:
                return
            outlook = _Outlook(self, session_key, task_id, subscriber)
            if (ahead := await outlook.frame()) is not None:
                yield ahead
            seen_drops = 0
            async for raw in subscriber.iter_events():
                if self.closing.is_set() or self._ends(raw):
                    return
                if not raw:
                    yield KEEPALIVE
                    continue
                if subscriber.dropped != seen_drops:
                    seen_drops = subscriber.dropped
                    floor, snapshot, settled = await self._floor_and_task(session_key, task_id)
                    if snapshot is None:
                        return
                    yield snapshot
                    if settled:
                        return
                    continue
                if raw == _RESYNC_ITEM:
                    continue
                if raw == _LOOK_ITEM:
                    outlook.scheduled = False
                    if (ahead := await outlook.frame(own=False)) is not None:
                        yield ahead
                    continue
                envelope, frame = self._frame_of(raw)
                if envelope.seq <= floor:
                    continue
                if envelope.task_id != task_id:
                    if outlook.moved_by(envelope) and (ahead := await outlook.frame(own=False)) is not None:
                        yield ahead
                    continue
                yield frame
                if envelope.type == EventType.REMOVED.value:
                    return
                if envelope.status in _TERMINAL_VALUES and await self._settled(session_key, envelope):
                    return
                if outlook.changed_by(envelope) and (ahead := await outlook.frame()) is not None:
                    yield ahead

    async def outlook_of(self, session_key: str, task: Task) -> Outlook | None:
        """The task's queue position and estimate (None without an `outlook` source)."""
        if self.outlook is None:
            return None
        return (await self.outlook(session_key, [task])).get(task.id)

    def _ends(self, raw: bytes) -> bool:
        """Whether a stream ends at this item: its session ended (True); or it was evicted
        (raises `StreamEvicted`)."""
        if raw == _EVICTED_ITEM:
            raise StreamEvicted(self.max_streams or 0)
        return raw not in (_KEEPALIVE_ITEM, _RESYNC_ITEM, _LOOK_ITEM) and self._frame_of(raw)[0].type == ENDED

    async def _settled(self, session_key: str, envelope: _Envelope) -> bool:
        """Whether the task is still where this terminal event left it (no automatic
        or manual retry has moved it on since)."""
        task = await self._task(session_key, envelope.task_id)
        return task is None or (task.status.value == envelope.status and task.attempts == envelope.attempt)

    # -- snapshots ----------------------------------------------------------------------

    async def _task(self, session_key: str, task_id: str) -> Task | None:
        try:
            return await self.store.get(session_key, task_id)
        except TaskNotFound:
            return None

    async def _floor_and_snapshots(self, session_key: str) -> tuple[int, list[Frame]]:
        """`_snapshots` and the sequence number they reflect, read at one moment."""
        if self.shared is None:
            floor = self._seq  # the memory store answers without yielding: the same moment
            return floor, await self._snapshots(session_key)
        seq, events = await self.shared.snapshot(session_key)
        return seq, [Frame(EventType.SNAPSHOT.value, event) for event in reversed(events)]

    async def _floor_and_task(self, session_key: str, task_id: str) -> tuple[int, Frame | None, bool]:
        """One task's snapshot, whether it has settled, and the sequence number they reflect."""
        if self.shared is None:
            floor = self._seq
            task = await self._task(session_key, task_id)
            return floor, None if task is None else self._snapshot(task), task is not None and task.is_terminal
        seq, events = await self.shared.snapshot(session_key, task_id)
        if not events:
            return seq, None, False
        status = _decode_status(events[0]).status
        return seq, Frame(EventType.SNAPSHOT.value, events[0]), status in _TERMINAL_VALUES

    async def _snapshots(self, session_key: str) -> list[Frame]:
        """Snapshots of all the session's tasks, oldest first, read at one moment."""
        page = await self.store.query(session_key, TaskFilter())
        return [self._snapshot(task, whole=False) for task in reversed(page.tasks)]

    @staticmethod
    def _snapshot(task: Task, *, whole: bool = True) -> Frame:
        """A snapshot of `task`: with its whole log on a task's stream, its latest lines on a session's."""
        return Frame(EventType.SNAPSHOT.value, _encode(SnapshotEvent.of_task(task, whole=whole)))

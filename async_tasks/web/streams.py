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
* **Bounded, fairly, and cheap.** MAX_STREAMS, MAX_STREAMS_PER_SESSION and
  MAX_STREAMS_PER_CLIENT cap the open streams, and a full server makes room from the
  largest holder (`async_tasks.web.stream_caps`). Each event is encoded once for all its
  subscribers: the channel message is decoded once (cached by its bytes) into a `Frame`
  that carries the SSE lines and the WebSocket text ready to send
  (`async_tasks.web.frames`).
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
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc
import msgspec
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.base import ChannelsBackend
from litestar.channels.backends.memory import MemoryChannelsBackend
from litestar.channels.subscriber import BacklogStrategy, Subscriber

from async_tasks.events import Event, EventHub, EventType, LogEvent
from async_tasks.outlook import Outlook
from async_tasks.store.base import TaskStore
from async_tasks.task import TERMINAL, Task
from async_tasks.web.frames import KEEPALIVE, OPENED, Envelope, Frame, decode_envelope, encode, shared_frame
from async_tasks.web.snapshots import TERMINAL_VALUES, Snapshots
from async_tasks.web.stream_caps import EVICTED_ITEM, StreamCaps, StreamCounts, StreamEvicted
from async_tasks.web.stream_eta import EtaWatch, OutlookSource

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

_KEEPALIVE_ITEM: Final = b""  # never a valid envelope
_RESYNC_ITEM: Final = b"resync"  # nor this
_LOOK_ITEM: Final = b"look"  # nor this: a task's stream looks again at where its task stands
#: The envelope type announcing that a session ended (its streams end).
ENDED: Final = "ended"


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


class _Session(StreamCounts):
    """Bookkeeping of one session with at least one open stream."""

    __slots__ = ("channel", "key", "last_sent", "subscribers")

    def __init__(self, key: str, channel_prefix: str = CHANNEL_PREFIX) -> None:
        super().__init__()
        self.key = key
        self.channel = channel_prefix + key
        self.subscribers: set[StreamSubscriber] = set()
        #: (task id, event type) -> monotonic time its last progress or log event went out
        #: (coalescing only).
        self.last_sent: dict[tuple[str, EventType], float] = {}


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
        #: MAX_STREAMS, MAX_STREAMS_PER_SESSION and MAX_STREAMS_PER_CLIENT, and who holds what.
        self.caps = StreamCaps(max_streams, max_streams_per_session, max_streams_per_client)
        self._frames: dict[bytes, tuple[Envelope, Frame]] = {}
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
        #: What streams send first: snapshots, and the sequence number they reflect.
        self.snapshots = Snapshots(store, shared, lambda: self._seq)
        self.channel_prefix = shared.channel_prefix if shared is not None else CHANNEL_PREFIX

    # -- lifecycle ----------------------------------------------------------------

    @property
    def closing(self) -> anyio.Event:
        """Set when the app shuts down: every stream returns, nothing more is forwarded."""
        if self._closing is None:
            self._closing = anyio.Event()
        return self._closing

    @property
    def open_streams(self) -> int:
        """Streams open or opening, in all sessions."""
        return self.caps.open_streams

    @property
    def streams_evicted_total(self) -> int:
        """Streams ended to let another client's in (for metrics)."""
        return self.caps.evicted_total

    @streams_evicted_total.setter
    def streams_evicted_total(self, value: int) -> None:
        self.caps.evicted_total = value

    @property
    def subscriber_count(self) -> int:
        """Open streams (SSE and WebSocket) in all sessions."""
        return sum(len(session.subscribers) for session in self.sessions.values())

    def _frame_of(self, raw: bytes) -> tuple[Envelope, Frame]:
        """The envelope and frame of a channel message, decoded once for all streams."""
        known = self._frames.get(raw)
        if known is None:
            envelope = decode_envelope(raw)
            known = self._remember(raw, envelope, shared_frame(envelope.type, bytes(envelope.event)))
        return known

    def _remember(self, raw: bytes, envelope: Envelope, frame: Frame) -> tuple[Envelope, Frame]:
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
        if event.type is EventType.REMOVED or event.status in TERMINAL_VALUES:
            for kind in _COALESCED:
                session.last_sent.pop((task_id, kind), None)
        self._publish(session, event, seq)

    def _on_session_ended(self, session_key: str, cause: str) -> None:
        """The store forgot a session: its streams end, after the events already sent."""
        session = self.sessions.get(session_key)
        if session is None or not self.running or self.closing.is_set():
            return
        self._seq += 1
        data = encode({"type": ENDED, "sessionKey": session_key, "reason": cause})
        self.channels.publish(encode(Envelope(self._seq, "", ENDED, "", 0, msgspec.Raw(data))), session.channel)

    def _publish(self, session: _Session, event: Event, seq: int) -> None:
        data = encode(event)
        envelope = Envelope(seq, event.task_id, event.type.value, event.status, event.attempt, msgspec.Raw(data))
        raw = encode(envelope)
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

    @asynccontextmanager
    async def _subscription(
        self, session_key: str, *, keepalive: bool, client: str, shared: bool
    ) -> AsyncIterator[StreamSubscriber]:
        session = self.sessions.get(session_key)
        self.caps.check(session, client, shared)
        if session is None:
            session = self.sessions[session_key] = _Session(session_key, self.channel_prefix)
            if self._detach is None and not self.closing.is_set() and self.shared is None:
                self._detach = self.hub.subscribe(self._on_event)
        stream = self.caps.open(session, client, shared)
        subscriber: StreamSubscriber | None = None
        try:
            new = await self.channels.subscribe(session.channel)
            assert isinstance(new, StreamSubscriber)
            subscriber = stream.subscriber = new
            subscriber.keepalive = keepalive
            subscriber.on_drop = self._count_drop
            session.subscribers.add(subscriber)
            if stream.evicted:  # evicted while we subscribed
                subscriber.put_nowait(EVICTED_ITEM)
            if self.closing.is_set():  # closed while we subscribed: end after the snapshot
                subscriber.put_nowait(None)
            yield subscriber
        finally:
            self.caps.release(stream)
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
            for frame in await self.snapshots.frames(session_key):
                yield frame
            return
        subscription = self._subscription(session_key, keepalive=keepalive, client=client or session_key, shared=False)
        async with subscription as subscriber:
            yield OPENED
            # Snapshots as late as possible (when the consumer starts reading), and the
            # floor at the same moment: queued events up to it are already in them.
            floor, frames = await self.snapshots.of_session(session_key)
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
                    floor, frames = await self.snapshots.of_session(session_key)
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
        task = await self.snapshots.task(session_key, task_id)
        if task is None:
            yield OPENED
            return
        if not self.running or self.closing.is_set() or task.status in TERMINAL:
            yield OPENED
            yield self.snapshots.frame(task)
            return
        subscription = self._subscription(session_key, keepalive=keepalive, client=client or session_key, shared=shared)
        async with subscription as subscriber:
            yield OPENED
            floor, snapshot, settled = await self.snapshots.of_task(session_key, task_id)
            if snapshot is None:  # removed meanwhile
                return
            yield snapshot
            if settled:
                return
            outlook = EtaWatch(self, session_key, task_id, subscriber)
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
                    floor, snapshot, settled = await self.snapshots.of_task(session_key, task_id)
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
                if envelope.status in TERMINAL_VALUES and await self._settled(session_key, envelope):
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
        if raw == EVICTED_ITEM:
            raise StreamEvicted(self.caps.max_streams or 0)
        return raw not in (_KEEPALIVE_ITEM, _RESYNC_ITEM, _LOOK_ITEM) and self._frame_of(raw)[0].type == ENDED

    async def _settled(self, session_key: str, envelope: Envelope) -> bool:
        """Whether the task is still where this terminal event left it (no automatic
        or manual retry has moved it on since)."""
        task = await self.snapshots.task(session_key, envelope.task_id)
        return task is None or (task.status.value == envelope.status and task.attempts == envelope.attempt)

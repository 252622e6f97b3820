"""The caps on open push streams, and the room a full server makes fairly.

At most MAX_STREAMS streams are open at once, MAX_STREAMS_PER_SESSION in one session
and MAX_STREAMS_PER_CLIENT for one client (an address: `async_tasks.clients`): beyond,
opening one raises `QuotaExceeded` (429), except that when all MAX_STREAMS are open, a
client holding fewer than the largest holder gets in and that holder's oldest stream
ends (it reads `EVICTED_ITEM` and ends with `StreamEvicted`: an ``error`` event,
``stream_evicted``; it may reconnect later). Streams opened through share links count
against the viewer's client and against a cap of their own per session, never against
the session's own streams: viewers cannot lock the owner out. The caps count this
process's streams (with a shared backend, each API process has its own): what a stream
holds, a socket, memory and a share of the event loop, is the process's.
"""

from __future__ import annotations

from typing import Final

from litestar.channels.subscriber import Subscriber

from async_tasks.clients import fair_victims
from async_tasks.errors import QuotaExceeded

#: What an evicted stream reads next (never a valid channel message): it ends with `StreamEvicted`.
EVICTED_ITEM: Final = b"evicted"
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


class StreamCounts:
    """Streams open or opening in one session (counted before subscribing, for the caps):
    the session's own, and those opened through its share links."""

    __slots__ = ("shared_streams", "streams")

    def __init__(self) -> None:
        self.streams = 0
        self.shared_streams = 0


class OpenStream:
    """One open (or opening) stream, as the caps count it."""

    __slots__ = ("client", "evicted", "released", "session", "shared", "subscriber")

    def __init__(self, session: StreamCounts, client: str, shared: bool) -> None:
        self.session = session
        self.client = client
        self.shared = shared
        self.subscriber: Subscriber | None = None
        self.evicted = False
        self.released = False


class StreamCaps:
    """Counts the open streams by session and client, and admits, evicts and releases them."""

    def __init__(
        self, max_streams: int | None, max_streams_per_session: int | None, max_streams_per_client: int | None
    ) -> None:
        """Each cap None: no cap."""
        self.max_streams = max_streams
        self.max_streams_per_session = max_streams_per_session
        self.max_streams_per_client = max_streams_per_client
        #: Streams open or opening, in all sessions.
        self.open_streams = 0
        #: Each client's open streams, the oldest first.
        self.clients: dict[str, dict[OpenStream, None]] = {}
        #: Streams ended to let another client's in (for metrics and tests).
        self.evicted_total = 0

    def check(self, session: StreamCounts | None, client: str, shared: bool) -> None:
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
            self.evict(next(iter(victims[0])))

    def evict(self, stream: OpenStream) -> None:
        """End `stream` to make room: its place is free at once, and it ends with an error
        saying why (`StreamEvicted`) as soon as it reads."""
        self.release(stream)
        stream.evicted = True
        self.evicted_total += 1
        if stream.subscriber is not None:
            stream.subscriber.put_nowait(EVICTED_ITEM)

    def release(self, stream: OpenStream) -> None:
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

    def open(self, session: StreamCounts, client: str, shared: bool) -> OpenStream:
        """Count a stream `check` admitted."""
        stream = OpenStream(session, client, shared)
        if shared:
            session.shared_streams += 1
        else:
            session.streams += 1
        self.open_streams += 1
        self.clients.setdefault(client, {})[stream] = None
        return stream

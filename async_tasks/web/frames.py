"""What a push stream sends, and what travels through a session's channel to make it.

A channel message is an `Envelope`: the routing fields a stream needs to decide on an
event without decoding it (sequence, task, type, status, attempt) and the encoded event.
A stream sends `Frame`s: the event type and its JSON, with the SSE lines and the
WebSocket text made once for every stream that sends it (`shared_frame`).
"""

from __future__ import annotations

from typing import Final, NamedTuple

import msgspec


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


class Envelope(msgspec.Struct, array_like=True, gc=False):
    """What travels through the channel: routing fields and the encoded event."""

    seq: int
    task_id: str
    type: str
    status: str
    attempt: int
    event: msgspec.Raw


class _Status(msgspec.Struct):
    status: str


encode = msgspec.json.Encoder().encode
decode_envelope = msgspec.json.Decoder(Envelope).decode
_decode_status = msgspec.json.Decoder(_Status).decode


def status_of(event: bytes) -> str:
    """The `status` field of an encoded event (a snapshot read from the store)."""
    return _decode_status(event).status

"""RESP framing: where one command or one reply ends in a byte stream.

The fault proxy must know which reply answers which command, so it cuts both
directions of a connection into whole messages. It never needs a reply's value, only
its end and whether it is an out-of-band push, so replies are walked, not decoded.

Commands are what clients send: an array of bulk strings, or an inline line
(``PING\\r\\n``, what telnet and health probes send). Replies are any RESP2 or RESP3
value; a RESP3 attribute (``|``) belongs to the value that follows it, and a push
(``>``) answers no command. Streamed RESP3 strings and aggregates (``$?``), which
Redis never sends, are a `ProtocolError`.
"""

from __future__ import annotations

from typing import NamedTuple

#: Types whose whole value is their first line: simple string, error, integer, null,
#: double, boolean, big number.
_LINES = frozenset(b"+-:_,#(")
#: Types carrying a length and that many bytes: bulk string, bulk error, verbatim string.
_BLOBS = frozenset(b"$!=")
#: Types carrying a count and that many values: array, set, push.
_ARRAYS = frozenset(b"*~>")
#: Types carrying a count and twice that many values: map, attribute.
_MAPS = frozenset(b"%|")


class ProtocolError(Exception):
    """The bytes are not RESP (or use a form Redis does not send)."""


class Reply(NamedTuple):
    end: int
    """Offset just after the reply."""
    push: bool
    """An out-of-band message (RESP3 ``>``): it answers no command."""


class _Incomplete(Exception):
    """The message goes on beyond the bytes received so far."""


def read_command(buffer: bytes | bytearray, start: int = 0) -> tuple[list[bytes], int] | None:
    """The command that starts at `start` and the offset after it; None while more bytes
    are needed. An empty inline line is an empty command (Redis ignores it)."""
    try:
        if start >= len(buffer):
            return None
        if buffer[start] != ord("*"):
            line, end = _line(buffer, start)
            return line.split(), end
        count, position = _header(buffer, start)
        arguments: list[bytes] = []
        for _ in range(count):
            if position >= len(buffer):
                return None
            if buffer[position] != ord("$"):
                raise ProtocolError(f"a command's argument is not a bulk string at offset {position}")
            length, position = _header(buffer, position)
            end = _blob_end(buffer, position, length)
            arguments.append(bytes(buffer[position : end - 2]))
            position = end
        return arguments, position
    except _Incomplete:
        return None


def read_reply(buffer: bytes | bytearray, start: int = 0) -> Reply | None:
    """Where the reply that starts at `start` ends; None while more bytes are needed."""
    try:
        end = _skip(buffer, start)
    except _Incomplete:
        return None
    # An attribute before a push leaves the push out-of-band.
    kind = start
    while buffer[kind] == ord("|"):
        kind = _skip_pairs(buffer, *_header(buffer, kind))
    return Reply(end, buffer[kind] == ord(">"))


def _skip(buffer: bytes | bytearray, start: int) -> int:
    if start >= len(buffer):
        raise _Incomplete
    kind = buffer[start]
    if kind in _LINES:
        return _line(buffer, start)[1]
    count, position = _header(buffer, start)
    if kind in _BLOBS:
        return position if count < 0 else _blob_end(buffer, position, count)
    if kind in _ARRAYS:
        for _ in range(count):  # a null array (-1) has no elements
            position = _skip(buffer, position)
        return position
    if kind in _MAPS:
        position = _skip_pairs(buffer, count, position)
        # An attribute is not a value of its own: it annotates the next one.
        return _skip(buffer, position) if kind == ord("|") else position
    raise ProtocolError(f"unknown RESP type {chr(kind)!r} at offset {start}")


def _skip_pairs(buffer: bytes | bytearray, count: int, position: int) -> int:
    for _ in range(2 * count):
        position = _skip(buffer, position)
    return position


def _line(buffer: bytes | bytearray, start: int) -> tuple[bytes, int]:
    end = buffer.find(b"\r\n", start)
    if end < 0:
        raise _Incomplete
    return bytes(buffer[start:end]), end + 2


def _header(buffer: bytes | bytearray, start: int) -> tuple[int, int]:
    """The count or length after a type byte, and the offset after its line."""
    line, end = _line(buffer, start + 1)
    try:
        return int(line), end
    except ValueError:
        raise ProtocolError(f"not a length: {bytes(buffer[start:end])!r}") from None


def _blob_end(buffer: bytes | bytearray, position: int, length: int) -> int:
    end = position + length + 2
    if len(buffer) < end:
        raise _Incomplete
    if buffer[end - 2 : end] != b"\r\n":
        raise ProtocolError(f"a bulk string of {length} bytes at offset {position} does not end with CRLF")
    return end

"""The proxy's RESP framing: where commands and replies end, however the bytes arrive."""

from __future__ import annotations

import pytest

from tests.faults.resp import ProtocolError, Reply, read_command, read_reply

#: One reply of each RESP2 and RESP3 type, nested aggregates and an attribute included.
REPLIES = [
    b"+OK\r\n",
    b"-ERR wrong\r\n",
    b":42\r\n",
    b"$5\r\nhe\r\nl\r\n",  # a bulk string holding CRLF
    b"$-1\r\n",
    b"*-1\r\n",
    b"*0\r\n",
    b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n",
    b"_\r\n",
    b",3.14\r\n",
    b"#t\r\n",
    b"(3492890328409238509324850943850943825024385\r\n",
    b"!8\r\nSYNTAX x\r\n",
    b"=7\r\ntxt:abc\r\n",
    b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n",
    b"~2\r\n+x\r\n+y\r\n",
    b"|1\r\n+ttl\r\n:3600\r\n$2\r\nhi\r\n",
]


def test_every_reply_type_ends_where_it_ends() -> None:
    """Each RESP2/RESP3 reply type is read whole, the next reply starting right after it."""
    stream = b"".join(REPLIES)
    position = 0
    for expected in REPLIES:
        reply = read_reply(stream, position)
        assert reply == Reply(position + len(expected), push=False), expected
        position = reply.end
    assert position == len(stream)


@pytest.mark.parametrize("reply", REPLIES)
def test_a_reply_cut_anywhere_is_incomplete(reply: bytes) -> None:
    """A reply missing even its last byte is not taken for a whole one."""
    for cut in range(len(reply)):
        assert read_reply(reply[:cut]) is None, reply[:cut]


def test_pushes_are_told_apart() -> None:
    """A push answers no command, with or without an attribute before it."""
    message = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    assert read_reply(message) == Reply(len(message), push=True)
    annotated = b"|1\r\n+a\r\n+b\r\n" + message
    assert read_reply(annotated) == Reply(len(annotated), push=True)


def test_commands_are_read_as_sent() -> None:
    """Array commands keep binary arguments; inline commands split on spaces; both in one stream."""
    value = b"\r\n*1\r\n\x00"
    stream = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$7\r\n" + value + b"\r\nPING  now\r\n\r\n"
    command, position = read_command(stream) or ([], 0)
    assert command == [b"SET", b"k", value]
    assert read_command(stream, position) == ([b"PING", b"now"], len(stream) - 2)
    assert read_command(stream, len(stream) - 2) == ([], len(stream))
    assert read_command(stream, len(stream)) is None


def test_a_command_cut_anywhere_is_incomplete() -> None:
    """A command missing even its last byte is not taken for a whole one."""
    command = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"
    for cut in range(len(command)):
        assert read_command(command[:cut]) is None
    assert read_command(command) == ([b"GET", b"key"], len(command))


@pytest.mark.parametrize(
    "garbage",
    [b"?what\r\n", b"$x\r\n", b"$3\r\nabcde\r\n", b"$?\r\n;4\r\nHell\r\n;0\r\n"],
    ids=["type", "length", "crlf", "streamed"],
)
def test_what_is_not_resp_is_an_error(garbage: bytes) -> None:
    """Unknown types, bad lengths, a bulk string without its CRLF and streamed strings are refused."""
    with pytest.raises(ProtocolError):
        read_reply(garbage)


def test_a_command_argument_must_be_a_bulk_string() -> None:
    """A command array holding anything but bulk strings is refused."""
    with pytest.raises(ProtocolError):
        read_command(b"*1\r\n:1\r\n")

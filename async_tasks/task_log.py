"""A task's log: the lines its executor writes (``await progress.log("...")``), each with
its time and, optionally, a small piece of structured partial results (``data``).

A line is numbered in its task (`LogLine.n`: 1, 2, ... across every attempt, counting
the lines dropped), so a client that sees the same line twice (a reconnect's snapshot,
then an event) keeps it once. Everything here is bounded (`LogLimits`, from the
TASK_LOG_* settings):

- **per line**: a line's message and data together take at most `line_bytes` (UTF-8, the
  data as JSON); a longer message is cut short (ending in "…"), data that alone does not
  fit is refused (`ValueError`, at the executor's call: its developer sees it at once);
- **per task**: a task keeps at most `lines` lines and `task_bytes` bytes of them (each
  line counted as its JSON, as the API returns it); the oldest go first, counted in
  `Task.logs_dropped`. The newest line always stays.

`make_line` builds a checked line (the reporter's side); `LogBook` keeps one task's lines
within the bounds (the memory store's side; the Redis store does the same in Lua), their
messages through the store's `SharedTexts`, so the same message written by many tasks
("Loading Data: Loading the input data set") is held once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec

#: Defaults of TASK_LOG_LINES, TASK_LOG_LINE_BYTES and TASK_LOG_BYTES.
DEFAULT_LINES: Final = 100
DEFAULT_LINE_BYTES: Final = 1024
DEFAULT_TASK_BYTES: Final = 16_384
#: How many of its latest lines a task's summary (list items, session snapshots) carries.
RECENT_LINES: Final = 3
_ELLIPSIS: Final = "…"


class LogLine(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True, gc=False):
    """One line of a task's log."""

    #: Its number in the task's log (1 first; lines dropped still count). 0 until stored.
    n: int = 0
    #: When the executor wrote it (epoch ms).
    at: int
    message: str
    #: Structured partial results the executor attached (any JSON value), or None.
    data: Any = None


class LogLimits(msgspec.Struct, frozen=True, kw_only=True):
    """The bounds of task logs (TASK_LOG_LINES, TASK_LOG_LINE_BYTES, TASK_LOG_BYTES)."""

    lines: int = DEFAULT_LINES
    line_bytes: int = DEFAULT_LINE_BYTES
    task_bytes: int = DEFAULT_TASK_BYTES


_encode = msgspec.json.Encoder().encode


def make_line(message: str, data: Any, at: int, line_bytes: int) -> LogLine:
    """A line to store: `message` cut to fit `line_bytes` with the JSON of `data`.

    Raises `TypeError` when `message` is not a string and `ValueError` when `data` is not
    JSON-encodable or alone takes more than `line_bytes`. `data` is copied (through its
    JSON), so the executor may change its own object afterwards.
    """
    if not isinstance(message, str):
        raise TypeError(f"a log message must be a str, got {type(message).__name__}")
    data_size = 0
    if data is not None:
        try:
            encoded = _encode(data)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"log data must be JSON-encodable: {exc}") from None
        data_size = len(encoded)
        if data_size > line_bytes:
            raise ValueError(
                f"log data is {data_size} bytes as JSON; a log line takes at most {line_bytes} bytes "
                "(TASK_LOG_LINE_BYTES): attach a smaller summary"
            )
        data = msgspec.json.decode(encoded)
    room = line_bytes - data_size
    raw = message.encode()
    if len(raw) > room:
        keep = max(0, room - len(_ELLIPSIS.encode()))
        message = raw[:keep].decode(errors="ignore") + _ELLIPSIS if keep else ""
    return LogLine(at=at, message=message, data=data)


def line_size(line: LogLine) -> int:
    """The bytes a stored line counts for: its JSON, as the API returns it."""
    return len(_encode(line))


class SharedTexts:
    """One copy of each recurring short text: `share` gives the copy already held when an
    equal text was shared recently, else keeps this one. Executors tend to write the same
    messages in every task (a step's name and description), and a retained task would
    otherwise hold its own copy of each (about 100 bytes a line).

    Bounded: texts longer than `longest` characters are not kept (they seldom recur), and
    the table is emptied when it holds `size` texts, so it holds at most `size` texts that
    no task uses any more (unlike `sys.intern`, which would cost every unique message a
    slot in the interpreter's table for as long as it lives)."""

    __slots__ = ("_held", "longest", "size")

    def __init__(self, size: int = 1024, longest: int = 256) -> None:
        self.size = size
        self.longest = longest
        self._held: dict[str, str] = {}

    def share(self, text: str) -> str:
        if len(text) > self.longest:
            return text
        held = self._held.get(text)
        if held is not None:
            return held
        if len(self._held) >= self.size:
            self._held.clear()
        self._held[text] = text
        return text


class LogBook:
    """One task's lines kept within `LogLimits`, and what the oldest dropped weighed."""

    __slots__ = ("bytes", "sizes")

    def __init__(self, logs: Iterable[LogLine] = ()) -> None:
        #: Sizes of the kept lines, oldest first (parallel to `Task.logs`): those of `logs`
        #: when the book is made again for lines already kept.
        self.sizes: list[int] = [line_size(line) for line in logs]
        self.bytes = sum(self.sizes)

    def append(
        self,
        logs: list[LogLine],
        first: int,
        lines: Iterable[LogLine],
        limits: LogLimits,
        texts: SharedTexts | None = None,
    ) -> tuple[list[LogLine], int]:
        """Number `lines` from `first` and add them to `logs` (their messages through
        `texts`); drop the oldest beyond the limits. Returns the lines added that are still
        kept, and how many were dropped."""
        added: list[LogLine] = []
        for number, line in enumerate(lines, start=first):
            message = line.message if texts is None else texts.share(line.message)
            stored = msgspec.structs.replace(line, n=number, message=message)
            size = line_size(stored)
            logs.append(stored)
            self.sizes.append(size)
            self.bytes += size
            added.append(stored)
        dropped = 0
        while len(logs) > 1 and (len(logs) > limits.lines or self.bytes > limits.task_bytes):
            gone = logs.pop(0)
            self.bytes -= self.sizes.pop(0)
            dropped += 1
            if added and added[0] is gone:
                added.pop(0)
        return added, dropped

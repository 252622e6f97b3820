"""What every part of the PostgreSQL task store stands on: the pool, the change functions'
calls, their replies.

`PostgresStoreBase` holds the database (`Database`: the pool on the deployment's schema),
calls change function ``op_<name>`` with the arguments every one takes (`_run`: the time,
the settings, whether the hooks want what it removed, an operation id; each placeholder
cast to its SQL type, `SIGNATURES`), and turns a reply into the task it changed, telling
the event hub (`_changed`). It also makes values storable: PostgreSQL's text cannot hold
the NUL character (`pg_text` stores U+FFFD). The store's parts build on it: `reads.py`,
`delivery.py`, `upkeep.py` and the changes in `store.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from async_tasks.backends.postgres.connection import Database
from async_tasks.backends.queued.store import RunLimits, SharedSettings, SharedStore, whole
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.errors import TaskNotFound
from async_tasks.events import EventHub
from async_tasks.store.base import StorePolicy, refusal
from async_tasks.task import StoredTask, Task, TaskStatus
from async_tasks.task_log import LogLine

#: Each change function's arguments, as SQL types (`_run` casts each placeholder).
_COMMON: Final = ("bigint", "text", "boolean", "text")
SIGNATURES: Final[dict[str, tuple[str, ...]]] = {
    "create": (*_COMMON, "text", "text", "integer", "text", "text", "integer", "integer", "boolean", "bigint",
               "text", "integer", "integer", "text", "text", "text", "json", "json", "text[]", "integer", "integer",
               "integer", "text"),
    "transition": (*_COMMON, "text", "text", "text", "text[]", "integer", "text", "text", "json", "boolean",
                   "boolean", "boolean", "bigint"),
    "start": (*_COMMON, "text", "text", "bigint"),
    "claim": (*_COMMON, "text", "text", "integer", "text", "text"),
    "finish": (*_COMMON, "text", "text", "integer", "text", "text", "json", "text", "text", "boolean", "bigint",
               "text", "double precision", "text", "text", "integer", "integer", "json"),
    "remove": (*_COMMON, "text", "text"),
    "trim": (*_COMMON, "integer", "integer", "integer", "integer", "text[]"),
    "expire": (*_COMMON, "bigint", "bigint", "bigint", "integer", "text", "text[]"),
}  # fmt: skip

STATUSES: Final = tuple(status.value for status in TaskStatus)
encode = msgspec.json.Encoder().encode
_decode_task = msgspec.json.Decoder(StoredTask).decode


class Reply(msgspec.Struct, array_like=True):
    """What a change function answers: ["ok", task, [[cause, task], ...]], ["notfound"],
    ["refused", status], or its own kinds (create's)."""

    kind: str
    payload: msgspec.Raw = msgspec.Raw(b"null")
    removed: list[tuple[str, msgspec.Raw]] = msgspec.field(default_factory=list)


decode_reply = msgspec.json.Decoder(Reply).decode


def decode_task(raw: bytes | str) -> StoredTask:
    """A task as a function answers it."""
    task = _decode_task(raw)
    whole(task)
    return task


def pg_text(value: str | None) -> str | None:
    """A text PostgreSQL can store: NUL (which its text type cannot hold) as U+FFFD."""
    if value is None or "\x00" not in value:
        return value
    return value.replace("\x00", "\ufffd")


def json_text(value: Any) -> str:
    return encode(value).decode()


def lines_json(lines: Sequence[LogLine]) -> str | None:
    """Log lines as the functions take them: a JSON array (their texts storable), or None."""
    if not lines:
        return None
    clean = [line if "\x00" not in line.message else msgspec.structs.replace(line, message=pg_text(line.message) or "")
             for line in lines]  # fmt: skip
    return encode(clean).decode()


def json_or_none(value: Any) -> str | None:
    return None if value is None else json_text(value)


class PostgresStoreBase(SharedStore):
    """The pool and the function calls of `PostgresTaskStore` (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        *,
        clock: Clock = SYSTEM_CLOCK,
        events: EventHub | None = None,
        policy: StorePolicy | None = None,
        limits: RunLimits | None = None,
    ) -> None:
        self.db = database
        self.schema = database.schema
        self.clock = clock
        self.events = events or EventHub()
        self._shared = SharedSettings(policy or StorePolicy(), limits or RunLimits())
        # Time from PostgreSQL, unless a test clock is given: then its time is passed in.
        self._clock_time = type(clock) is not Clock

    @property
    def availability(self) -> Any:
        return self.db.availability

    # -- connection ------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the pool; the next call opens a new one."""
        await self.db.aclose()

    async def ping(self) -> bool:
        """Whether PostgreSQL answers now."""
        try:
            await self.db.call("SELECT 1")
        except Exception:
            return False
        return True

    def _now(self) -> int | None:
        return self.clock.now_ms() if self._clock_time else None

    async def _run(self, name: str, *args: Any, op: str | None = None) -> Any:
        """Call change function ``op_<name>``: the common arguments, then `args`."""
        want = bool(self.events.on_removed or self.events.listeners)
        return await self._call(name, self._now(), self._shared.config, want, op, *args)

    async def _call(self, name: str, *args: Any) -> Any:
        types = SIGNATURES.get(name)
        if types is None:
            placeholders = ", ".join(["%s"] * len(args))
        else:
            placeholders = ", ".join(f"%s::{kind}" for kind in types)
        return await self.db.call(f"SELECT op_{name}({placeholders})", args)

    async def _now_ms(self) -> int:
        """The store's time: the test clock's, or PostgreSQL's."""
        if self._clock_time:
            return self.clock.now_ms()
        return int(await self.db.call("SELECT db_now()"))

    # -- events -------------------------------------------------------------------------

    def _changed(self, raw: str, task_id: str, action: str, *, hooks: bool = True) -> Task:
        """The task a function changed (its refusal raised); the hooks told of the change."""
        reply = decode_reply(raw)
        if reply.kind == "notfound":
            raise TaskNotFound(task_id)
        if reply.kind == "refused":
            raise refusal(task_id, TaskStatus(msgspec.json.decode(reply.payload)), action)
        task = decode_task(reply.payload)
        if hooks:
            self._transitioned(task, task.history[-1].previous if task.history else None)
        self._removed(reply.removed)
        return task

    def _removed(self, removed: list[tuple[str, msgspec.Raw]]) -> None:
        """Tell the hooks about the tasks a function removed by itself: ``[(cause, JSON), ...]``."""
        for cause, raw in removed:
            self._removed_one(decode_task(raw), cause)

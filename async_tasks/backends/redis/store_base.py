"""What every part of the Redis task store stands on: the client, the scripts, the replies.

`RedisStoreBase` holds the connection (a client, or a factory of one, made at first use
and forgotten by `aclose`), runs a script by name with the arguments every script takes
(`_run`: the time, the settings, an operation id), and turns a script's reply into the
task it changed, telling the event hub (`_changed`). The store's parts build on it:
`reads.py`, `delivery.py`, `upkeep.py` and the changes in `store.py`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec
from redis.exceptions import ReadOnlyError

from async_tasks.backends.queued.store import RunLimits, SharedSettings, SharedStore, whole
from async_tasks.backends.redis import scripts
from async_tasks.backends.redis.connection import Availability, reachable
from async_tasks.backends.redis.keys import DEFAULT_PREFIX, Keys
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.errors import TaskNotFound
from async_tasks.events import EventHub
from async_tasks.store.base import StorePolicy, refusal
from async_tasks.task import StoredTask, Task, TaskStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript


STATUSES: Final = tuple(status.value for status in TaskStatus)
encode = msgspec.json.Encoder().encode
_decode_task = msgspec.json.Decoder(StoredTask).decode
_decode_tasks = msgspec.json.Decoder(list[StoredTask]).decode


def decode_task(raw: bytes) -> StoredTask:
    """A task as a script answers it."""
    task = _decode_task(raw)
    whole(task)
    return task


def decode_tasks(raw: bytes) -> list[Task]:
    """Tasks as a script answers them (a JSON array)."""
    tasks = _decode_tasks(raw)
    for task in tasks:
        whole(task)
    return cast("list[Task]", tasks)


def json_or_empty(value: Any) -> bytes:
    """A script argument: the value's JSON, or empty for None."""
    return b"" if value is None else encode(value)


class RedisStoreBase(SharedStore):
    """The connection and the script runner of `RedisTaskStore` (see the module docstring)."""

    def __init__(
        self,
        redis: Redis | None = None,
        *,
        factory: Callable[[], Redis] | None = None,
        prefix: str = DEFAULT_PREFIX,
        clock: Clock = SYSTEM_CLOCK,
        events: EventHub | None = None,
        policy: StorePolicy | None = None,
        limits: RunLimits | None = None,
        availability: Availability | None = None,
    ) -> None:
        self.clock = clock
        self.events = events or EventHub()
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.channel_prefix = self.keys.channel_prefix
        if (redis is None) == (factory is None):
            raise TypeError("give RedisTaskStore either a client or a factory of clients")
        self._factory = factory
        self._redis = redis
        self._scripts: dict[str, AsyncScript] = {}
        self._shared = SharedSettings(policy or StorePolicy(), limits or RunLimits())
        #: Says once when Redis goes away and once when it is back.
        self.availability = availability or Availability("The task store")
        # Time from Redis (TIME), unless a test clock is given: then its time is passed in.
        self._clock_time = type(clock) is not Clock

    # -- connection ------------------------------------------------------------------

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            assert self._factory is not None
            self._redis = self._factory()
            self._scripts.clear()
        return self._redis

    async def aclose(self) -> None:
        """Close the client; with a factory, the next use makes a new one."""
        if self._redis is not None:
            client, self._redis = self._redis, None
            self._scripts.clear()
            await client.aclose()

    async def ping(self) -> bool:
        """Whether Redis answers now."""
        try:
            with reachable(self.availability):
                await cast("Awaitable[bool]", self.redis.ping())
        except Exception:
            return False
        return True

    def _script(self, name: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.redis.register_script(scripts.source(name))
        return script

    def _common(self, op: str = "") -> tuple[str, ...]:
        """The arguments every script gets first (see `scripts`)."""
        now = str(self.clock.now_ms()) if self._clock_time else ""
        want = "1" if self.events.on_removed or self.events.listeners else ""
        return (self.prefix, self.channel_prefix, now, self._shared.config, want, op)

    async def _run(self, name: str, *args: Any, op: str = "") -> Any:
        """Run script `name`: the common arguments (see `scripts`), then `args`."""
        base = self._common(op)
        script = self._script(name)
        with reachable(self.availability):
            try:
                return await script(args=[*base, *args])
            except ReadOnlyError:
                # A demoted primary after a failover: drop the connections, so the next
                # request connects afresh (and finds the new primary behind the address).
                await self.redis.connection_pool.disconnect()
                raise

    async def _now_ms(self) -> int:
        """The store's time: the test clock's, or Redis's."""
        if self._clock_time:
            return self.clock.now_ms()
        with reachable(self.availability):
            seconds, micros = await cast("Awaitable[tuple[int, int]]", self.redis.time())
        return int(seconds) * 1000 + int(micros) // 1000

    # -- events -------------------------------------------------------------------------

    def _changed(self, response: list[Any], task_id: str, action: str, *, hooks: bool = True) -> StoredTask:
        """The task a script changed (its refusal raised); the hooks told of the change."""
        kind = response[0]
        if kind == b"notfound":
            raise TaskNotFound(task_id)
        if kind == b"refused":
            raise refusal(task_id, TaskStatus(response[1].decode()), action)
        task = decode_task(response[1])
        if hooks:
            self._transitioned(task, task.history[-1].previous if task.history else None)
        self._removed(response[2])
        return task

    def _removed(self, flat: list[bytes]) -> None:
        """Tell the hooks about the tasks a script removed by itself: ``[cause, JSON, ...]``."""
        for i in range(0, len(flat), 2):
            self._removed_one(decode_task(flat[i + 1]), flat[i].decode())

"""The Redis backend's worker: `QueuedWorker` on a SAQ Redis queue.

What is its own here (the rest, claiming, running, recording, the lease, shutdown, is
`async_tasks.backends.queued.worker`'s):

- **Its queue**: SAQ's `RedisQueue` on a client with no socket timeout (its dequeue
  blocks); the store's scripts write jobs into it (see `keys.py` for SAQ's keys).
- **Cancel**: the API's script marks the task cancelled and publishes ``P stop``; `_listen`
  stops the attempt within milliseconds.
- **Lease**: ``P wk:<id>``, renewed every third of WORKER_LEASE_MS.
- **Delayed tasks**: the shared timer learns of a new earliest due time from ``P due``
  (published when a task becomes the earliest), which `_listen` hears.
- **Its own jobs**: what SAQ holds is read from its ``queued`` and ``active`` lists.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc

from async_tasks.backends.queued.worker import PROGRESS_WINDOW, QueuedWorker
from async_tasks.backends.redis.connection import Availability, blocking_client, pubsub_client
from async_tasks.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from saq.queue.base import Queue

    from async_tasks.backends.queued.store import Dispatched
    from async_tasks.backends.redis.store import RedisTaskStore
    from async_tasks.executor import ExecutorRegistry
    from async_tasks.settings import BackendSettings

logger = logging.getLogger("async_tasks.execution")


class RedisWorker(QueuedWorker):
    """Runs attempts dispatched to it, up to `slots` at once. See the module docstring."""

    store_name = "Redis"
    store: RedisTaskStore
    availability: Availability

    def __init__(
        self,
        store: RedisTaskStore,
        executors: ExecutorRegistry,
        settings: BackendSettings,
        *,
        url: str,
        slots: int,
        clock: Clock = SYSTEM_CLOCK,
        rng: Callable[[], float] = random.random,
        progress_window: float = PROGRESS_WINDOW,
        patient: Callable[[], Any] | None = None,
    ) -> None:
        self.url = url
        self._patient = patient
        super().__init__(store, executors, settings, slots=slots, clock=clock, rng=rng, progress_window=progress_window)
        self.keys = store.keys

    def _availability(self, what: str) -> Availability:
        return Availability(what)

    def _patient_store(self, store: RedisTaskStore) -> RedisTaskStore:
        # A client that waits out a Redis restart (requests use one that fails fast).
        return store.sibling(self._patient, self.availability) if self._patient is not None else store

    def _about(self) -> dict[str, Any]:
        return {**super()._about(), "startedAt": self.started_at}

    async def _open_queue(self) -> Queue:
        from saq.queue.redis import RedisQueue

        queue = RedisQueue(blocking_client(self.url), name=self.keys.queue_name(self.worker_id))
        await queue.connect()
        return queue

    async def _join(self, *, retiring: bool) -> None:
        await self.store.join(self.worker_id, self.slots, self.lease_ms, self.description, retiring=retiring)

    async def _start_services(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self._listen)

    async def _missing_jobs(self, pending: Sequence[Dispatched]) -> set[str]:
        """From SAQ's ``queued`` and ``active`` lists of this worker's queue."""
        if not pending:
            return set()
        assert self._queue is not None
        redis = cast(Any, self._queue).redis
        async with redis.pipeline(transaction=False) as pipe:
            pipe.lrange(self.keys.saq_list(self.worker_id, "queued"), 0, -1)
            pipe.lrange(self.keys.saq_list(self.worker_id, "active"), 0, -1)
            queued, active = await pipe.execute()
        held = {job.decode() for job in (*queued, *active)}
        return {item.job_key for item in pending if self.keys.saq_job(self.worker_id, item.job_key) not in held}

    async def _listen(self) -> None:
        """Stop the attempts cancelled elsewhere (``P stop``); learn of delayed tasks that
        became the earliest (``P due``)."""
        client = pubsub_client(self.url)
        pubsub = client.pubsub()
        stop, due = self.keys.stop_channel.encode(), self.keys.due_channel.encode()
        try:
            while True:
                try:
                    if not pubsub.subscribed:
                        await pubsub.subscribe(stop, due)
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except Exception as exc:
                    self.availability.failed(exc)
                    await anyio.sleep(1)
                    continue
                if message is None or message.get("type") != "message":
                    continue
                data = message["data"].decode()
                if message["channel"] == due:
                    if data.isdigit():
                        self._note_due(int(data))
                    continue
                task_id, _, number = data.rpartition(":")
                if number.isdigit():
                    self._stop_local(task_id, int(number), "cancelled")
        finally:
            with anyio.CancelScope(shield=True):
                await self._quietly(pubsub.aclose())  # type: ignore[no-untyped-call]
                await self._quietly(client.aclose())

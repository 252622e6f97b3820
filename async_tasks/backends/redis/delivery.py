"""The Redis task store's delivery: the producer's, the worker's and the reconciler's steps.

Each step is one script that changes a task and where its delivery is (parked in its
session's line, delayed, or dispatched as a SAQ job to a worker's queue) together: hand a
task over (`deliver`), start a dispatched attempt (`claim`), give a job that never started
back (`redeliver`), deliver the delayed tasks that are due (`promote`). The pool of
workers is kept here too: leases (`join`), leaving (`retire`, `forget_worker`), the
reconciler's lock and its lost workers, and what the admin view shows of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, cast

import msgspec

from async_tasks.backends.queued.store import Dispatched, new_op
from async_tasks.backends.redis.connection import reachable
from async_tasks.backends.redis.store_base import RedisStoreBase
from async_tasks.execution.base import ExecutionLoad, WorkerInfo
from async_tasks.task import StoredTask


class RedisDelivery(RedisStoreBase):
    """How `RedisTaskStore` hands tasks to workers and keeps the pool of workers."""

    async def deliver(self, session_key: str, task_id: str, due_ms: int | None = None) -> StoredTask:
        """Hand a pending task to delivery (see `deliver.lua`); `InvalidTransition` unless pending."""
        response = await self._run("deliver", session_key, task_id, "" if due_ms is None else due_ms, op=new_op())
        return self._changed(response, task_id, "start", hooks=False)  # no status changed

    async def claim(self, session_key: str, task_id: str, attempt: int, worker: str, job_key: str) -> StoredTask:
        """Start attempt `attempt`, dispatched to `worker` as SAQ job `job_key`: the task is
        running, owned by the worker. `InvalidTransition` when that dispatch is no longer the
        task's (cancelled, delivered afresh elsewhere, already run)."""
        response = await self._run("claim", session_key, task_id, attempt, worker, job_key, op=new_op())
        return self._changed(response, task_id, "start")

    async def redeliver(self, session_key: str, task_id: str, job_key: str) -> bool:
        """Deliver afresh a task dispatched as `job_key` that never started (a no-op once it moved on)."""
        return bool(await self._run("redeliver", session_key, task_id, job_key))

    async def join(self, worker: str, slots: int, lease_ms: int, description: bytes, *, retiring: bool = False) -> bool:
        """Renew the worker's lease; True when its slots (re)joined the pool. `retiring`:
        keep the lease but leave the pool (nothing more is dispatched to it)."""
        return bool(await self._run("worker", worker, slots, lease_ms, description, "1" if retiring else ""))

    async def retire(self, worker: str) -> None:
        """Dispatch nothing more to a worker (a lost or leaving one, before its tasks go
        elsewhere); it stays known until it is forgotten."""
        await self._run("retire", worker)

    async def forget_worker(self, worker: str, *, leaving: bool = False) -> int:
        """Forget a worker (see `forget_worker.lua`): 1 done, 0 its lease lives, -1 tasks left."""
        forgotten = int(await self._run("forget_worker", worker, "1" if leaving else ""))
        if forgotten == 1 and not leaving:  # a lost worker: no longer a suspect
            await cast("Awaitable[int]", self.redis.hdel(self.keys.suspects, worker))
        return forgotten

    async def promote(self, most: int = 500) -> int | None:
        """Deliver the delayed tasks whose time has come; the next due time (ms), or None."""
        _, next_due = await self._run("promote", most)
        return int(float(next_due)) if next_due else None

    async def workers(self) -> dict[str, int]:
        """The workers in the pool and their slots."""
        with reachable(self.availability):
            flat = await cast("Awaitable[dict[bytes, bytes]]", self.redis.hgetall(self.keys.workers))
        return {worker.decode(): int(slots) for worker, slots in flat.items()}

    async def leases(self, workers: Sequence[str]) -> list[bool]:
        """Whether each worker's lease is alive."""
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=False) as pipe:
                for worker in workers:
                    pipe.exists(self.keys.lease(worker))
                found = await pipe.execute()
        return [bool(n) for n in found]

    async def lost_workers(self, me: str, lease_ms: int) -> list[str]:
        """The workers other than `me` without a lease for half a lease or more: a worker
        without one is first a suspect (``P suspects``, when it was first seen so, by Redis's
        clock), lost half a lease later."""
        workers = [worker for worker in await self.workers() if worker != me]
        if not workers:
            return []
        alive = await self.leases(workers)
        redis = cast(Any, self.redis)
        suspects = self.keys.suspects
        seconds, micros = await redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        async with redis.pipeline(transaction=False) as pipe:
            for worker, ok in zip(workers, alive, strict=True):
                if ok:
                    pipe.hdel(suspects, worker)
                else:
                    pipe.hsetnx(suspects, worker, now_ms)
                    pipe.hget(suspects, worker)
            replies = await pipe.execute()
        gone: list[str] = []
        i = 0
        for worker, ok in zip(workers, alive, strict=True):
            if ok:
                i += 1
                continue
            since = int(replies[i + 1] or now_ms)
            i += 2
            if now_ms - since >= lease_ms / 2:
                gone.append(worker)
        return gone

    async def take_lock(self, name: str, holder: str, ms: int) -> bool:
        """Take the lock of a one-at-a-time duty for `ms` ms (``P <name>``), unless another holds it."""
        return bool(await cast(Any, self.redis).set(self.keys.lock(name), holder, nx=True, px=ms))

    async def dispatched_to(self, worker: str) -> list[Dispatched]:
        """The tasks dispatched to `worker` (queued on it or running there)."""
        with reachable(self.availability):
            members = await cast("Awaitable[set[bytes]]", self.redis.smembers(self.keys.dispatched_to(worker)))
            ids = [raw.decode() for raw in members]
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in ids:
                    pipe.hmget(
                        self.keys.task(task_id), ["_s", "status", "attempts", "autoRetries", "maxRetries", "_jk", "_wk"]
                    )
                rows = await pipe.execute()
        found = []
        for task_id, (session, status, attempts, auto, most, job, runner) in zip(ids, rows, strict=True):
            if session is None:
                with reachable(self.availability):
                    await cast("Awaitable[int]", self.redis.srem(self.keys.dispatched_to(worker), task_id))
                continue
            found.append(
                Dispatched(
                    task_id, session.decode(), msgspec.json.decode(status), int(attempts), int(auto or 0),
                    int(most or 0), (job or b"").decode(), (runner or b"").decode(),
                )
            )  # fmt: skip
        return found

    async def running_states(self, task_ids: Sequence[str]) -> list[tuple[str | None, int | None]]:
        """The status and attempt of each task (what a worker checks its attempts against)."""
        with reachable(self.availability):
            async with self.redis.pipeline(transaction=False) as pipe:
                for task_id in task_ids:
                    pipe.hmget(self.keys.task(task_id), ["status", "attempts"])
                rows = await pipe.execute()
        return [
            (msgspec.json.decode(status) if status else None, int(number) if number is not None else None)
            for status, number in rows
        ]

    async def live_workers(self) -> list[WorkerInfo]:
        """The workers in the pool with a lease (a retired one, leaving, is listed until it is
        gone), as their leases describe them, oldest first; the lease age is Redis's time
        since the last renewal (see `workers.lua`)."""
        now, rows = await self._run("workers")
        found = []
        for worker, lease, slots, running, _retired in rows:
            about = msgspec.json.decode(lease)
            found.append(
                WorkerInfo(
                    id=worker.decode(),
                    host=str(about.get("host", "")),
                    pid=int(about.get("pid", 0)),
                    executors=[str(name) for name in about.get("executors", ())],
                    running=int(running),
                    concurrency=int(slots),
                    started_at=int(about.get("startedAt", 0)),
                    lease_age_ms=max(0, int(now) - int(about.get("renewedAt", now))),
                )
            )
        return sorted(found, key=lambda w: (w.started_at, w.id))

    async def executor_loads(self, executors: Sequence[str]) -> dict[str, ExecutionLoad]:
        """By executor (`executors`, and any other with tasks in delivery or workers): tasks
        running, waiting (in delivery, not running) and the workers that run it, from the
        counts kept by the scripts (`P xq`, `P offered`) and the index of running tasks:
        O(executors + running tasks) (see `queues.lua`)."""
        flat = await self._run("queues", *executors)
        loads = {}
        for i in range(0, len(flat), 4):
            in_delivery, running, workers = int(flat[i + 1]), int(flat[i + 2]), int(flat[i + 3])
            loads[flat[i].decode()] = ExecutionLoad(running=running, queued=max(0, in_delivery - running),
                                                    workers=workers)  # fmt: skip
        return loads

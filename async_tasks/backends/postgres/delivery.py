"""The PostgreSQL task store's delivery: the producer's, the worker's and the reconciler's steps.

Each step is one transaction that changes a task and where its delivery is (parked in its
session's line, delayed, or a row of SAQ's ``saq_jobs`` for a worker's queue) together:
hand a task over (`deliver`), start a dispatched attempt (`claim`), give a job that never
started back (`redeliver`), deliver the delayed tasks that are due (`promote`). The pool
of workers is kept here too: leases (`join`), leaving (`retire`, `forget_worker`), the
reconciler's lock and its lost workers, and what the admin view shows of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from async_tasks.backends.postgres.store_base import PostgresStoreBase
from async_tasks.backends.queued.store import Dispatched, new_op
from async_tasks.execution.base import ExecutionLoad, WorkerInfo
from async_tasks.task import Task


class _Description(msgspec.Struct):
    """What a worker says of itself (`QueuedWorker.description`)."""

    host: str = ""
    pid: int = 0
    slots: int = 0
    executors: list[str] = msgspec.field(default_factory=list)


class PostgresDelivery(PostgresStoreBase):
    """How `PostgresTaskStore` hands tasks to workers and keeps the pool of workers."""

    async def deliver(self, session_key: str, task_id: str, due_ms: int | None = None) -> Task:
        """Hand a pending task to delivery (see `op_start`); `InvalidTransition` unless pending."""
        raw = await self._run("start", session_key, task_id, due_ms, op=new_op())
        return self._changed(raw, task_id, "start", hooks=False)  # no status changed

    async def claim(self, session_key: str, task_id: str, attempt: int, worker: str, job_key: str) -> Task:
        """Start attempt `attempt`, dispatched to `worker` as SAQ job `job_key`: the task is
        running, owned by the worker. `InvalidTransition` when that dispatch is no longer the
        task's (cancelled, delivered afresh elsewhere, already run)."""
        raw = await self._run("claim", session_key, task_id, attempt, worker, job_key, op=new_op())
        return self._changed(raw, task_id, "start")

    async def redeliver(self, session_key: str, task_id: str, job_key: str) -> bool:
        """Deliver afresh a task dispatched as `job_key` that never started (a no-op once it moved on)."""
        return bool(
            await self.db.call(
                "SELECT op_redeliver(%s::bigint, %s, %s, %s, %s)",
                (self._now(), self._shared.config, session_key, task_id, job_key),
            )
        )

    async def join(
        self, worker: str, queue: str, slots: int, lease_ms: int, description: bytes, *, retiring: bool = False
    ) -> bool:
        """Renew the worker's lease; True when its slots (re)joined the pool. `retiring`:
        keep the lease but leave the pool (nothing more is dispatched to it)."""
        return bool(
            await self.db.call(
                "SELECT op_worker(%s::bigint, %s, %s, %s, %s::integer, %s::bigint, %s::json, %s::boolean)",
                (self._now(), self._shared.config, worker, queue, slots, lease_ms, description.decode(), retiring),
            )
        )

    async def retire(self, worker: str) -> None:
        """Dispatch nothing more to a worker (a lost or leaving one, before its tasks go
        elsewhere); it stays known until it is forgotten."""
        await self.db.call("SELECT op_retire(%s)", (worker,))

    async def forget_worker(self, worker: str, *, leaving: bool = False) -> int:
        """Forget a worker (see `op_forget_worker`): 1 done, 0 its lease lives, -1 tasks left."""
        return int(
            await self.db.call("SELECT op_forget_worker(%s::bigint, %s, %s::boolean)", (self._now(), worker, leaving))
        )

    async def promote(self, most: int = 500) -> int | None:
        """Deliver the delayed tasks whose time has come; the next due time (ms), or None."""
        raw = await self.db.call(
            "SELECT op_promote(%s::bigint, %s, %s::integer)", (self._now(), self._shared.config, most)
        )
        _, next_due = msgspec.json.decode(raw, type=tuple[int, int | None])
        return next_due

    async def workers(self) -> dict[str, int]:
        """The workers in the pool and their slots."""
        return {worker: int(slots) for worker, slots in await self.db.rows("SELECT id, slots FROM workers")}

    async def lost_workers(self, me: str, lease_ms: int) -> list[str]:
        """The workers other than `me` without a lease for half a lease or more (see `op_lost_workers`)."""
        found: list[str] = await self.db.call(
            "SELECT op_lost_workers(%s::bigint, %s, %s::bigint)", (self._now(), me, lease_ms)
        )
        return found

    async def take_lock(self, name: str, holder: str, ms: int) -> bool:
        """Take (or keep) the lease of a one-at-a-time duty for `ms` ms."""
        return bool(
            await self.db.call("SELECT op_take_lock(%s::bigint, %s, %s, %s::bigint)", (self._now(), name, holder, ms))
        )

    async def dispatched_to(self, worker: str) -> list[Dispatched]:
        """The tasks dispatched to `worker` (queued on it or running there)."""
        rows = await self.db.rows(
            "SELECT id, session_key, status, attempts, auto_retries, max_retries, job_key, coalesce(runner, '') "
            "FROM tasks WHERE job_worker = %s AND delivery = 'q'",
            (worker,),
        )
        return [Dispatched(*row) for row in rows]

    async def queued_jobs(self, queue: str) -> dict[str, str]:
        """The SAQ jobs in `queue` (queued, or taken by its worker) and their status."""
        return dict(await self.db.rows("SELECT key, status FROM saq_jobs WHERE queue = %s", (queue,)))

    async def running_states(self, task_ids: Sequence[str]) -> list[tuple[str | None, int | None]]:
        """The status and attempt of each task (what a worker checks its attempts against)."""
        rows = await self.db.rows("SELECT id, status, attempts FROM tasks WHERE id = ANY(%s)", (list(task_ids),))
        found = {task_id: (status, attempts) for task_id, status, attempts in rows}
        return [found.get(task_id, (None, None)) for task_id in task_ids]

    async def live_workers(self) -> list[WorkerInfo]:
        """The workers whose lease lives, with what they run (from their rows), oldest first."""
        rows = await self.db.rows(
            "SELECT w.id, w.description::text, w.slots, w.started_at, db_now() - w.renewed_at, "
            "(SELECT count(*) FROM tasks t WHERE t.runner = w.id AND t.status = 'running') "
            "FROM workers w WHERE w.lease_until > db_now() ORDER BY w.started_at, w.id"
        )
        found = []
        for worker_id, raw, slots, started_at, age, running in rows:
            said = msgspec.json.decode(raw, type=_Description)
            found.append(
                WorkerInfo(
                    id=worker_id, host=said.host, pid=said.pid, executors=said.executors, running=int(running),
                    concurrency=int(slots), started_at=int(started_at), lease_age_ms=max(0, int(age)),
                )
            )  # fmt: skip
        return found

    async def executor_loads(self, executors: Sequence[str]) -> dict[str, ExecutionLoad]:
        """Running attempts, tasks waiting for a slot, a worker or their time (a retry's
        backoff, a delayed start), and the live workers that run it, by executor."""
        rows = await self.db.rows(
            "SELECT e.name, "
            "(SELECT count(*) FROM tasks t WHERE t.executor = e.name AND t.status = 'running'), "
            "(SELECT count(*) FROM tasks t WHERE t.executor = e.name AND t.status = 'pending' AND t.delivery <> ''), "
            "(SELECT count(*) FROM workers w WHERE NOT w.retired AND w.lease_until > db_now() "
            "AND e.name = ANY(w.executors)) "
            "FROM (SELECT unnest(%s::text[]) UNION SELECT DISTINCT executor FROM tasks "
            "WHERE status IN ('pending', 'running')) AS e(name)",
            (list(executors),),
        )
        return {
            name: ExecutionLoad(running=int(running), queued=int(queued), workers=int(workers))
            for name, running, queued, workers in rows
        }

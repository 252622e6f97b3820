"""Every Redis key the backend uses, named once (the Lua scripts in `scripts/` build the
same names from the prefix; `prelude.lua` says how).

Under a per-deployment prefix ``P`` (REDIS_KEY_PREFIX)::

    P t:<id>                  hash: the task; every field a JSON value named as the HTTP contract
                              names it; ``_``-prefixed fields are ours: _s session, _sq creation
                              sequence, _wk the worker running it, _op the last write's operation
                              id, _dv where its delivery is (p parked, d delayed, q dispatched),
                              _jw / _jk the worker and SAQ job key of its dispatch
    P h:<id>                  list: the task's history entries (JSON), capped by the policy
    P l:<id>                  list: the task's log lines (JSON, with their `n`), oldest first, within
                              the policy's log bounds; the hash keeps logsDropped and _lb (their bytes)
    P s:<session>             zset: the session's task ids by creation sequence
    P ss:<session>:<status>   zset: the same, per status (a page by status is O(page))
    P se:<session>:<executor> / P st:<session>:<tag> / P sd:<session>
                              zsets: the same, per executor, per tag, dead-lettered (filters)
    P f:<session>:<status>    zset: finished ids by finish sequence (retention, finished TTL)
    P u:<session>             zset: pending tasks never started, by when their lifetime began
                              (creation, or a later delayed start)
    P c:<session>             hash: d (dispatched: queued on a worker or running; how many
                              are in each status is the size of its index, P ss:), dur
                              (summed run time of completed tasks), waiting
                              (when it joined the line of sessions), cl (the client it belongs
                              to: `async_tasks.clients`); when it last changed is its score in
                              P changed
    P ctasks / P csessions    zsets: client -> tasks / sessions it holds (its budgets, fair shares)
    P cu:<client> / P cf:<client>   zsets: the client's never-started tasks by creation
                              sequence / its finished tasks by finish sequence (what goes first
                              when a full pool makes room)
    P cs:<client>             zset: the client's sessions by last change (P changed: every session's)
    P i:<session> / P ik:<session>   hash / zset: Idempotency-Key -> '<task id>|<fingerprint>',
                              and when each was used (they outlive their tasks for a window)
    P w:<session>             zset: the session's parked tasks (priority first, then first come)
    P wx:<session>:<executor> zset: the same, of one executor (what a worker that runs it takes)
    P px:<session>            set: the executors the session has parked tasks of
    P ready:<executor>        zset: sessions with parked tasks of the executor, fewest dispatched first
    P delayed                 zset: task id -> when it is delivered (retry backoff, delayed start)
    P totals / P sessions     every session's d and p (parked) / the sessions holding tasks
    P changed                 zset: session -> when it last changed (the admin view's order)
    P all / P as:<status> / P ae:<executor> / P ag:<tag> / P ad
                              zsets: every session's task ids by creation sequence, per status,
                              executor, tag, dead-lettered (the admin view's pages and filters)
    P xq                      hash: executor -> its tasks in delivery (parked, delayed, dispatched)
    P workers                 hash: live worker id -> its slots
    P runs:<worker>           set: the executors the worker runs (written when it joins)
    P offered                 hash: executor -> workers in the pool (not retired) that run it
    P retired                 set: workers nothing more is dispatched to (leaving, or lost)
    P wk:<worker>             the worker's lease (expires unless renewed) and description
    P wq:<worker>             set: the tasks dispatched to the worker (queued or running)
    P seq                     the global sequence: events, creation order, job keys
    P b:<bucket>              token buckets (they expire once full)
    P durations:<executor>    list: the run times (ms) of the executor's last completed attempts,
                              newest first (RECENT_DURATIONS of them): what estimates read
    P op:<id>                 a removal's result, a minute (a re-sent removal answers with it)
    P reconcile               the reconciler's lock (one worker at a time)
    P suspects                hash: worker id -> when the reconciler first found its lease gone
    P stop                    channel: '<task id>:<attempt>' of a running task cancelled
    P due                     channel: the due time (ms) of a task that became the earliest delayed
    P session:<session>       channel: the session's changes, as the push streams' envelopes
                              (and ``ended`` when the session was forgotten whole)

and SAQ's keys for each worker's own queue (named ``P w:<worker>``): ``saq:<queue>:queued``,
``saq:<queue>:active``, ``saq:<queue>:incomplete``, ``saq:job:<queue>:<job key>``.
"""

from __future__ import annotations

from typing import Final

#: Default key prefix: one per deployment sharing a Redis.
DEFAULT_PREFIX: Final = "async-tasks:"


class Keys:
    """The key names under one prefix."""

    __slots__ = ("channel_prefix", "prefix")

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        #: Where each session's changes are published: ``<channel_prefix><session key>``.
        self.channel_prefix = prefix + "session:"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}t:{task_id}"

    def durations(self, executor: str) -> str:
        return f"{self.prefix}durations:{executor}"

    def counts(self, session_key: str) -> str:
        return f"{self.prefix}c:{session_key}"

    def by_status(self, session_key: str | None, status: str) -> str:
        """The index of the session's tasks in `status` (None: every session's)."""
        if session_key is None:
            return f"{self.prefix}as:{status}"
        return f"{self.prefix}ss:{session_key}:{status}"

    def idempotency(self, session_key: str) -> str:
        return f"{self.prefix}i:{session_key}"

    def idempotency_times(self, session_key: str) -> str:
        return f"{self.prefix}ik:{session_key}"

    @property
    def totals(self) -> str:
        return self.prefix + "totals"

    @property
    def sessions(self) -> str:
        return self.prefix + "sessions"

    @property
    def workers(self) -> str:
        return self.prefix + "workers"

    @property
    def retired(self) -> str:
        return self.prefix + "retired"

    @property
    def delayed(self) -> str:
        return self.prefix + "delayed"

    def lease(self, worker_id: str) -> str:
        return f"{self.prefix}wk:{worker_id}"

    def dispatched_to(self, worker_id: str) -> str:
        return f"{self.prefix}wq:{worker_id}"

    def lock(self, name: str) -> str:
        """The lock of a one-at-a-time duty (``reconcile``: the reconciler's pass)."""
        return self.prefix + name

    @property
    def suspects(self) -> str:
        return self.prefix + "suspects"

    @property
    def stop_channel(self) -> str:
        return self.prefix + "stop"

    @property
    def due_channel(self) -> str:
        return self.prefix + "due"

    def queue_name(self, worker_id: str) -> str:
        """The name of the worker's own SAQ queue."""
        return f"{self.prefix}w:{worker_id}"

    def saq_list(self, worker_id: str, kind: str) -> str:
        """SAQ's ``queued`` / ``active`` list of the worker's queue."""
        return f"saq:{self.queue_name(worker_id)}:{kind}"

    def saq_job(self, worker_id: str, job_key: str) -> str:
        return f"saq:job:{self.queue_name(worker_id)}:{job_key}"

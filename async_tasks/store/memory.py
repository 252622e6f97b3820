"""The in-memory task store: the default, nothing else to run.

What it keeps per session and per client (`books.py`) is updated as tasks change, so
create, get, transition and progress are O(1) (retention as a task finishes removes the
oldest-finished directly); an unfiltered page costs O(offset + page), a page by status
stops scanning once it is full (`paging.py`); stats never scan. Methods never await
anything but a checkpoint in `trim`, so each one is atomic on the event loop. A full pool
makes room from the clients holding the most (`room.py`); Idempotency-Keys outlive their
tasks for the policy's window (`idempotency.py`).

`get` returns the live record (no copy): callers read it and never write it. Records
are `StoredTask`s: params, metadata and result are kept as their encoded JSON, so a
task holds about its bytes, whatever their shape.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import anyio.lowlevel
import msgspec

from async_tasks.buckets import TokenBuckets
from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.errors import TaskNotFound
from async_tasks.events import EventHub, EventType, LogEvent, TaskEvent
from async_tasks.store.base import (
    ACTIONS,
    RECENT_DURATIONS,
    CreateLimits,
    Expiry,
    ExpiryResult,
    Finish,
    Idempotency,
    Poll,
    Report,
    Retention,
    SessionCounts,
    SessionPage,
    SessionSummary,
    StorePolicy,
    StoreTotals,
    TaskFilter,
    TaskPage,
    TrimResult,
    quota_exceeded,
    refusal,
)
from async_tasks.store.books import ClientBooks, SessionTasks, append_history, begin_later, freeze, growing
from async_tasks.store.idempotency import IdempotencyKeys
from async_tasks.store.paging import page_of
from async_tasks.store.room import plan_room, reached
from async_tasks.task import NULL, TERMINAL, HistoryEntry, StoredTask, Task, TaskStatus, can_transition, encoded
from async_tasks.task_log import LogBook, LogLine, SharedTexts

#: Tasks removed by `trim` between two yields to the event loop.
TRIM_BATCH = 2000


class MemoryTaskStore:
    """`TaskStore` in this process's memory."""

    def __init__(
        self, clock: Clock = SYSTEM_CLOCK, events: EventHub | None = None, policy: StorePolicy | None = None
    ) -> None:
        self.clock = clock
        self.events = events or EventHub()
        self.policy = policy or StorePolicy()
        self.sessions: dict[str, SessionTasks] = {}
        #: The clients holding sessions, by client key.
        self.clients: dict[str, ClientBooks] = {}
        #: Each session's Idempotency-Keys, oldest first: key -> (task id, fingerprint, when).
        #: They outlive their tasks (and sessions) for the policy's window.
        self.keys = IdempotencyKeys()
        self._seq = itertools.count(1)
        self._totals: dict[TaskStatus, int] = dict.fromkeys(TaskStatus, 0)
        #: Tasks held in every session (the sum of `_totals`).
        self._held = 0
        #: Token buckets by name: (tokens, monotonic time of the last update, rate, burst).
        self.buckets = TokenBuckets(clock)
        #: The sizes of each task's kept log lines (tasks that have a log).
        self._logbooks: dict[str, LogBook] = {}
        #: Log messages that recur across tasks, held once.
        self._texts = SharedTexts()
        #: Run times of each executor's last completed attempts, newest first.
        self._durations: dict[str, deque[int]] = {}

    # -- reads -------------------------------------------------------------------

    def _find(self, session_key: str, task_id: str) -> StoredTask:
        session = self.sessions.get(session_key)
        task = session.tasks.get(task_id) if session is not None else None
        if task is None:
            raise TaskNotFound(task_id)
        return task

    async def get(self, session_key: str, task_id: str) -> StoredTask:
        return self._find(session_key, task_id)

    async def poll(self, session_key: str, task_id: str) -> Poll:
        return Poll(self._find(session_key, task_id))

    async def query(
        self,
        session_key: str,
        where: TaskFilter,
        *,
        limit: int | None = None,
        offset: int = 0,
        cursor: str | None = None,
    ) -> TaskPage:
        session = self.sessions.get(session_key)
        if session is None:
            return TaskPage([], 0)
        order = session.order
        return page_of(
            ((order[task.id], task) for task in reversed(session.tasks.values())), where,
            total=len(session.tasks), by_status=session.counts.__getitem__, every=session.tasks.values,
            limit=limit, offset=offset, cursor=cursor,
        )  # fmt: skip

    async def counts(self, session_key: str) -> SessionCounts:
        session = self.sessions.get(session_key)
        if session is None:
            return SessionCounts(by_status=dict.fromkeys(TaskStatus, 0))
        return SessionCounts(by_status=dict(session.counts), average_duration_ms=session.average_duration_ms)

    async def totals(self) -> StoreTotals:
        return StoreTotals(by_status=dict(self._totals), sessions=len(self.sessions))

    def __len__(self) -> int:
        return self._held

    # -- changes -------------------------------------------------------------------

    async def create(
        self, task: Task, *, limits: CreateLimits, idempotency: Idempotency | None = None
    ) -> tuple[StoredTask, bool]:
        if idempotency is not None:
            earlier = self._replay(task.session_key, idempotency)
            if earlier is not None:
                return earlier, True
        session = self.sessions.get(task.session_key)
        if session is not None:
            active = session.active
            if active >= limits.max_active_per_session:
                raise quota_exceeded(limits.max_active_per_session, active)
        owner = session.client.key if session is not None else (limits.client or task.session_key)
        client = session.client if session is not None else self.clients.get(owner)
        cap = limits.max_tasks
        if (
            (cap is not None and self._held >= cap)
            or (client is not None and reached(client.tasks, limits.max_tasks_per_client))
            or (
                session is None
                and (
                    reached(len(self.sessions), limits.max_sessions)
                    or (client is not None and reached(len(client.sessions), limits.max_sessions_per_client))
                )
            )
        ):
            for victim in plan_room(self.sessions, self.clients, self._held, task.session_key, owner, limits):
                self._evict(victim)
        stored = task if isinstance(task, StoredTask) else StoredTask.of(task)
        now = self.clock.now_ms()
        session = self.sessions.get(task.session_key)  # (making room may have emptied it)
        if session is None:
            client = self.clients.get(owner)
            if client is None:
                client = self.clients[owner] = ClientBooks(owner)
            session = self.sessions[task.session_key] = client.sessions[task.session_key] = SessionTasks(
                task.session_key, now, client
            )
        session.changed_ms = now
        stored.status = TaskStatus.PENDING
        stored.created_at = stored.updated_at = now
        stored.tags = tuple(stored.tags)  # never changed: exact size, and no list at all when empty
        append_history(stored, HistoryEntry(at=now, status=TaskStatus.PENDING, attempt=1, reason="created"), None)
        session.tasks[stored.id] = stored
        session.order[stored.id] = next(self._seq)
        session.client.tasks += 1
        if stored.attempts == 0:
            session.client.unstarted[stored.id] = session
            if stored.scheduled_at is not None and stored.scheduled_at > now:
                begin_later(session, stored.id, stored.scheduled_at)
            else:
                stored.scheduled_at = None
                session.unstarted[stored.id] = None
        session.counts[TaskStatus.PENDING] += 1
        self._totals[TaskStatus.PENDING] += 1
        self._held += 1
        if idempotency is not None:
            self.keys.remember(stored.session_key, idempotency, stored.id, now, self.policy)
        for hook in self.events.on_transition:
            hook(stored, None)
        self._publish(stored, EventType.TRANSITION, None)
        return stored, False

    # -- making room ----------------------------------------------------------------

    def _evict(self, victim: SessionTasks | StoredTask) -> None:
        """Forget a task, or a whole session, to make room (cause ``evicted``)."""
        if isinstance(victim, SessionTasks):
            if self.sessions.get(victim.key) is victim:
                for task in list(victim.tasks.values()):
                    self._forget(victim, task, "evicted")
                self._session_ended(victim.key, "evicted")
            return
        session = self.sessions.get(victim.session_key)
        if session is not None and session.tasks.get(victim.id) is victim:
            self._forget(session, victim, "evicted")

    def _session_ended(self, session_key: str, cause: str) -> None:
        for hook in self.events.on_session_ended:
            hook(session_key, cause)

    async def replay(self, session_key: str, idempotency: Idempotency) -> Task | None:
        return self._replay(session_key, idempotency)

    def _replay(self, session_key: str, idempotency: Idempotency) -> StoredTask | None:
        session = self.sessions.get(session_key)
        return self.keys.replay(
            session_key, idempotency, lambda task_id: session.tasks.get(task_id) if session is not None else None,
            self.clock.now_ms(), self.policy,
        )  # fmt: skip

    async def transition(
        self,
        session_key: str,
        task_id: str,
        target: TaskStatus,
        *,
        expect: Collection[TaskStatus] | None = None,
        attempt: int | None = None,
        reason: str | None = None,
        error: str | None = None,
        result: Any = None,
        action: str | None = None,
        automatic: bool = False,
        dead_letter: bool = False,
        keep_auto_retries: bool = False,
    ) -> StoredTask:
        task = self._find(session_key, task_id)
        source = task.status
        if (
            not can_transition(source, target)
            or (expect is not None and source not in expect)
            or (attempt is not None and task.attempts != attempt)
        ):
            raise refusal(task.id, task.status, action or ACTIONS[target])
        session = self.sessions[session_key]
        now = self.clock.now_ms()
        session.changed_ms = now
        if source in TERMINAL:
            del session.finished[source][task.id]
            del session.client.finished[task.id]
        elif source is TaskStatus.PENDING:
            session.unstarted.pop(task.id, None)
            session.client.unstarted.pop(task.id, None)
            session.later.pop(task.id, None)
        if target is TaskStatus.RUNNING:
            task.attempts += 1
            task.started_at = now
            task.completed_at = None
            task.scheduled_at = None
        elif target is TaskStatus.PENDING:  # retry: a fresh attempt from zero
            task.progress = 0
            task.current_step = task.current_step_description = None
            task.result = NULL
            task.error = None
            task.started_at = task.completed_at = None
            task.dead_lettered = False
            if not keep_auto_retries:
                task.auto_retries = task.auto_retries + 1 if automatic else 0
        else:  # a terminal status
            task.completed_at = now
            task.scheduled_at = None
            session.finished[target][task.id] = None
            session.client.finished[task.id] = session
            # No line is added to a finished task: its book is made again if it is retried
            # (two objects fewer per retained task for the collector to walk).
            self._logbooks.pop(task.id, None)
            if target is TaskStatus.COMPLETED:
                task.result = result if isinstance(result, msgspec.Raw) else encoded(result)
                task.progress = 100
                session.duration_total_ms += now - (task.started_at or now)
            elif error is not None:
                task.error = error
            task.dead_lettered = dead_letter
        task.status = target
        task.updated_at = now
        session.counts[source] -= 1
        session.counts[target] += 1
        self._totals[source] -= 1
        self._totals[target] += 1
        entry = HistoryEntry(
            at=now,
            status=target,
            previous=source,
            attempt=max(task.attempts, 1),
            reason=reason,
            error=error if target is TaskStatus.FAILED else None,
        )
        append_history(task, entry, self.policy.max_history)
        if target in TERMINAL:
            freeze(task)
        for hook in self.events.on_transition:
            hook(task, source)
        self._publish(task, EventType.TRANSITION, source)
        if target in TERMINAL and self.policy.retention is not None:
            self._retain(session, target, self.policy.retention)
        return task

    def _retain(self, session: SessionTasks, status: TaskStatus, retention: Retention) -> None:
        """Retention as a task finishes: the oldest-finished beyond the limit go now (the
        one just finished, the newest, always stays)."""
        keep = max(retention.limit(status) or 0, 1)
        finished = session.finished[status]
        while len(finished) > keep:
            self._forget(session, session.tasks[next(iter(finished))], "retention")

    async def finish(
        self,
        session_key: str,
        task_id: str,
        attempt: int,
        finish: Finish,
        *,
        owner: str | None = None,
        report: Report | None = None,
        lines: Sequence[LogLine] = (),
    ) -> StoredTask:
        # No await between the steps: on the event loop, this is one step.
        task = self._find(session_key, task_id)
        if task.status is not TaskStatus.RUNNING or task.attempts != attempt:
            raise refusal(task.id, task.status, "complete" if finish.kind == "completed" else "fail")
        if lines:
            self._add_logs(task, lines)
        if report is not None:
            self._apply_report(task, *report)
        if finish.kind == "completed":
            task = await self.transition(
                session_key, task_id, TaskStatus.COMPLETED, attempt=attempt, result=finish.result, reason=finish.reason
            )
            recent = self._durations.get(task.executor)
            if recent is None:
                recent = self._durations[task.executor] = deque(maxlen=RECENT_DURATIONS)
            recent.appendleft(task.duration_ms or 0)
            return task
        task = await self.transition(
            session_key, task_id, TaskStatus.FAILED, attempt=attempt, error=finish.error, reason=finish.reason,
            dead_letter=finish.dead_letter and finish.kind == "failed",
        )  # fmt: skip
        if finish.kind == "failed":
            return task
        task = await self.transition(
            session_key, task_id, TaskStatus.PENDING, attempt=attempt, reason=finish.retry_reason,
            automatic=finish.kind == "retry", keep_auto_retries=finish.kind == "handback",
        )  # fmt: skip
        if finish.retry_delay_ms > 0:
            task.scheduled_at = self.clock.now_ms() + finish.retry_delay_ms
        return task

    def schedule(self, session_key: str, task_id: str, due_ms: int | None) -> Task:
        """Say when a pending task starts (`Task.scheduled_at`; None: now). A task never
        started lives PENDING_TASK_TTL_MS from then when that is later than its creation
        (as on Redis: a later time moves its lifetime on, an earlier start moves it back).
        The memory backend's execution calls this; the other backends' stores do it as
        they deliver."""
        task = self._find(session_key, task_id)
        if task.status is not TaskStatus.PENDING:
            raise refusal(task.id, task.status, "start")
        session = self.sessions[session_key]
        now = self.clock.now_ms()
        if due_ms is not None and due_ms <= now:
            due_ms = None
        task.scheduled_at = due_ms
        began = session.later.get(task_id)
        if due_ms is not None and (task_id in session.unstarted or (began is not None and due_ms > began)):
            session.unstarted.pop(task_id, None)
            begin_later(session, task_id, due_ms)
        elif due_ms is None and began is not None and began > now:
            begin_later(session, task_id, now)
        return task

    @staticmethod
    def _apply_report(task: Task, percent: float, step: str | None, description: str | None) -> None:
        task.progress = percent
        if step is not None:
            task.current_step = step
            task.current_step_description = description
        elif description is not None:
            task.current_step_description = description

    async def report_progress(
        self,
        session_key: str,
        task_id: str,
        attempt: int,
        percent: float,
        step: str | None,
        description: str | None,
    ) -> bool:
        session = self.sessions.get(session_key)
        task = session.tasks.get(task_id) if session is not None else None
        if task is None or task.status is not TaskStatus.RUNNING or task.attempts != attempt:
            return False
        self._apply_report(task, percent, step, description)
        task.updated_at = self.clock.now_ms()
        if self.events.listeners:
            self.events.publish(TaskEvent.of(task, EventType.PROGRESS))
        return True

    async def add_logs(self, session_key: str, task_id: str, attempt: int, lines: Sequence[LogLine]) -> bool:
        session = self.sessions.get(session_key)
        task = session.tasks.get(task_id) if session is not None else None
        if task is None or task.status is not TaskStatus.RUNNING or task.attempts != attempt:
            return False
        if lines:
            self._add_logs(task, lines)
        return True

    def _add_logs(self, task: StoredTask, lines: Sequence[LogLine]) -> None:
        book = self._logbooks.get(task.id)
        if book is None:  # its first lines, or its first since it last finished (a retry)
            book = self._logbooks[task.id] = LogBook(task.logs)
        logs = task.logs = growing(task.logs)
        first = task.logs_dropped + len(logs) + 1
        added, dropped = book.append(logs, first, lines, self.policy.logs, self._texts)
        task.logs_dropped += dropped
        if self.events.listeners and added:
            self.events.publish(LogEvent.of(task, added))

    async def recent_durations(self, executors: Collection[str]) -> dict[str, list[int]]:
        return {name: list(recent) for name in executors if (recent := self._durations.get(name))}

    async def remove(self, session_key: str, task_id: str) -> Task:
        task = self._find(session_key, task_id)
        if task.status is TaskStatus.RUNNING:
            raise refusal(task.id, task.status, "delete")
        self._forget(self.sessions[session_key], task)
        return task

    def _forget(self, session: SessionTasks, task: StoredTask, cause: str | None = None) -> None:
        del session.tasks[task.id]
        self._logbooks.pop(task.id, None)
        session.counts[task.status] -= 1
        self._totals[task.status] -= 1
        self._held -= 1
        session.changed_ms = self.clock.now_ms()
        client = session.client
        client.tasks -= 1
        if task.status in TERMINAL:
            del session.finished[task.status][task.id]
            del client.finished[task.id]
            if task.status is TaskStatus.COMPLETED:
                session.duration_total_ms -= task.duration_ms or 0
        elif task.status is TaskStatus.PENDING:
            session.unstarted.pop(task.id, None)
            client.unstarted.pop(task.id, None)
            session.later.pop(task.id, None)
        del session.order[task.id]
        if not session.tasks:
            del self.sessions[session.key]
            del client.sessions[session.key]
            if not client.sessions:
                del self.clients[client.key]
        for hook in self.events.on_removed:
            hook(task, cause)
        self._publish(task, EventType.REMOVED, None)

    async def trim(self, retention: Retention, session_key: str | None = None) -> TrimResult:
        result = TrimResult()
        if session_key is None:
            sessions = list(self.sessions.values())
        else:
            one = self.sessions.get(session_key)
            sessions = [one] if one is not None else []
        if session_key is None:
            self.buckets.prune()
        budget = TRIM_BATCH
        for session in sessions:
            for status in TERMINAL:
                limit = retention.limit(status)
                assert limit is not None
                while self.sessions.get(session.key) is session and len(session.finished[status]) > limit:
                    excess = len(session.finished[status]) - limit
                    oldest = list(itertools.islice(session.finished[status], min(excess, budget)))
                    for task_id in oldest:
                        self._forget(session, session.tasks[task_id], "retention")
                    setattr(result, status.value, getattr(result, status.value) + len(oldest))
                    budget -= len(oldest)
                    if budget <= 0:
                        # Let requests in between batches: a sweep of 500 000 tasks must
                        # not hold the event loop for seconds.
                        await anyio.lowlevel.checkpoint()
                        budget = TRIM_BATCH
        return result

    async def expire(self, expiry: Expiry, session_key: str | None = None) -> ExpiryResult:
        result = ExpiryResult()
        now = self.clock.now_ms()
        for key in list(self.keys) if session_key is None else [session_key]:
            self.keys.prune(key, now, self.policy)
        if session_key is None:
            sessions = list(self.sessions.values())
        else:
            one = self.sessions.get(session_key)
            sessions = [one] if one is not None else []
        for session in sessions:
            if expiry.pending_ttl_ms is not None:
                cutoff = now - expiry.pending_ttl_ms
                minutes = expiry.pending_ttl_ms / 60_000
                reason = f"expired: not started within {minutes:g} min (PENDING_TASK_TTL_MS)"
                expired = []
                for task_id in session.unstarted:
                    if session.tasks[task_id].created_at > cutoff:
                        break
                    expired.append(task_id)
                heap = session.later_heap
                while heap and heap[0][0] <= cutoff:
                    began, task_id = heapq.heappop(heap)
                    if session.later.get(task_id) == began:
                        expired.append(task_id)
                for task_id in expired:
                    result.pending.append(
                        await self.transition(
                            session.key, task_id, TaskStatus.CANCELLED, expect={TaskStatus.PENDING}, reason=reason
                        )
                    )
            if expiry.finished_ttl_ms is not None:
                cutoff = now - expiry.finished_ttl_ms
                for status in TERMINAL:
                    finished = session.finished[status]
                    while finished and self.sessions.get(session.key) is session:
                        task = session.tasks[next(iter(finished))]
                        if (task.completed_at or 0) > cutoff:
                            break
                        self._forget(session, task, "expired")
                        result.finished += 1
            if (
                expiry.session_idle_ms is not None
                and self.sessions.get(session.key) is session
                and not session.active
                and session.changed_ms <= now - expiry.session_idle_ms
            ):
                result.sessions += 1
                result.session_tasks += len(session.tasks)
                for task in list(session.tasks.values()):
                    self._forget(session, task, "expired")
                self.buckets.forget(session.key)
                self._session_ended(session.key, "expired")
        return result

    async def take_token(self, bucket: str, rate: float, burst: int) -> float:
        return self.buckets.take(bucket, rate, burst)

    def _publish(self, task: Task, kind: EventType, previous: TaskStatus | None) -> None:
        if self.events.listeners:
            self.events.publish(TaskEvent.of(task, kind, previous))

    # -- across sessions (the admin view) ---------------------------------------------

    async def list_sessions(self, *, limit: int, offset: int = 0) -> SessionPage:
        """O(sessions · log(offset + limit)): sessions are bounded by MAX_SESSIONS."""
        newest = heapq.nlargest(offset + limit, self.sessions.values(), key=lambda s: s.changed_ms)
        page = [
            SessionSummary(key=s.key, by_status=dict(s.counts), last_active_ms=s.changed_ms) for s in newest[offset:]
        ]
        return SessionPage(page, len(self.sessions))

    async def query_all(
        self, where: TaskFilter, *, limit: int | None = None, offset: int = 0, cursor: str | None = None
    ) -> TaskPage:
        """The sessions' newest-first lists merged (O(sessions + offset + page) without a
        filter, or by status only); another filter scans every task (bounded by MAX_TASKS)."""

        def newest(session: SessionTasks) -> Iterator[tuple[int, Task]]:
            numbers = session.order  # the store's sequence: creation order across sessions
            return ((numbers[task.id], task) for task in reversed(session.tasks.values()))

        merged: Iterator[tuple[int, Task]] = heapq.merge(
            *(newest(session) for session in self.sessions.values()), key=lambda pair: pair[0], reverse=True
        )
        return page_of(
            merged, where, total=self._held, by_status=self._totals.__getitem__,
            every=lambda: (task for session in self.sessions.values() for task in session.tasks.values()),
            limit=limit, offset=offset, cursor=cursor,
        )  # fmt: skip

    async def find(self, task_id: str) -> Task:
        """One look-up per session (bounded by MAX_SESSIONS)."""
        for session in self.sessions.values():
            task = session.tasks.get(task_id)
            if task is not None:
                return task
        raise TaskNotFound(task_id)

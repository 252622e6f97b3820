"""The task system's Prometheus metrics, in a registry of their own.

Tasks and attempts are counted apart, so that the counters add up:

- ``async_tasks_tasks_created_total{executor}``: tasks created.
- ``async_tasks_tasks_finished_total{executor,status}``: tasks that settled in a final
  status: ``completed``, ``cancelled``, or ``failed`` with no automatic retry left. An
  attempt that fails and is retried automatically is not a finished task. A task
  retried by hand counts again when it settles again, so finished <= created + retries
  by hand.
- ``async_tasks_task_attempts_total{executor,outcome}``: every attempt that ended
  (``completed``, ``failed``, ``cancelled``), automatic retries included.
- ``async_tasks_task_retries_total{executor,kind}``: retries, ``kind`` ``automatic``
  (after a failed attempt) or ``manual`` (``POST /tasks/{id}/retry``).
- ``async_tasks_task_duration_seconds{executor}``: run time of every ended attempt
- ``async_tasks_cleanup_removed_total{reason}``: finished tasks removed by retention
  (``reason`` is their status; as tasks finish or in a sweep) or ``expired`` (past
  FINISHED_TASK_TTL_MS, or held by a session idle for SESSION_IDLE_TTL_MS)
- ``async_tasks_tasks_evicted_total``: tasks removed to make room in a full pool, or in
  an address's budget (`async_tasks.store.base.CreateLimits`), and
  ``async_tasks_streams_evicted_total``: push streams ended to make room for another
  address's (both rise when one address holds more than its share)
- gauges refreshed before each scrape (`refresh`), so nothing is kept up to date on
  the hot path: ``async_tasks_tasks_running``, ``async_tasks_tasks_queued`` (waiting
  for a concurrency slot), ``async_tasks_sessions``, ``async_tasks_tasks{status}``.

No label ever carries a session key, a task id or a client address. The web layer
adds request metrics to the same registry and serves it (`async_tasks.web.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from async_tasks.task import TERMINAL, Task, TaskStatus

if TYPE_CHECKING:
    from async_tasks.system import TaskSystem

#: Task run times span milliseconds (zero-delay demos) to minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class TaskMetrics:
    """Counters fed by hooks on the store's events (`on_transition`, `on_removed`) and the
    execution backend (`on_finish`); gauges read by `refresh`."""

    def __init__(
        self,
        system: TaskSystem,
        *,
        registry: CollectorRegistry | None = None,
        events_dropped: Callable[[], int] = lambda: 0,
        streams_evicted: Callable[[], int] = lambda: 0,
    ) -> None:
        self.system = system
        self.registry = registry or CollectorRegistry()
        self.events_dropped = events_dropped
        self.streams_evicted = streams_evicted
        r = self.registry
        self.created = Counter("async_tasks_tasks_created", "Tasks created", ["executor"], registry=r)
        self.finished = Counter(
            "async_tasks_tasks_finished",
            "Tasks that settled in a final status (a failure followed by an automatic retry is not one)",
            ["executor", "status"],
            registry=r,
        )
        self.attempts = Counter(
            "async_tasks_task_attempts",
            "Attempts that ended, by outcome (automatic retries included)",
            ["executor", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "async_tasks_task_retries", "Retries of tasks, automatic or manual", ["executor", "kind"], registry=r
        )
        self.duration = Histogram(
            "async_tasks_task_duration_seconds",
            "Run time of task attempts, in seconds",
            ["executor"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.cleanup_removed = Counter(
            "async_tasks_cleanup_removed", "Finished tasks removed by retention", ["reason"], registry=r
        )
        self.running = Gauge("async_tasks_tasks_running", "Tasks running now", registry=r)
        self.queued = Gauge("async_tasks_tasks_queued", "Tasks waiting for a concurrency slot", registry=r)
        self.sessions = Gauge("async_tasks_sessions", "Sessions holding at least one task", registry=r)
        self.tasks = Gauge("async_tasks_tasks", "Tasks held, by status", ["status"], registry=r)
        self.dropped = Gauge(
            "async_tasks_events_dropped_total", "Push-stream events dropped for slow clients", registry=r
        )
        self.evicted = Counter(
            "async_tasks_tasks_evicted", "Tasks removed to make room for another address's", registry=r
        )
        self.streams_evicted_total = Gauge(
            "async_tasks_streams_evicted_total", "Push streams ended to make room for another address's", registry=r
        )
        self._children: dict[tuple[Any, ...], Any] = {}
        system.store.events.on_transition.append(self._on_transition)
        system.store.events.on_removed.append(self._on_removed)
        system.execution.on_finish.append(self._on_finish)

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once (prometheus_client builds a key and
        takes a lock on every call; transitions are a hot path)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _on_transition(self, task: Task, previous: TaskStatus | None) -> None:
        status = task.status
        if previous is None:
            self._child(self.created, task.executor).inc()
        elif status in TERMINAL:
            if previous is TaskStatus.RUNNING:
                self._child(self.attempts, task.executor, status.value).inc()
            if status is not TaskStatus.FAILED or not retried_automatically(task):
                self._child(self.finished, task.executor, status.value).inc()
        elif status is TaskStatus.PENDING:  # a retry (created tasks have previous None)
            kind = "automatic" if task.auto_retries > 0 else "manual"
            self._child(self.retries, task.executor, kind).inc()

    def _on_finish(self, task: Task, duration: float) -> None:
        self._child(self.duration, task.executor).observe(duration)

    def _on_removed(self, task: Task, cause: str | None) -> None:
        if cause == "retention":
            self.cleanup_removed.labels(task.status.value).inc()
        elif cause == "expired":
            self.cleanup_removed.labels("expired").inc()
        elif cause == "evicted":
            self.evicted.inc()

    async def refresh(self) -> None:
        """Read the gauges from the store and the execution backend."""
        totals = await self.system.store.totals()
        load = await self.system.execution.load()
        self.running.set(totals.by_status[TaskStatus.RUNNING])
        self.queued.set(load.queued)
        self.sessions.set(totals.sessions)
        for status, count in totals.by_status.items():
            self.tasks.labels(status.value).set(count)
        self.dropped.set(self.events_dropped())
        self.streams_evicted_total.set(self.streams_evicted())

    async def exposition(self) -> bytes:
        """The registry in the text exposition format, gauges refreshed."""
        await self.refresh()
        return generate_latest(self.registry)


def retried_automatically(task: Task) -> bool:
    """Whether a task that has just failed will be retried automatically: it has retries
    left (`auto_retries` counts the ones used since it was created or retried by hand)
    and was not dead-lettered (a failure at shutdown is final even with retries left)."""
    return not task.dead_lettered and task.auto_retries < task.max_retries

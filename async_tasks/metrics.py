"""Prometheus metrics, one registry per app, served at ``GET /metrics``.

HTTP requests are counted and timed by Litestar's own `PrometheusMiddleware`
(``async_tasks_http_requests_total``, ``..._request_duration_seconds``,
``..._requests_in_progress``, ``..._requests_error_total``), labelled with the
route *template* (``group_path=True``), never a concrete path with an id in it.
The task system adds:

- ``async_tasks_tasks_created_total{executor}``
- ``async_tasks_tasks_finished_total{executor,status}``: every time a task enters
  completed, failed or cancelled (an attempt that fails before an automatic retry
  counts as failed)
- ``async_tasks_task_duration_seconds{executor}``: run time of every ended attempt
- ``async_tasks_cleanup_removed_total{reason}``: retention removals by the cleaner
- gauges read at scrape time, so nothing is kept up to date on the hot path:
  ``async_tasks_tasks_running``, ``async_tasks_tasks_queued`` (waiting for a
  concurrency slot), ``async_tasks_sessions``, ``async_tasks_tasks{status}``, and
  ``async_tasks_events_dropped_total`` (push-stream events dropped for slow clients).

No label ever carries a session key, a task id or a client address.

Why not the stock setup: `PrometheusMiddleware` caches its metrics in a class-level
dict and creates them in the global default registry, and `PrometheusController`
always serves the global registry. Tests build many apps per process, and two
apps in one process must not share counters, so `AppPrometheusConfig` carries a
registry and a metric cache per app, `AppPrometheusMiddleware` creates its metrics
there, and `metrics_controller` serves that registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

from litestar import MediaType, Response
from litestar import get as http_get
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController, PrometheusMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from async_tasks.errors import SettingsError
from async_tasks.task import TERMINAL, Task, TaskStatus

if TYPE_CHECKING:
    from litestar.types import Message, Send
    from prometheus_client.metrics import MetricWrapperBase

    from async_tasks.cleanup import Cleaner, CleanupResult
    from async_tasks.runner import Runner
    from async_tasks.settings import Settings
    from async_tasks.store import TaskStore

#: Route-handler ``opt`` key that keeps a route (health, metrics) out of request metrics
#: and out of session resolution.
OPS_OPT_KEY = "async_tasks_ops"
METRICS_PATH = "/metrics"
#: The ops routes (health probes and scrapes), by path.
OPS_PATH_PATTERN = r"^/(health|healthz|ready|metrics)/?$"
#: Task run times span milliseconds (zero-delay demos) to minutes.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
#: Litestar appends the charset to text/* media types itself.
_EXPOSITION_TYPE = CONTENT_TYPE_LATEST.split("; charset=")[0]


@dataclass
class AppPrometheusConfig(PrometheusConfig):
    """`PrometheusConfig` whose middleware registers its metrics in `registry`."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    metrics: dict[str, MetricWrapperBase] = field(default_factory=dict)


class AppPrometheusMiddleware(PrometheusMiddleware):
    """Litestar's middleware with its metrics cached per config (one per app), not per class.

    Litestar builds one middleware instance per route; they share the config.
    """

    _config: AppPrometheusConfig

    def _metric(
        self, kind: type[MetricWrapperBase], suffix: str, documentation: str, labels: dict[str, Any], **kwargs: Any
    ) -> MetricWrapperBase:
        name = f"{self._config.prefix}_{suffix}"
        metric = self._config.metrics.get(name)
        if metric is None:
            metric = self._config.metrics[name] = kind(
                name, documentation, labelnames=[*labels.keys()], registry=self._config.registry, **kwargs
            )
        return metric

    def _get_wrapped_send(self, send: Send, request_span: dict[str, float]) -> Callable[[Message], Any]:
        # The base class's, minus a `functools.wraps` on every request.
        async def wrapped_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                request_span["status_code"] = message["status"]
            elif message["type"] == "http.response.body":
                end = time.perf_counter()
                request_span["duration"] = end - request_span["start_time"]
                request_span["end_time"] = end
            await send(message)

        return wrapped_send

    def request_count(self, labels: dict[str, str | int | float]) -> Counter:
        return cast("Counter", self._metric(Counter, "requests_total", "Total requests", labels))

    def request_time(self, labels: dict[str, str | int | float]) -> Histogram:
        return cast(
            "Histogram",
            self._metric(Histogram, "request_duration_seconds", "Request duration, in seconds", labels, **self._kwargs),
        )

    def requests_in_progress(self, labels: dict[str, str | int | float]) -> Gauge:
        return cast(
            "Gauge",
            self._metric(
                Gauge,
                "requests_in_progress",
                "Total requests currently in progress",
                labels,
                multiprocess_mode="livesum",
            ),
        )

    def requests_error_count(self, labels: dict[str, str | int | float]) -> Counter:
        return cast("Counter", self._metric(Counter, "requests_error_total", "Total errors in requests", labels))


class _ScrapeTimeCollector(Collector):
    """Gauges computed from the store and runner when scraped."""

    def __init__(self, metrics: TaskMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        store, runner = self._metrics.store, self._metrics.runner
        yield GaugeMetricFamily(
            "async_tasks_tasks_running", "Tasks running now", value=store.totals[TaskStatus.RUNNING]
        )
        yield GaugeMetricFamily(
            "async_tasks_tasks_queued", "Tasks waiting for a concurrency slot", value=runner.queued_count
        )
        yield GaugeMetricFamily("async_tasks_sessions", "Sessions holding at least one task", value=len(store.sessions))
        by_status = GaugeMetricFamily("async_tasks_tasks", "Tasks held in memory, by status", labels=["status"])
        for status, count in store.totals.items():
            by_status.add_metric([status.value], count)
        yield by_status
        yield CounterMetricFamily(
            "async_tasks_events_dropped",
            "Push-stream events dropped for slow clients",
            value=self._metrics.events_dropped(),
        )


class TaskMetrics:
    """The task system's metrics in one app's registry, fed by hooks on the store's
    event hub, the runner (`on_finish`) and the cleaner (`after_sweep`)."""

    def __init__(
        self,
        store: TaskStore,
        runner: Runner,
        cleaner: Cleaner,
        *,
        events_dropped: Callable[[], int] = lambda: 0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.registry = registry or CollectorRegistry()
        self.events_dropped = events_dropped
        self.created = Counter("async_tasks_tasks_created", "Tasks created", ["executor"], registry=self.registry)
        self.finished = Counter(
            "async_tasks_tasks_finished",
            "Tasks that reached a final status",
            ["executor", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "async_tasks_task_duration_seconds",
            "Run time of task attempts, in seconds",
            ["executor"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.cleanup_removed = Counter(
            "async_tasks_cleanup_removed", "Finished tasks removed by retention", ["reason"], registry=self.registry
        )
        self.registry.register(_ScrapeTimeCollector(self))
        store.on_transition.append(self._on_transition)
        runner.on_finish.append(self._on_finish)
        cleaner.after_sweep.append(self._on_sweep)

    def _on_transition(self, task: Task, previous: TaskStatus | None) -> None:
        if previous is None:
            self.created.labels(task.executor).inc()
        elif task.status in TERMINAL:
            self.finished.labels(task.executor, task.status.value).inc()

    def _on_finish(self, task: Task, duration: float) -> None:
        self.duration.labels(task.executor).observe(duration)

    def _on_sweep(self, result: CleanupResult, trigger: str) -> None:
        for reason, count in (
            ("completed", result.removed_completed),
            ("failed", result.removed_failed),
            ("cancelled", result.removed_cancelled),
        ):
            if count:
                self.cleanup_removed.labels(reason).inc(count)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def http_config(self) -> AppPrometheusConfig:
        """Request metrics for this app, in this registry."""
        return AppPrometheusConfig(
            app_name="async_tasks",
            prefix="async_tasks_http",
            group_path=True,
            exclude_opt_key=OPS_OPT_KEY,
            middleware_class=AppPrometheusMiddleware,
            registry=self.registry,
        )

    def controller(self) -> type[PrometheusController]:
        """A `PrometheusController` serving this app's registry."""
        return type("MetricsController", (MetricsController,), {"task_metrics": self})


class MetricsController(PrometheusController):
    """``GET /metrics`` from the app's own registry (see `TaskMetrics.controller`)."""

    path = METRICS_PATH
    tags = ["ops"]  # noqa: RUF012 (a Controller layer attribute)
    task_metrics: ClassVar[TaskMetrics]

    # Replaces the base class's `get`, which always serves the global registry.
    @http_get(
        summary="Prometheus metrics (text exposition format)",
        media_type=MediaType.TEXT,
        opt={OPS_OPT_KEY: True},
        sync_to_thread=False,
    )
    def get(self) -> Response[bytes]:
        return Response(self.task_metrics.exposition(), media_type=_EXPOSITION_TYPE)


def opentelemetry_plugins(settings: Settings) -> list[Any]:
    """With OTEL_ENABLED, Litestar's `OpenTelemetryPlugin` (the ``otel`` extra)."""
    if not settings.otel_enabled:
        return []
    try:
        from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
    except ImportError:
        raise SettingsError(
            "Invalid value for OTEL_ENABLED: true needs OpenTelemetry, which is not installed "
            "(pip install 'async-tasks[otel]')"
        ) from None
    # Its middleware wraps the whole app (before routing), so ops routes are excluded by path.
    return [OpenTelemetryPlugin(OpenTelemetryConfig(exclude=OPS_PATH_PATTERN, exclude_opt_key=OPS_OPT_KEY))]

"""Request metrics and the ``GET /metrics`` route, on the engine's metrics registry.

HTTP requests are counted and timed by `RequestMetricsMiddleware` under the names
and labels of Litestar's `PrometheusMiddleware` (``async_tasks_http_requests_total``,
``..._request_duration_seconds``, ``..._requests_in_progress``,
``..._requests_error_total``; labels ``method``, ``path``, ``status_code``,
``app_name``), labelled with the route *template*, never a concrete path with an id
in it. The task metrics themselves are `async_tasks.metrics.TaskMetrics`.

Why not the stock middleware: it cost a sixth of a status request (a `Request` and
its parsed URL, label dicts and four ``labels()`` look-ups per request), it keeps its
metrics in a class-level dict in the global registry, and `PrometheusController`
always serves the global registry. Tests build many apps per process, and two apps in
one process must not share counters. So `RequestMetrics` keeps plain numbers per
(method, route, status) for one app and turns them into metric families of that
app's registry when it is scraped (a `prometheus_client` collector), and
`MetricsController` serves that registry.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from litestar import MediaType, Response
from litestar import get as http_get
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from async_tasks.errors import SettingsError
from async_tasks.metrics import TaskMetrics

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from async_tasks.settings import Settings

#: Route-handler ``opt`` key that keeps a route (health, metrics) out of request metrics
#: and out of session resolution.
OPS_OPT_KEY = "async_tasks_ops"
METRICS_PATH = "/metrics"
#: The ops routes (health probes and scrapes), by path.
OPS_PATH_PATTERN = r"^/(health|healthz|ready|metrics)/?$"
#: Litestar appends the charset to text/* media types itself.
_EXPOSITION_TYPE = CONTENT_TYPE_LATEST.split("; charset=")[0]
#: prometheus_client's default histogram buckets (what Litestar's middleware used).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_LABELS = ("method", "path", "status_code", "app_name")


class _Series:
    """One (method, route, status)'s requests: count, summed seconds, per-bucket counts."""

    __slots__ = ("buckets", "count", "created", "errors", "total")

    def __init__(self, buckets: int) -> None:
        self.count = 0
        self.errors = 0
        self.total = 0.0
        self.buckets = [0] * (buckets + 1)  # the last one is +Inf
        self.created = time.time()


class RequestMetrics(Collector):
    """The request metrics of one app, in `registry`.

    Counting is a few additions on plain numbers (the event loop's thread is the only
    writer); the metric families are built when the registry is collected."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        prefix: str = "async_tasks_http",
        app_name: str = "async_tasks",
        buckets: tuple[float, ...] = REQUEST_BUCKETS,
    ) -> None:
        self.prefix = prefix
        self.app_name = app_name
        self.bounds = buckets
        self._series: dict[tuple[str, str, int], _Series] = {}
        #: Requests in progress per (method, route), with the time its series appeared.
        self._in_progress: dict[tuple[str, str], list[Any]] = {}
        registry.register(self)

    def started(self, method: str, path: str) -> None:
        counter = self._in_progress.get((method, path))
        if counter is None:
            counter = self._in_progress[(method, path)] = [0, time.time()]
        counter[0] += 1

    def ended(self, method: str, path: str, status: int, seconds: float) -> None:
        self._in_progress[(method, path)][0] -= 1
        series = self._series.get((method, path, status))
        if series is None:
            series = self._series[(method, path, status)] = _Series(len(self.bounds))
        series.count += 1
        series.total += seconds
        series.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
        if status >= 500:
            series.errors += 1

    def collect(self) -> Iterator[Metric]:
        prefix, app = self.prefix, self.app_name
        progress = GaugeMetricFamily(
            f"{prefix}_requests_in_progress", "Total requests currently in progress", labels=_LABELS
        )
        for (method, path), (count, _) in list(self._in_progress.items()):
            progress.add_metric([method, path, "200", app], count)
        yield progress
        series = list(self._series.items())
        requests = CounterMetricFamily(f"{prefix}_requests", "Total requests", labels=_LABELS)
        errors = CounterMetricFamily(f"{prefix}_requests_error", "Total errors in requests", labels=_LABELS)
        duration = HistogramMetricFamily(
            f"{prefix}_request_duration_seconds", "Request duration, in seconds", labels=_LABELS
        )
        bounds = [*(repr(float(bound)) for bound in self.bounds), "+Inf"]  # as prometheus_client writes them
        for (method, path, status), one in series:
            labels = [method, path, str(status), app]
            requests.add_metric(labels, one.count, created=one.created)
            if one.errors:
                errors.add_metric(labels, one.errors, created=one.created)
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, one.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            duration.add_metric(labels, buckets, one.total)
            duration.samples.append(
                Sample(f"{duration.name}_created", dict(zip(_LABELS, labels, strict=True)), one.created)
            )
        yield requests
        yield duration
        if errors.samples:
            yield errors


class RequestMetricsMiddleware(ASGIMiddleware):
    """Counts and times each request of a route (not the ops routes) in `RequestMetrics`.

    App middleware runs after routing, so the route template is in the scope. A
    WebSocket is counted as method ``websocket`` for as long as it is open."""

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)
    exclude_opt_key = OPS_OPT_KEY

    def __init__(self, metrics: RequestMetrics) -> None:
        self.metrics = metrics

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        metrics = self.metrics
        method = scope["method"] if scope["type"] == ScopeType.HTTP else "websocket"
        path = scope["path_template"]
        began = time.perf_counter()
        span = [200, 0.0]

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                span[0] = message["status"]
            elif message["type"] == "http.response.body":
                span[1] = time.perf_counter() - began
            await send(message)

        metrics.started(method, path)
        try:
            await next_app(scope, receive, counting_send)
        finally:
            metrics.ended(method, path, int(span[0]), span[1])


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
    )
    async def get(self) -> Response[bytes]:
        return Response(await self.task_metrics.exposition(), media_type=_EXPOSITION_TYPE)


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


def request_metrics_middleware(metrics: TaskMetrics) -> RequestMetricsMiddleware:
    """Request metrics for one app, in the registry of its task metrics."""
    return RequestMetricsMiddleware(RequestMetrics(metrics.registry))


def metrics_controller(metrics: TaskMetrics) -> type[PrometheusController]:
    """A `PrometheusController` serving `metrics`' registry."""
    return type("MetricsController", (MetricsController,), {"task_metrics": metrics})

"""Request metrics and the ``GET /metrics`` route, on the engine's metrics registry.

HTTP requests are counted and timed by Litestar's own `PrometheusMiddleware`
(``async_tasks_http_requests_total``, ``..._request_duration_seconds``,
``..._requests_in_progress``, ``..._requests_error_total``), labelled with the
route *template* (``group_path=True``), never a concrete path with an id in it.
The task metrics themselves are `async_tasks.metrics.TaskMetrics`.

Why not the stock setup: `PrometheusMiddleware` caches its metrics in a class-level
dict and creates them in the global default registry, and `PrometheusController`
always serves the global registry. Tests build many apps per process, and two
apps in one process must not share counters, so `AppPrometheusConfig` carries a
registry and a metric cache per app, `AppPrometheusMiddleware` creates its metrics
there, and `MetricsController` serves that registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, cast

from litestar import MediaType, Response
from litestar import get as http_get
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController, PrometheusMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram

from async_tasks.errors import SettingsError
from async_tasks.metrics import TaskMetrics

if TYPE_CHECKING:
    from litestar.types import Message, Send
    from prometheus_client.metrics import MetricWrapperBase

    from async_tasks.settings import Settings

#: Route-handler ``opt`` key that keeps a route (health, metrics) out of request metrics
#: and out of session resolution.
OPS_OPT_KEY = "async_tasks_ops"
METRICS_PATH = "/metrics"
#: The ops routes (health probes and scrapes), by path.
OPS_PATH_PATTERN = r"^/(health|healthz|ready|metrics)/?$"
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


def http_metrics_config(metrics: TaskMetrics) -> AppPrometheusConfig:
    """Request metrics for one app, in the registry of its task metrics."""
    return AppPrometheusConfig(
        app_name="async_tasks",
        prefix="async_tasks_http",
        group_path=True,
        exclude_opt_key=OPS_OPT_KEY,
        middleware_class=AppPrometheusMiddleware,
        registry=metrics.registry,
    )


def metrics_controller(metrics: TaskMetrics) -> type[PrometheusController]:
    """A `PrometheusController` serving `metrics`' registry."""
    return type("MetricsController", (MetricsController,), {"task_metrics": metrics})

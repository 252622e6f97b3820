"""Health endpoints at the app root: liveness and readiness.

- ``GET /health`` and ``GET /healthz``: the process answers (liveness); always
  ``{"status": "ok"}``.
- ``GET /ready``: 200 ``{"status": "ready", "checks": {...}}`` when the runner and
  the cleaner are alive, new tasks are accepted (no shutdown under way), the
  event loop's lag is under READY_MAX_LOOP_LAG_MS and (a shared backend) its server answers; otherwise 503
  ``{"status": "unavailable", "failing": [...], "checks": {...}}`` naming what fails.

The lag comes from `LoopLagProbe`, a tiny task in the app's lifespan that sleeps
100 ms at a time and records how late it woke up.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio
import anyio.abc
from litestar import MediaType, Response, get
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec

from async_tasks.system import TaskSystem
from async_tasks.web.api.openapi import NO_SESSION
from async_tasks.web.api.schemas import HealthResponse, ReadyResponse
from async_tasks.web.metrics import OPS_OPT_KEY


class LoopLagProbe:
    """Measures event-loop lag: how late a short sleep wakes up."""

    # Not a multiple of 0.1 s: anyio's `wait_all_tasks_blocked` re-checks every 0.1 s on
    # asyncio, and a probe waking in phase with it would look busy at every check.
    def __init__(self, interval: float = 0.37) -> None:
        self.interval = interval
        #: Lag of the last completed sleep, in milliseconds.
        self.lag_ms = 0.0
        self._due: float | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                self._due = anyio.current_time() + self.interval
                await anyio.sleep(self.interval)
                self.lag_ms = max(0.0, (anyio.current_time() - self._due) * 1000)
        finally:
            self._due = None

    def current_lag_ms(self) -> float:
        """The last lag, or more if the probe is overdue right now (a starved loop)."""
        if self._due is None:
            return self.lag_ms
        return max(self.lag_ms, (anyio.current_time() - self._due) * 1000)


async def _backend_check(task_system: TaskSystem) -> Literal["ok", "unreachable"] | None:
    """With a shared backend: whether its server answers within a second."""
    with anyio.move_on_after(1):
        answered = await task_system.backend.ping()
        if answered is None:
            return None
        return "ok" if answered else "unreachable"
    return "unreachable"


_OPS: dict[str, Any] = {"tags": ["ops"], "opt": {OPS_OPT_KEY: True}, "security": NO_SESSION}


@get(["/health", "/healthz"], summary="Liveness: the process answers", sync_to_thread=False, **_OPS)
def health() -> HealthResponse:
    return HealthResponse()


def health_handlers(probe: LoopLagProbe, max_lag: int) -> list[HTTPRouteHandler]:
    """The health routes of one app (readiness reads that app's probe; a loop lag of
    `max_lag` ms or more, READY_MAX_LOOP_LAG_MS, fails it)."""

    @get(
        "/ready",
        summary="Readiness: runner, cleaner and event loop are healthy and tasks are accepted",
        media_type=MediaType.JSON,
        responses={
            503: ResponseSpec(
                data_container=ReadyResponse, description="Not ready: `failing` names why", generate_examples=False
            )
        },
        **_OPS,
    )
    async def ready(task_system: NamedDependency[TaskSystem]) -> Response[ReadyResponse]:
        lag = probe.current_lag_ms()
        checks = {
            "runner": "ok" if task_system.execution.alive else "stopped",
            "cleaner": "ok" if task_system.cleaner.is_active else "stopped",
            "eventLoop": "ok" if lag < max_lag else "lagging",
            "accepting": "ok" if task_system.accepting else "shutting_down",
        }
        backend = await _backend_check(task_system)
        if backend is not None:
            checks[task_system.backend.name] = backend
        failing = [name for name, state in checks.items() if state != "ok"]
        body = ReadyResponse(
            status="unavailable" if failing else "ready",
            checks=checks,
            loop_lag_ms=round(lag, 1),
            max_loop_lag_ms=max_lag,
            failing=failing or None,
        )
        return Response(body, status_code=503 if failing else 200)

    return [health, ready]

"""`TaskClient`: the API's flows (`_flows`) performed with an ``httpx.Client``."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import closing
from typing import Any, TypeVar

import httpx

from async_tasks.client._answers import Json
from async_tasks.client._flows import DEFAULT_URL, BaseClient
from async_tasks.client._ops import Close, Done, Emit, Flow, Op, Open, ReadBody, ReadLine, Send, Sleep, build, resume

T = TypeVar("T")


class SyncDriver:
    """Performs the I/O of one flow with an ``httpx.Client``; holds the response it opened."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http
        self._response: httpx.Response | None = None
        self._lines: Iterator[str] = iter(())

    def __enter__(self) -> SyncDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._close()

    def advance(self, flow: Flow[T]) -> Emit | Done[T]:
        """Run `flow` up to its next `Emit` or its end. A transport error goes back into
        the flow, which may handle it (a broken stream) or let it out."""
        step = resume(flow)
        while not isinstance(step, Emit | Done):
            try:
                reply = self._perform(step)
            except httpx.TransportError as exc:
                step = resume(flow, error=exc)
            else:
                step = resume(flow, reply)
        return step

    def _perform(self, op: Op[Any]) -> Any:
        match op:
            case Send(request):
                return self._http.send(build(self._http, request))
            case Open(request):
                self._close()
                self._response = self._http.send(build(self._http, request), stream=True)
                self._lines = self._response.iter_lines()
                return self._response
            case ReadLine():
                return next(self._lines, None)
            case ReadBody():
                return self._response.read() if self._response is not None else b""
            case Close():
                self._close()
            case Sleep(seconds):
                time.sleep(seconds)
            case _:
                raise TypeError(f"unknown operation {op!r}")
        return None

    def _close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response, self._lines = None, iter(())


class TaskClient(BaseClient):
    """Synchronous client. Use as a context manager, or call `close()`.

    Args:
        base_url: the server (default ``http://localhost:3000``).
        token: a session token to use (e.g. from ``new_session()["token"]``).
        timeout: seconds per request.
        api_path: where the API is mounted (default ``/api/v1``).
        transport: an httpx transport (tests: ``httpx.MockTransport``, or one that runs
            the app in-process).
        on_token: called with each new session token the client adopts.
        api_key: sent as ``X-API-Key`` (for a server with API_KEYS set).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        api_path: str = "/api/v1",
        transport: httpx.BaseTransport | None = None,
        on_token: Callable[[str], None] | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(base_url, token=token, timeout=timeout, api_path=api_path, on_token=on_token, api_key=api_key)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, flow: Flow[T]) -> T:
        with closing(flow), SyncDriver(self._http) as driver:
            while True:
                step = driver.advance(flow)
                if isinstance(step, Done):
                    return step.value

    # -- tasks ------------------------------------------------------------------

    def create_task(self, executor: str, /, params: Mapping[str, Any] | None = None, **options: Any) -> Json:
        """``POST /tasks``: the new task (pending unless ``start=True``).

        Options (snake_case or camelCase): name, description, metadata, tags, start,
        priority, timeout_ms, max_retries, idempotency_key.
        """
        return self._run(self._create_task(executor, params, options))

    def demo(self, executor: str, /, **params: Any) -> Json:
        """``POST /demo/tasks/{executor}``: create and start the task.

        Returns ``{id, name, status, progress, sessionKey}``.

        Keyword arguments are the executor's params (camelCase, e.g. ``delayMs=2000``)
        and task options (``description``, ``tags``...).
        """
        return self._run(self._demo(executor, params))

    def list_tasks(
        self,
        status: str | None = None,
        *,
        executor: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        dead_letter: bool | None = None,
    ) -> list[Json]:
        """``GET /tasks``: the session's task summaries, newest first."""
        return self._run(
            self._list_tasks(
                status=status, executor=executor, tag=tag, limit=limit, offset=offset, dead_letter=dead_letter
            )
        )

    def get_task(self, task_id: str) -> Json:
        """``GET /tasks/{id}``: the full task with its history."""
        return self._run(self._task(task_id))

    def status(self, task_id: str) -> Json:
        """``GET /tasks/{id}/status``: status, progress, currentStep, currentStepDescription,
        startedAt, completedAt, error."""
        return self._run(self._status(task_id))

    def start(self, task_id: str, *, start_at: int | None = None) -> Json:
        """``POST /tasks/{id}/start``: now, or at `start_at` (epoch ms)."""
        return self._run(self._action(task_id, "start", None if start_at is None else {"startAt": start_at}))

    def cancel(self, task_id: str) -> Json:
        return self._run(self._action(task_id, "cancel"))

    def retry(self, task_id: str) -> Json:
        return self._run(self._action(task_id, "retry"))

    def delete(self, task_id: str) -> None:
        self._run(self._delete(task_id))

    def stats(self) -> Json:
        """``GET /tasks/stats``: counts per status in this session."""
        return self._run(self._stats())

    def executors(self) -> list[Json]:
        """``GET /executors``: name, title, description, steps, paramsSchema, demoPath..."""
        return self._run(self._executors())

    def cleanup_status(self) -> Json:
        return self._run(self._cleanup_status())

    def run_cleanup(self) -> Json:
        return self._run(self._run_cleanup())

    # -- sessions ---------------------------------------------------------------

    def session(self) -> Json:
        """``GET /session``: ``{sessionKey, token}`` of the session this client is in."""
        return self._run(self._session())

    def new_session(self) -> Json:
        """Start a new, empty session and use it from now on; returns ``{sessionKey, token}``."""
        return self._run(self._new_session())

    # -- watching ---------------------------------------------------------------

    def watch(
        self, task_id: str, *, interval: float = 0.5, timeout: float | None = None, events: bool = True
    ) -> Generator[Json, None, None]:
        """Yield the task's status each time it changes, until it completes, fails or is cancelled.

        Uses the push stream ``GET /tasks/{id}/events`` when the server has it (and
        `events` is true), else polls the task every `interval` seconds. Each update
        has the /status fields (status, progress, currentStep, currentStepDescription,
        error...) plus ``taskId`` and ``source`` ("events" or "poll"). It also has
        ``queuePosition`` and ``eta`` (where the task stands in its session's
        line, and when it should start and finish: ``startsInMs``, ``finishesInMs``), and
        ``lines``: the log lines the executor wrote since the last update (each
        ``{"n", "at", "message", "data"?}``, each once; absent when there are none). A
        failure that an automatic retry follows does not end it. Raises `TimeoutError`
        after `timeout` seconds.
        """
        flow = self._watch(task_id, interval=interval, timeout=timeout, events=events)
        with closing(flow), SyncDriver(self._http) as driver:
            while isinstance(step := driver.advance(flow), Emit):
                yield step.update

    def wait(self, task_id: str, *, timeout: float | None = None, interval: float = 0.5) -> Json:
        """Block until the task ends; return the full task."""
        return self._run(self._wait(task_id, timeout=timeout, interval=interval))

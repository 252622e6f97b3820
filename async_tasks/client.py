"""A small HTTP client for the async-tasks API, sync and async, made for notebooks.

    from async_tasks.client import TaskClient

    with TaskClient("http://localhost:3000") as tasks:
        task = tasks.demo("sample", delayMs=2000)
        for update in tasks.watch(task["id"]):
            print(update["status"], update["progress"], update["currentStep"])

    async with AsyncTaskClient() as tasks:
        task = await tasks.create_task("sample", {"delayMs": 500}, start=True)
        async for update in tasks.watch(task["id"]):
            ...

Every method returns plain JSON data (dicts and lists, camelCase keys as on the
wire). An error body raises `TaskApiError(status, code, message)`.

Sessions: the client keeps the session token once it has one, from
`new_session()`, from the ``X-Session-Token`` header the server sends when it
issues a session (IP mapping off), or passed as ``token=``; it sends it as the
``X-Session-Token`` header on every request. Without a token the server decides
(by default one session per client IP, shared with a browser on the same machine).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import anyio
import httpx

__all__ = ["DEFAULT_URL", "TERMINAL_STATUSES", "AsyncTaskClient", "TaskApiError", "TaskClient"]

DEFAULT_URL = "http://localhost:3000"
TOKEN_HEADER = "X-Session-Token"
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
#: How long the event stream may stay silent before `watch` falls back to polling.
STREAM_IDLE_TIMEOUT_S = 30.0


class TaskApiError(Exception):
    """An error answer of the API: ``{"success": false, "error": {"code", "message", "details"}}``."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return f"{self.message} ({self.code}, HTTP {self.status})"

    def __repr__(self) -> str:
        return f"TaskApiError({self.status!r}, {self.code!r}, {self.message!r})"


class _StreamUnavailable(Exception):
    """The push stream is absent, refused or broke: poll instead."""


@dataclass
class _Call:
    """One API request and how to turn its JSON answer into the method's result."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extract: Callable[[Any], Any] = lambda body: body


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _without_success(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: v for k, v in body.items() if k != "success"}
    return body


def _key(name: str) -> Callable[[Any], Any]:
    return lambda body: body[name] if isinstance(body, dict) else body


def _quote(segment: str) -> str:
    return quote(str(segment), safe="")


class _Calls:
    """The request of every API operation (shared by the sync and async clients)."""

    def __init__(self, api_path: str) -> None:
        self.api = "/" + api_path.strip("/") if api_path.strip("/") else ""

    def task_path(self, task_id: str, suffix: str = "") -> str:
        if not isinstance(task_id, str) or not task_id:
            raise ValueError("task_id must be a non-empty string")
        return f"{self.api}/tasks/{_quote(task_id)}{suffix}"

    def create_task(self, executor: str, params: Mapping[str, Any] | None, options: dict[str, Any]) -> _Call:
        headers = {}
        key = options.pop("idempotency_key", None) or options.pop("idempotencyKey", None)
        if key:
            headers["Idempotency-Key"] = str(key)
        body: dict[str, Any] = {"executor": executor}
        if params is not None:
            body["params"] = dict(params)
        body.update({_camel(k): v for k, v in options.items()})
        return _Call("POST", f"{self.api}/tasks", json=body, headers=headers, extract=_key("task"))

    def demo(self, executor: str, params: dict[str, Any]) -> _Call:
        headers = {}
        key = params.pop("idempotency_key", None)
        if key:
            headers["Idempotency-Key"] = str(key)
        return _Call(
            "POST", f"{self.api}/demo/tasks/{_quote(executor)}", json=params, headers=headers, extract=_key("task")
        )

    def list_tasks(self, **query: Any) -> _Call:
        params = {
            _camel(k): (v.lower() if isinstance(v, str) and k == "status" else v)
            for k, v in query.items()
            if v is not None
        }
        for k, v in params.items():
            if isinstance(v, bool):
                params[k] = "true" if v else "false"
        return _Call("GET", f"{self.api}/tasks", params=params, extract=_key("tasks"))

    def get_task(self, task_id: str) -> _Call:
        return _Call("GET", self.task_path(task_id), extract=_key("task"))

    def status(self, task_id: str) -> _Call:
        return _Call("GET", self.task_path(task_id, "/status"), extract=_without_success)

    def action(self, task_id: str, action: str) -> _Call:
        return _Call("POST", self.task_path(task_id, f"/{action}"), extract=_key("task"))

    def delete(self, task_id: str) -> _Call:
        return _Call("DELETE", self.task_path(task_id), extract=lambda body: None)

    def stats(self) -> _Call:
        return _Call("GET", f"{self.api}/tasks/stats", extract=_key("stats"))

    def executors(self) -> _Call:
        return _Call("GET", f"{self.api}/executors", extract=_key("executors"))

    def cleanup_status(self) -> _Call:
        return _Call("GET", f"{self.api}/tasks/cleanup/status", extract=_key("status"))

    def run_cleanup(self) -> _Call:
        return _Call("POST", f"{self.api}/tasks/cleanup/run", extract=_key("result"))

    def session(self) -> _Call:
        return _Call("GET", f"{self.api}/session", extract=_without_success)

    def new_session(self) -> _Call:
        return _Call("POST", f"{self.api}/session", extract=_without_success)


# -- responses and the event stream ---------------------------------------------


def _error_of(response: httpx.Response) -> TaskApiError:
    status = response.status_code
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return TaskApiError(
            status,
            str(error.get("code") or f"http_{status}"),
            str(error.get("message") or response.reason_phrase or "Request failed"),
            error.get("details"),
        )
    text = response.text.strip()
    plain = text and not text.startswith("<")
    message = text[:300] if plain else (response.reason_phrase or "Request failed")
    return TaskApiError(status, f"http_{status}", message)


def _body_of(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise _error_of(response)
    if response.status_code == 204 or not response.content:
        return None
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise TaskApiError(response.status_code, "invalid_response", "The server did not answer JSON.") from exc
    if isinstance(body, dict) and body.get("success") is False:
        raise _error_of(response)
    return body


class _SseParser:
    """Incremental parser of ``text/event-stream`` lines into (event, data) pairs."""

    def __init__(self) -> None:
        self.event = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        if line == "":
            if not self.data:
                self.event = "message"
                return None
            out = (self.event, "\n".join(self.data))
            self.event, self.data = "message", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            self.event = value or "message"
        elif name == "data":
            self.data.append(value)
        return None


def _update(payload: Mapping[str, Any], task_id: str, source: str, event: str | None = None) -> dict[str, Any]:
    """A status update as `watch` yields it: the /status fields plus taskId and source."""
    update = {k: v for k, v in payload.items() if k not in ("success", "sessionKey")}
    update.setdefault("currentStep", None)
    update.setdefault("currentStepDescription", None)
    update.setdefault("error", None)
    update["taskId"] = task_id
    update["source"] = source
    if event is not None:
        update["event"] = payload.get("type") or event
    return update


_WATCHED = ("status", "progress", "currentStep", "currentStepDescription", "error")


def _fingerprint(update: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(update.get(k) for k in _WATCHED)


def _may_retry(update: Mapping[str, Any]) -> bool:
    """A failed attempt seen on the stream may be followed by an automatic retry
    (failed → pending at once): `watch` asks /status before it stops."""
    return update.get("status") == "failed" and update.get("source") == "events"


#: What `_event_update` returns for a ``removed`` event.
_REMOVED: dict[str, Any] = {}


def _event_update(event: str, data: str, task_id: str) -> dict[str, Any] | None:
    """The update in one SSE message; None to skip it; `_REMOVED` when the task was removed."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    if payload.get("taskId", task_id) != task_id:
        return None
    if (payload.get("type") or event) == "removed":
        return _REMOVED
    if "status" not in payload:
        return None
    return _update(payload, task_id, "events", event)


def _is_stream(response: httpx.Response) -> bool:
    return response.status_code < 400 and "text/event-stream" in response.headers.get("content-type", "")


def _stream_check(response: httpx.Response, body: bytes) -> None:
    """Raise for an unusable stream answer: the task's 404 is an error, a missing route a fallback."""
    if _is_stream(response):
        return
    if response.status_code in (404, 405, 406, 501) or response.status_code < 400:
        if response.status_code == 404:
            error = _error_of(httpx.Response(404, content=body, headers=response.headers))
            if error.code == "task_not_found":
                raise error
        raise _StreamUnavailable(f"HTTP {response.status_code}")
    raise _error_of(httpx.Response(response.status_code, content=body, headers=response.headers))


# -- the clients ----------------------------------------------------------------


class _Base:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        api_path: str,
        on_token: Callable[[str], None] | None,
        api_key: str | None = None,
    ) -> None:
        self.base_url = str(base_url).rstrip("/")
        self.token = token
        self.api_key = api_key
        self.on_token = on_token
        self._calls = _Calls(api_path)

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token:
            headers[TOKEN_HEADER] = self.token
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        if extra:
            headers.update(extra)
        return headers

    def _capture(self, response: httpx.Response) -> None:
        issued = response.headers.get(TOKEN_HEADER)
        if issued and issued != self.token:
            self._set_token(issued)

    def _set_token(self, token: str) -> None:
        self.token = token
        if self.on_token is not None:
            self.on_token(token)

    @staticmethod
    def _watch_deadline(timeout: float | None) -> float | None:
        return None if timeout is None else time.monotonic() + timeout

    @staticmethod
    def _check_deadline(deadline: float | None, task_id: str) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} did not finish in time")

    @staticmethod
    def _read_timeout(deadline: float | None) -> float:
        if deadline is None:
            return STREAM_IDLE_TIMEOUT_S
        return max(0.1, min(STREAM_IDLE_TIMEOUT_S, deadline - time.monotonic()))


class TaskClient(_Base):
    """Synchronous client. Use as a context manager, or call `close()`.

    Args:
        base_url: the server (default ``http://localhost:3000``).
        token: a session token to use (e.g. from ``new_session()["token"]``).
        timeout: seconds per request.
        api_path: where the API is mounted (default ``/api/v1``).
        transport: an httpx transport (tests: ``httpx.MockTransport``...).
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
        super().__init__(base_url, token=token, api_path=api_path, on_token=on_token, api_key=api_key)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def __enter__(self) -> TaskClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, call: _Call) -> Any:
        response = self._http.request(
            call.method, call.path, json=call.json, params=call.params, headers=self._headers(call.headers)
        )
        self._capture(response)
        return call.extract(_body_of(response))

    # -- tasks ------------------------------------------------------------------

    def create_task(self, executor: str, /, params: Mapping[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        """``POST /tasks``: the new task (pending unless ``start=True``).

        Options (snake_case or camelCase): name, description, metadata, tags, start,
        priority, timeout_ms, max_retries, idempotency_key.
        """
        return self._run(self._calls.create_task(executor, params, options))  # type: ignore[no-any-return]

    def demo(self, executor: str, /, **params: Any) -> dict[str, Any]:
        """``POST /demo/tasks/{executor}``: create and start the task.

        Returns ``{id, name, status, progress, sessionKey}``.

        Keyword arguments are the executor's params (camelCase, e.g. ``delayMs=2000``)
        and task options (``description``, ``tags``...).
        """
        return self._run(self._calls.demo(executor, params))  # type: ignore[no-any-return]

    def list_tasks(
        self,
        status: str | None = None,
        *,
        executor: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        dead_letter: bool | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /tasks``: the session's task summaries, newest first."""
        call = self._calls.list_tasks(
            status=status, executor=executor, tag=tag, limit=limit, offset=offset, dead_letter=dead_letter
        )
        return self._run(call)  # type: ignore[no-any-return]

    def get_task(self, task_id: str) -> dict[str, Any]:
        """``GET /tasks/{id}``: the full task with its history."""
        return self._run(self._calls.get_task(task_id))  # type: ignore[no-any-return]

    def status(self, task_id: str) -> dict[str, Any]:
        """``GET /tasks/{id}/status``: status, progress, currentStep, currentStepDescription,
        startedAt, completedAt, error."""
        return self._run(self._calls.status(task_id))  # type: ignore[no-any-return]

    def start(self, task_id: str) -> dict[str, Any]:
        return self._run(self._calls.action(task_id, "start"))  # type: ignore[no-any-return]

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._run(self._calls.action(task_id, "cancel"))  # type: ignore[no-any-return]

    def retry(self, task_id: str) -> dict[str, Any]:
        return self._run(self._calls.action(task_id, "retry"))  # type: ignore[no-any-return]

    def delete(self, task_id: str) -> None:
        self._run(self._calls.delete(task_id))

    def stats(self) -> dict[str, Any]:
        """``GET /tasks/stats``: counts per status in this session."""
        return self._run(self._calls.stats())  # type: ignore[no-any-return]

    def executors(self) -> list[dict[str, Any]]:
        """``GET /executors``: name, title, description, steps, paramsSchema, demoPath..."""
        return self._run(self._calls.executors())  # type: ignore[no-any-return]

    def cleanup_status(self) -> dict[str, Any]:
        return self._run(self._calls.cleanup_status())  # type: ignore[no-any-return]

    def run_cleanup(self) -> dict[str, Any]:
        return self._run(self._calls.run_cleanup())  # type: ignore[no-any-return]

    # -- sessions ---------------------------------------------------------------

    def session(self) -> dict[str, Any]:
        """``GET /session``: ``{sessionKey, token}`` of the session this client is in."""
        return self._run(self._calls.session())  # type: ignore[no-any-return]

    def new_session(self) -> dict[str, Any]:
        """Start a new, empty session and use it from now on; returns ``{sessionKey, token}``."""
        info: dict[str, Any] = self._run(self._calls.new_session())
        if info.get("token"):
            self._set_token(info["token"])
        return info

    # -- watching ---------------------------------------------------------------

    def watch(
        self, task_id: str, *, interval: float = 0.5, timeout: float | None = None, events: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Yield the task's status each time it changes, until it completes, fails or is cancelled.

        Uses the push stream ``GET /tasks/{id}/events`` when the server has it (and
        `events` is true), else polls ``/status`` every `interval` seconds. Each update
        has the /status fields (status, progress, currentStep, currentStepDescription,
        error...) plus ``taskId`` and ``source`` ("events" or "poll"). Raises
        `TimeoutError` after `timeout` seconds.
        """
        deadline = self._watch_deadline(timeout)
        last: tuple[Any, ...] | None = None
        if events:
            try:
                for update in self._stream(task_id, deadline):
                    if update is None:
                        return
                    if _fingerprint(update) != last:
                        last = _fingerprint(update)
                        yield update
                    if update.get("status") in TERMINAL_STATUSES and not (
                        _may_retry(update) and self.status(task_id)["status"] not in TERMINAL_STATUSES
                    ):
                        return
            except _StreamUnavailable:
                pass
        while True:
            update = _update(self.status(task_id), task_id, "poll")
            if _fingerprint(update) != last:
                last = _fingerprint(update)
                yield update
            if update.get("status") in TERMINAL_STATUSES:
                return
            self._check_deadline(deadline, task_id)
            time.sleep(interval)

    def wait(self, task_id: str, *, timeout: float | None = None, interval: float = 0.5) -> dict[str, Any]:
        """Block until the task ends; return the full task."""
        for _ in self.watch(task_id, timeout=timeout, interval=interval):
            pass
        return self.get_task(task_id)

    def _stream(self, task_id: str, deadline: float | None) -> Iterator[dict[str, Any] | None]:
        """Updates from the SSE stream; None when the task was removed; raises _StreamUnavailable."""
        path = self._calls.task_path(task_id, "/events")
        headers = self._headers({"Accept": "text/event-stream"})
        timeout = httpx.Timeout(10.0, read=self._read_timeout(deadline))
        try:
            with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                self._capture(response)
                if not _is_stream(response):
                    _stream_check(response, response.read())
                # The stream's first event is the task's snapshot: no separate poll, whose
                # answer could be newer than the events queued behind it.
                parser = _SseParser()
                for line in response.iter_lines():
                    message = parser.feed(line)
                    if message is None:
                        continue
                    update = _event_update(*message, task_id)
                    if update is _REMOVED:
                        yield None
                        return
                    if update is not None:
                        yield update
                    self._check_deadline(deadline, task_id)
        except httpx.TransportError as exc:
            self._check_deadline(deadline, task_id)
            raise _StreamUnavailable(str(exc)) from exc
        raise _StreamUnavailable("the stream ended")


class AsyncTaskClient(_Base):
    """Asynchronous client (asyncio or trio). Use with ``async with``, or call `aclose()`.

    Same methods as `TaskClient`, as coroutines; `watch` is an async iterator.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        api_path: str = "/api/v1",
        transport: httpx.AsyncBaseTransport | None = None,
        on_token: Callable[[str], None] | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(base_url, token=token, api_path=api_path, on_token=on_token, api_key=api_key)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncTaskClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, call: _Call) -> Any:
        response = await self._http.request(
            call.method, call.path, json=call.json, params=call.params, headers=self._headers(call.headers)
        )
        self._capture(response)
        return call.extract(_body_of(response))

    async def create_task(
        self, executor: str, /, params: Mapping[str, Any] | None = None, **options: Any
    ) -> dict[str, Any]:
        return await self._run(self._calls.create_task(executor, params, options))  # type: ignore[no-any-return]

    async def demo(self, executor: str, /, **params: Any) -> dict[str, Any]:
        return await self._run(self._calls.demo(executor, params))  # type: ignore[no-any-return]

    async def list_tasks(
        self,
        status: str | None = None,
        *,
        executor: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        dead_letter: bool | None = None,
    ) -> list[dict[str, Any]]:
        call = self._calls.list_tasks(
            status=status, executor=executor, tag=tag, limit=limit, offset=offset, dead_letter=dead_letter
        )
        return await self._run(call)  # type: ignore[no-any-return]

    async def get_task(self, task_id: str) -> dict[str, Any]:
        return await self._run(self._calls.get_task(task_id))  # type: ignore[no-any-return]

    async def status(self, task_id: str) -> dict[str, Any]:
        return await self._run(self._calls.status(task_id))  # type: ignore[no-any-return]

    async def start(self, task_id: str) -> dict[str, Any]:
        return await self._run(self._calls.action(task_id, "start"))  # type: ignore[no-any-return]

    async def cancel(self, task_id: str) -> dict[str, Any]:
        return await self._run(self._calls.action(task_id, "cancel"))  # type: ignore[no-any-return]

    async def retry(self, task_id: str) -> dict[str, Any]:
        return await self._run(self._calls.action(task_id, "retry"))  # type: ignore[no-any-return]

    async def delete(self, task_id: str) -> None:
        await self._run(self._calls.delete(task_id))

    async def stats(self) -> dict[str, Any]:
        return await self._run(self._calls.stats())  # type: ignore[no-any-return]

    async def executors(self) -> list[dict[str, Any]]:
        return await self._run(self._calls.executors())  # type: ignore[no-any-return]

    async def cleanup_status(self) -> dict[str, Any]:
        return await self._run(self._calls.cleanup_status())  # type: ignore[no-any-return]

    async def run_cleanup(self) -> dict[str, Any]:
        return await self._run(self._calls.run_cleanup())  # type: ignore[no-any-return]

    async def session(self) -> dict[str, Any]:
        return await self._run(self._calls.session())  # type: ignore[no-any-return]

    async def new_session(self) -> dict[str, Any]:
        info: dict[str, Any] = await self._run(self._calls.new_session())
        if info.get("token"):
            self._set_token(info["token"])
        return info

    async def watch(
        self,
        task_id: str,
        *,
        interval: float = 0.5,
        timeout: float | None = None,  # noqa: ASYNC109 - same signature as TaskClient.watch
        events: bool = True,
    ) -> AsyncIterator[dict[str, Any]]:
        """Like `TaskClient.watch`, as an async iterator."""
        deadline = self._watch_deadline(timeout)
        last: tuple[Any, ...] | None = None
        if events:
            try:
                async for update in self._stream(task_id, deadline):
                    if update is None:
                        return
                    if _fingerprint(update) != last:
                        last = _fingerprint(update)
                        yield update
                    if update.get("status") in TERMINAL_STATUSES and not (
                        _may_retry(update) and (await self.status(task_id))["status"] not in TERMINAL_STATUSES
                    ):
                        return
            except _StreamUnavailable:
                pass
        while True:
            update = _update(await self.status(task_id), task_id, "poll")
            if _fingerprint(update) != last:
                last = _fingerprint(update)
                yield update
            if update.get("status") in TERMINAL_STATUSES:
                return
            self._check_deadline(deadline, task_id)
            await anyio.sleep(interval)

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - same signature as TaskClient.wait
        interval: float = 0.5,
    ) -> dict[str, Any]:
        async for _ in self.watch(task_id, timeout=timeout, interval=interval):
            pass
        return await self.get_task(task_id)

    async def _stream(self, task_id: str, deadline: float | None) -> AsyncIterator[dict[str, Any] | None]:
        path = self._calls.task_path(task_id, "/events")
        headers = self._headers({"Accept": "text/event-stream"})
        timeout = httpx.Timeout(10.0, read=self._read_timeout(deadline))
        try:
            async with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                self._capture(response)
                if not _is_stream(response):
                    _stream_check(response, await response.aread())
                # The stream's first event is the task's snapshot (see the sync client).
                parser = _SseParser()
                async for line in response.aiter_lines():
                    message = parser.feed(line)
                    if message is None:
                        continue
                    update = _event_update(*message, task_id)
                    if update is _REMOVED:
                        yield None
                        return
                    if update is not None:
                        yield update
                    self._check_deadline(deadline, task_id)
        except httpx.TransportError as exc:
            self._check_deadline(deadline, task_id)
            raise _StreamUnavailable(str(exc)) from exc
        raise _StreamUnavailable("the stream ended")

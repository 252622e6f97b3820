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
wire). An error body raises `TaskApiError(status, code, message)`; an answer of the
wrong shape raises it with code ``invalid_response``.

Sessions: the client keeps the session token once it has one, from
`new_session()`, from the ``X-Session-Token`` header the server sends when it
issues a session (IP mapping off), or passed as ``token=``; it sends it as the
``X-Session-Token`` header on every request, and calls ``on_token`` with each new
token it adopts. Without a token the server decides (by default one session per
client IP, shared with a browser on the same machine).

How it is built (the pattern of httpx's ``Auth.auth_flow``): what the API means is
written once, without I/O, in `_BaseClient`. Each operation is a *flow*, a
generator that yields the I/O it needs (`_Send` a request, `_Open` the event stream
and read its lines, `_Sleep`, `_Emit` an update of `watch`) and receives the
answers. `TaskClient` and `AsyncTaskClient` only perform that I/O, with
``httpx.Client`` and ``httpx.AsyncClient``. Both take an httpx ``transport=``, so a
test can run them in-process against the app.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar
from urllib.parse import quote

import anyio
import httpx

__all__ = ["DEFAULT_URL", "TERMINAL_STATUSES", "AsyncTaskClient", "TaskApiError", "TaskClient"]

DEFAULT_URL = "http://localhost:3000"
TOKEN_HEADER = "X-Session-Token"
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
#: How long the event stream may stay silent before `watch` falls back to polling.
STREAM_IDLE_TIMEOUT_S = 30.0

T = TypeVar("T")
R = TypeVar("R")
Json: TypeAlias = dict[str, Any]


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


# -- the I/O a flow asks for ------------------------------------------------------------


class _Op(Generic[R]):
    """One piece of I/O a flow asks its driver for. Inside a flow,
    ``reply = yield from op`` yields the operation and gives the driver's reply, typed `R`."""

    def __iter__(self) -> Generator[_Op[Any], Any, R]:
        reply: R = yield self
        return reply


#: An operation of the API, without I/O: yields `_Op`s, receives their replies, returns `T`.
Flow: TypeAlias = Generator[_Op[Any], Any, T]


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    json: Any = None
    params: dict[str, Any] | None = None
    #: None: the client's timeout.
    timeout: httpx.Timeout | None = None


@dataclass(frozen=True)
class _Send(_Op[httpx.Response]):
    """Send the request; reply with the response, its body read."""

    request: _Request


@dataclass(frozen=True)
class _Open(_Op[httpx.Response]):
    """Send the request; reply with the response, its body left to `_ReadLine` or `_ReadBody`."""

    request: _Request


@dataclass(frozen=True)
class _ReadLine(_Op[str | None]):
    """The next line of the opened response; None at its end."""


@dataclass(frozen=True)
class _ReadBody(_Op[bytes]):
    """The rest of the opened response's body."""


@dataclass(frozen=True)
class _Close(_Op[None]):
    """Close the opened response (the driver also closes it when the flow ends)."""


@dataclass(frozen=True)
class _Sleep(_Op[None]):
    seconds: float


@dataclass(frozen=True)
class _Emit(_Op[None]):
    """Hand an update of `watch` to the caller, then go on."""

    update: Json


@dataclass(frozen=True)
class _Done(Generic[T]):
    """The flow ended with `value`."""

    value: T


# -- answers and the event stream ---------------------------------------------------------


def _error_of(status: int, reason: str, body: bytes) -> TaskApiError:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        return TaskApiError(
            status,
            str(error.get("code") or f"http_{status}"),
            str(error.get("message") or reason or "Request failed"),
            error.get("details"),
        )
    text = body.decode("utf-8", "replace").strip()
    plain = text and not text.startswith("<")
    return TaskApiError(status, f"http_{status}", text[:300] if plain else (reason or "Request failed"))


def _body_of(response: httpx.Response) -> Any:
    """The JSON body of a successful answer; raises `TaskApiError` for an error."""
    status = response.status_code
    if status >= 400:
        raise _error_of(status, response.reason_phrase, response.content)
    if status == 204 or not response.content:
        return None
    try:
        body = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaskApiError(status, "invalid_response", "The server did not answer JSON.") from exc
    if isinstance(body, dict) and body.get("success") is False:
        raise _error_of(status, response.reason_phrase, response.content)
    return body


def _invalid(what: str) -> TaskApiError:
    return TaskApiError(200, "invalid_response", f"The server's answer has no {what}.")


def _object(body: Any, key: str | None) -> Json:
    """``body[key]`` (or the body without ``success``) as a JSON object."""
    value = body.get(key) if key is not None and isinstance(body, dict) else body
    if not isinstance(value, dict):
        raise _invalid(f"{key!r} object" if key else "JSON object")
    return {k: v for k, v in value.items() if k != "success"} if key is None else value


def _array(body: Any, key: str) -> list[Json]:
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, list):
        raise _invalid(f"{key!r} list")
    return value


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _quote(segment: str) -> str:
    return quote(str(segment), safe="")


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


def _update(payload: Mapping[str, Any], task_id: str, source: str, event: str | None = None) -> Json:
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


class _Changes:
    """Whether an update differs (in what `watch` shows) from the last one that did."""

    def __init__(self) -> None:
        self.last: tuple[Any, ...] | None = None

    def __call__(self, update: Mapping[str, Any]) -> bool:
        fingerprint = tuple(update.get(k) for k in _WATCHED)
        if fingerprint == self.last:
            return False
        self.last = fingerprint
        return True


#: What `_event_update` returns for a ``removed`` event.
_REMOVED: Json = {}


def _event_update(event: str, data: str, task_id: str) -> Json | None:
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


def _refused_stream(response: httpx.Response, body: bytes) -> Exception:
    """Why an answer to the stream request is no stream: the task's 404 is an error,
    a missing route (or any answer but an error) a reason to poll."""
    status = response.status_code
    if status in (404, 405, 406, 501) or status < 400:
        if status == 404:
            error = _error_of(status, response.reason_phrase, body)
            if error.code == "task_not_found":
                return error
        return _StreamUnavailable(f"HTTP {status}")
    return _error_of(status, response.reason_phrase, body)


@dataclass
class _Deadline:
    task_id: str
    timeout: float | None
    at: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.at = None if self.timeout is None else time.monotonic() + self.timeout

    def check(self) -> None:
        if self.at is not None and time.monotonic() > self.at:
            raise TimeoutError(f"task {self.task_id} did not finish in time")

    def read_timeout(self) -> float:
        """How long one read of the stream may wait."""
        if self.at is None:
            return STREAM_IDLE_TIMEOUT_S
        return max(0.1, min(STREAM_IDLE_TIMEOUT_S, self.at - time.monotonic()))


# -- the API, without I/O -----------------------------------------------------------------


class _BaseClient:
    """The client's state (URL, token) and every operation as a `Flow`."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        timeout: float,
        api_path: str,
        on_token: Callable[[str], None] | None,
        api_key: str | None = None,
    ) -> None:
        self.base_url = str(base_url).rstrip("/")
        self.token = token
        self.api_key = api_key
        self.on_token = on_token
        self._timeout = timeout
        self._api = "/" + api_path.strip("/") if api_path.strip("/") else ""

    # -- requests and answers -----------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> _Request:
        merged = {"Accept": "application/json"}
        if self.token:
            merged[TOKEN_HEADER] = self.token
        if self.api_key:
            merged["X-API-Key"] = self.api_key
        merged.update(headers or {})
        return _Request(method, self._api + path, merged, json=json, params=params, timeout=timeout)

    def _received(self, response: httpx.Response) -> None:
        """Adopt a session token the server issued."""
        issued = response.headers.get(TOKEN_HEADER)
        if issued and issued != self.token:
            self._adopt(issued)

    def _adopt(self, token: str) -> None:
        self.token = token
        if self.on_token is not None:
            self.on_token(token)

    def _exchange(self, request: _Request) -> Flow[Any]:
        """Send `request`; the JSON body of the answer."""
        response = yield from _Send(request)
        self._received(response)
        return _body_of(response)

    def _object(self, method: str, path: str, key: str | None, **kwargs: Any) -> Flow[Json]:
        return _object((yield from self._exchange(self._request(method, path, **kwargs))), key)

    def _task_path(self, task_id: str, suffix: str = "") -> str:
        if not isinstance(task_id, str) or not task_id:
            raise ValueError("task_id must be a non-empty string")
        return f"/tasks/{_quote(task_id)}{suffix}"

    # -- the operations -------------------------------------------------------------

    def _create_task(self, executor: str, params: Mapping[str, Any] | None, options: dict[str, Any]) -> Flow[Json]:
        headers = {}
        key = options.pop("idempotency_key", None) or options.pop("idempotencyKey", None)
        if key:
            headers["Idempotency-Key"] = str(key)
        body: Json = {"executor": executor}
        if params is not None:
            body["params"] = dict(params)
        body.update({_camel(k): v for k, v in options.items()})
        return (yield from self._object("POST", "/tasks", "task", json=body, headers=headers))

    def _demo(self, executor: str, params: dict[str, Any]) -> Flow[Json]:
        headers = {}
        key = params.pop("idempotency_key", None)
        if key:
            headers["Idempotency-Key"] = str(key)
        path = f"/demo/tasks/{_quote(executor)}"
        return (yield from self._object("POST", path, "task", json=params, headers=headers))

    def _list_tasks(self, **query: Any) -> Flow[list[Json]]:
        params: dict[str, Any] = {}
        for name, value in query.items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, str) and name == "status":
                value = value.lower()
            params[_camel(name)] = value
        return _array((yield from self._exchange(self._request("GET", "/tasks", params=params))), "tasks")

    def _task(self, task_id: str) -> Flow[Json]:
        return (yield from self._object("GET", self._task_path(task_id), "task"))

    def _status(self, task_id: str) -> Flow[Json]:
        return (yield from self._object("GET", self._task_path(task_id, "/status"), None))

    def _action(self, task_id: str, action: str) -> Flow[Json]:
        return (yield from self._object("POST", self._task_path(task_id, f"/{action}"), "task"))

    def _delete(self, task_id: str) -> Flow[None]:
        yield from self._exchange(self._request("DELETE", self._task_path(task_id)))

    def _stats(self) -> Flow[Json]:
        return (yield from self._object("GET", "/tasks/stats", "stats"))

    def _executors(self) -> Flow[list[Json]]:
        return _array((yield from self._exchange(self._request("GET", "/executors"))), "executors")

    def _cleanup_status(self) -> Flow[Json]:
        return (yield from self._object("GET", "/tasks/cleanup/status", "status"))

    def _run_cleanup(self) -> Flow[Json]:
        return (yield from self._object("POST", "/tasks/cleanup/run", "result"))

    def _session(self) -> Flow[Json]:
        return (yield from self._object("GET", "/session", None))

    def _new_session(self) -> Flow[Json]:
        info = yield from self._object("POST", "/session", None)
        if isinstance(info.get("token"), str) and info["token"]:
            self._adopt(info["token"])
        return info

    # -- watching -------------------------------------------------------------------

    def _watch(self, task_id: str, *, interval: float, timeout: float | None, events: bool) -> Flow[None]:
        """Emit the task's status each time it changes, until it settles in a terminal status.

        The event stream first (its first event is the task's snapshot: no separate
        poll, whose answer could be newer than the events queued behind it); /status
        every `interval` seconds when there is no stream or it breaks.
        """
        deadline = _Deadline(task_id, timeout)
        changed = _Changes()
        if events:
            try:
                yield from self._open_stream(task_id, deadline)
                parser = _SseParser()
                while True:
                    message = parser.feed((yield from self._read_line(deadline)))
                    update = None if message is None else _event_update(*message, task_id)
                    if update is None:
                        continue
                    if update is _REMOVED:
                        return
                    if changed(update):
                        yield from _Emit(update)
                    if update["status"] in TERMINAL_STATUSES and (yield from self._settled(update, changed)):
                        return
                    deadline.check()
            except _StreamUnavailable:
                yield from _Close()
        while True:
            update = _update((yield from self._status(task_id)), task_id, "poll")
            if changed(update):
                yield from _Emit(update)
            if update.get("status") in TERMINAL_STATUSES:
                return
            deadline.check()
            yield from _Sleep(interval)

    def _settled(self, update: Json, changed: _Changes) -> Flow[bool]:
        """Whether the task stays in the terminal status the stream just reported.

        A failure may be followed by an automatic retry (failed → pending at once, the
        retry may even be over by now): /status says. When it still says failed, that
        answer (its error may be a later attempt's) is the last update; otherwise the
        stream goes on with the retry's events.
        """
        if update["status"] != "failed":
            return True
        now = _update((yield from self._status(update["taskId"])), update["taskId"], "poll")
        if now.get("status") != "failed":
            return False
        if changed(now):
            yield from _Emit(now)
        return True

    def _open_stream(self, task_id: str, deadline: _Deadline) -> Flow[None]:
        """Open the task's event stream; raises `_StreamUnavailable` when there is none."""
        timeout = httpx.Timeout(self._timeout, read=deadline.read_timeout())
        path = self._task_path(task_id, "/events")
        request = self._request("GET", path, headers={"Accept": "text/event-stream"}, timeout=timeout)
        try:
            response = yield from _Open(request)
            self._received(response)
            if not _is_stream(response):
                raise _refused_stream(response, (yield from _ReadBody()))
        except httpx.TransportError as exc:
            deadline.check()
            raise _StreamUnavailable(str(exc)) from exc

    def _read_line(self, deadline: _Deadline) -> Flow[str]:
        """The stream's next line; raises `_StreamUnavailable` when it broke or ended."""
        try:
            line = yield from _ReadLine()
        except httpx.TransportError as exc:
            deadline.check()
            raise _StreamUnavailable(str(exc)) from exc
        if line is None:
            raise _StreamUnavailable("the stream ended")
        return line

    def _wait(self, task_id: str, *, timeout: float | None, interval: float) -> Flow[Json]:
        yield from self._watch(task_id, interval=interval, timeout=timeout, events=True)
        return (yield from self._task(task_id))


# -- the drivers: the same flows, performed with httpx ------------------------------------


def _build(http: httpx.Client | httpx.AsyncClient, request: _Request) -> httpx.Request:
    return http.build_request(
        request.method,
        request.path,
        json=request.json,
        params=request.params,
        headers=request.headers,
        timeout=httpx.USE_CLIENT_DEFAULT if request.timeout is None else request.timeout,
    )


class _SyncDriver:
    """Performs the I/O of one flow with an ``httpx.Client``; holds the response it opened."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http
        self._response: httpx.Response | None = None
        self._lines: Iterator[str] = iter(())

    def __enter__(self) -> _SyncDriver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._close()

    def advance(self, flow: Flow[T]) -> _Emit | _Done[T]:
        """Run `flow` up to its next `_Emit` or its end. A transport error goes back into
        the flow, which may handle it (a broken stream) or let it out."""
        reply: Any = None
        error: httpx.TransportError | None = None
        while True:
            try:
                op = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as stop:
                return _Done(stop.value)
            if isinstance(op, _Emit):
                return op
            try:
                reply, error = self._perform(op), None
            except httpx.TransportError as exc:
                reply, error = None, exc

    def _perform(self, op: _Op[Any]) -> Any:
        match op:
            case _Send(request):
                return self._http.send(_build(self._http, request))
            case _Open(request):
                self._close()
                self._response = self._http.send(_build(self._http, request), stream=True)
                self._lines = self._response.iter_lines()
                return self._response
            case _ReadLine():
                return next(self._lines, None)
            case _ReadBody():
                return self._response.read() if self._response is not None else b""
            case _Close():
                self._close()
            case _Sleep(seconds):
                time.sleep(seconds)
            case _:
                raise TypeError(f"unknown operation {op!r}")
        return None

    def _close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response, self._lines = None, iter(())


class _AsyncDriver:
    """`_SyncDriver` with an ``httpx.AsyncClient``."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None

    async def __aenter__(self) -> _AsyncDriver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def advance(self, flow: Flow[T]) -> _Emit | _Done[T]:
        reply: Any = None
        error: httpx.TransportError | None = None
        while True:
            try:
                op = flow.send(reply) if error is None else flow.throw(error)
            except StopIteration as stop:
                return _Done(stop.value)
            if isinstance(op, _Emit):
                return op
            try:
                reply, error = await self._perform(op), None
            except httpx.TransportError as exc:
                reply, error = None, exc

    async def _perform(self, op: _Op[Any]) -> Any:
        match op:
            case _Send(request):
                return await self._http.send(_build(self._http, request))
            case _Open(request):
                await self._close()
                self._response = await self._http.send(_build(self._http, request), stream=True)
                self._lines = self._response.aiter_lines()
                return self._response
            case _ReadLine():
                return None if self._lines is None else await anext(self._lines, None)
            case _ReadBody():
                return await self._response.aread() if self._response is not None else b""
            case _Close():
                await self._close()
            case _Sleep(seconds):
                await anyio.sleep(seconds)
            case _:
                raise TypeError(f"unknown operation {op!r}")
        return None

    async def _close(self) -> None:
        if self._response is not None:
            await self._response.aclose()
            self._response, self._lines = None, None


# -- the clients ----------------------------------------------------------------------------


class TaskClient(_BaseClient):
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
        with closing(flow), _SyncDriver(self._http) as driver:
            while True:
                step = driver.advance(flow)
                if isinstance(step, _Done):
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

    def start(self, task_id: str) -> Json:
        return self._run(self._action(task_id, "start"))

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
        `events` is true), else polls ``/status`` every `interval` seconds. Each update
        has the /status fields (status, progress, currentStep, currentStepDescription,
        error...) plus ``taskId`` and ``source`` ("events" or "poll"). A failure that
        an automatic retry follows does not end it. Raises `TimeoutError` after
        `timeout` seconds.
        """
        flow = self._watch(task_id, interval=interval, timeout=timeout, events=events)
        with closing(flow), _SyncDriver(self._http) as driver:
            while isinstance(step := driver.advance(flow), _Emit):
                yield step.update

    def wait(self, task_id: str, *, timeout: float | None = None, interval: float = 0.5) -> Json:
        """Block until the task ends; return the full task."""
        return self._run(self._wait(task_id, timeout=timeout, interval=interval))


class AsyncTaskClient(_BaseClient):
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
        super().__init__(base_url, token=token, timeout=timeout, api_path=api_path, on_token=on_token, api_key=api_key)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncTaskClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, flow: Flow[T]) -> T:
        with closing(flow):
            async with _AsyncDriver(self._http) as driver:
                while True:
                    step = await driver.advance(flow)
                    if isinstance(step, _Done):
                        return step.value

    async def create_task(self, executor: str, /, params: Mapping[str, Any] | None = None, **options: Any) -> Json:
        return await self._run(self._create_task(executor, params, options))

    async def demo(self, executor: str, /, **params: Any) -> Json:
        return await self._run(self._demo(executor, params))

    async def list_tasks(
        self,
        status: str | None = None,
        *,
        executor: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        dead_letter: bool | None = None,
    ) -> list[Json]:
        return await self._run(
            self._list_tasks(
                status=status, executor=executor, tag=tag, limit=limit, offset=offset, dead_letter=dead_letter
            )
        )

    async def get_task(self, task_id: str) -> Json:
        return await self._run(self._task(task_id))

    async def status(self, task_id: str) -> Json:
        return await self._run(self._status(task_id))

    async def start(self, task_id: str) -> Json:
        return await self._run(self._action(task_id, "start"))

    async def cancel(self, task_id: str) -> Json:
        return await self._run(self._action(task_id, "cancel"))

    async def retry(self, task_id: str) -> Json:
        return await self._run(self._action(task_id, "retry"))

    async def delete(self, task_id: str) -> None:
        await self._run(self._delete(task_id))

    async def stats(self) -> Json:
        return await self._run(self._stats())

    async def executors(self) -> list[Json]:
        return await self._run(self._executors())

    async def cleanup_status(self) -> Json:
        return await self._run(self._cleanup_status())

    async def run_cleanup(self) -> Json:
        return await self._run(self._run_cleanup())

    async def session(self) -> Json:
        return await self._run(self._session())

    async def new_session(self) -> Json:
        return await self._run(self._new_session())

    async def watch(
        self,
        task_id: str,
        *,
        interval: float = 0.5,
        timeout: float | None = None,  # noqa: ASYNC109 - same signature as TaskClient.watch
        events: bool = True,
    ) -> AsyncIterator[Json]:
        """Like `TaskClient.watch`, as an async iterator."""
        flow = self._watch(task_id, interval=interval, timeout=timeout, events=events)
        with closing(flow):
            async with _AsyncDriver(self._http) as driver:
                while isinstance(step := await driver.advance(flow), _Emit):
                    yield step.update

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - same signature as TaskClient.wait
        interval: float = 0.5,
    ) -> Json:
        return await self._run(self._wait(task_id, timeout=timeout, interval=interval))

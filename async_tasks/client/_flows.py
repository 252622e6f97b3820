"""Every operation of the API as a flow, without I/O: `BaseClient`.

`TaskClient` and `AsyncTaskClient` inherit it and only perform the I/O each flow
asks for (see `_ops`); so what a request looks like, how an answer is read, how a
session token is adopted and how `watch` follows a task are written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from async_tasks.client._answers import Json, array_of, body_of, object_of
from async_tasks.client._ops import Close, Emit, Flow, Open, ReadBody, ReadLine, Request, Send, Sleep
from async_tasks.client._sse import (
    REMOVED,
    Changes,
    SseParser,
    StreamUnavailable,
    event_update,
    is_stream,
    refused_stream,
    status_update,
)

DEFAULT_URL = "http://localhost:3000"
TOKEN_HEADER = "X-Session-Token"
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
#: How long the event stream may stay silent before `watch` falls back to polling.
STREAM_IDLE_TIMEOUT_S = 30.0
#: What a polled update takes of the full task: the /status fields, where the task stands
#: in line (``queuePosition``, ``eta``) and its log (``logs``, said as new ``lines``).
_POLLED = (
    "status",
    "progress",
    "currentStep",
    "currentStepDescription",
    "startedAt",
    "completedAt",
    "error",
    "scheduledAt",
    "waitingReason",
    "queuePosition",
    "eta",
    "logs",
)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _quote(segment: str) -> str:
    return quote(str(segment), safe="")


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


class BaseClient:
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
    ) -> Request:
        merged = {"Accept": "application/json"}
        if self.token:
            merged[TOKEN_HEADER] = self.token
        if self.api_key:
            merged["X-API-Key"] = self.api_key
        merged.update(headers or {})
        return Request(method, self._api + path, merged, json=json, params=params, timeout=timeout)

    def _received(self, response: httpx.Response) -> None:
        """Adopt a session token the server issued."""
        issued = response.headers.get(TOKEN_HEADER)
        if issued and issued != self.token:
            self._adopt(issued)

    def _adopt(self, token: str) -> None:
        self.token = token
        if self.on_token is not None:
            self.on_token(token)

    def _exchange(self, request: Request) -> Flow[Any]:
        """Send `request`; the JSON body of the answer."""
        response = yield from Send(request)
        self._received(response)
        return body_of(response)

    def _object(self, method: str, path: str, key: str | None, **kwargs: Any) -> Flow[Json]:
        return object_of((yield from self._exchange(self._request(method, path, **kwargs))), key)

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
        return array_of((yield from self._exchange(self._request("GET", "/tasks", params=params))), "tasks")

    def _task(self, task_id: str) -> Flow[Json]:
        return (yield from self._object("GET", self._task_path(task_id), "task"))

    def _status(self, task_id: str) -> Flow[Json]:
        return (yield from self._object("GET", self._task_path(task_id, "/status"), None))

    def _action(self, task_id: str, action: str, body: Json | None = None) -> Flow[Json]:
        return (yield from self._object("POST", self._task_path(task_id, f"/{action}"), "task", json=body))

    def _delete(self, task_id: str) -> Flow[None]:
        yield from self._exchange(self._request("DELETE", self._task_path(task_id)))

    def _stats(self) -> Flow[Json]:
        return (yield from self._object("GET", "/tasks/stats", "stats"))

    def _executors(self) -> Flow[list[Json]]:
        return array_of((yield from self._exchange(self._request("GET", "/executors"))), "executors")

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
        every `interval` seconds when there is no stream or it breaks (reading the full
        task). Updates also bring the task's new log lines (``lines``) and its place in
        line and estimate (``queuePosition``, ``eta``); see `Changes`.
        """
        deadline = _Deadline(task_id, timeout)
        changed = Changes()
        if events:
            try:
                yield from self._open_stream(task_id, deadline)
                parser = SseParser()
                while True:
                    message = parser.feed((yield from self._read_line(deadline)))
                    update = None if message is None else event_update(*message, task_id)
                    if update is None:
                        continue
                    if update is REMOVED:
                        return
                    said = changed(update)
                    if said is not None:
                        yield from Emit(said)
                    if update.get("event") in ("log", "eta"):
                        continue
                    if update["status"] in TERMINAL_STATUSES and (yield from self._settled(update, changed)):
                        return
                    deadline.check()
            except StreamUnavailable:
                yield from Close()
        while True:
            update = yield from self._poll(task_id)
            said = changed(update)
            if said is not None:
                yield from Emit(said)
            if update.get("status") in TERMINAL_STATUSES:
                return
            deadline.check()
            yield from Sleep(interval)

    def _poll(self, task_id: str) -> Flow[Json]:
        """The task as one polled update. It reads the full task, not /status, because
        /status carries no log lines: watching without a stream still shows them."""
        task = yield from self._task(task_id)
        return status_update({key: task[key] for key in _POLLED if key in task}, task_id, "poll")

    def _settled(self, update: Json, changed: Changes) -> Flow[bool]:
        """Whether the task stays in the terminal status the stream just reported.

        A failure may be followed by an automatic retry (failed → pending at once, the
        retry may even be over by now): /status says. When it still says failed, that
        answer (its error may be a later attempt's) is the last update; otherwise the
        stream goes on with the retry's events.
        """
        if update["status"] != "failed":
            return True
        now = status_update((yield from self._status(update["taskId"])), update["taskId"], "poll")
        if now.get("status") != "failed":
            return False
        said = changed(now)
        if said is not None:
            yield from Emit(said)
        return True

    def _open_stream(self, task_id: str, deadline: _Deadline) -> Flow[None]:
        """Open the task's event stream; raises `StreamUnavailable` when there is none."""
        timeout = httpx.Timeout(self._timeout, read=deadline.read_timeout())
        path = self._task_path(task_id, "/events")
        request = self._request("GET", path, headers={"Accept": "text/event-stream"}, timeout=timeout)
        try:
            response = yield from Open(request)
            self._received(response)
            if not is_stream(response):
                raise refused_stream(response, (yield from ReadBody()))
        except httpx.TransportError as exc:
            deadline.check()
            raise StreamUnavailable(str(exc)) from exc

    def _read_line(self, deadline: _Deadline) -> Flow[str]:
        """The stream's next line; raises `StreamUnavailable` when it broke or ended."""
        try:
            line = yield from ReadLine()
        except httpx.TransportError as exc:
            deadline.check()
            raise StreamUnavailable(str(exc)) from exc
        if line is None:
            raise StreamUnavailable("the stream ended")
        return line

    def _wait(self, task_id: str, *, timeout: float | None, interval: float) -> Flow[Json]:
        yield from self._watch(task_id, interval=interval, timeout=timeout, events=True)
        return (yield from self._task(task_id))

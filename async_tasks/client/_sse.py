"""The task's event stream (``text/event-stream``) and the updates `watch` yields.

`SseParser` turns the stream's lines into (event, data) messages; `event_update`
turns a message into an update, `status_update` a ``/status`` answer; `Changes`
keeps what `watch` has said and turns each update into the one to yield (or None
when it shows nothing new): log lines each once (by their number ``n``), a task's
place in line and estimate carried while its status stays. A stream that is
absent, refused or broken raises `StreamUnavailable`: `watch` polls instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from async_tasks.client._answers import Json, error_of


class StreamUnavailable(Exception):
    """The push stream is absent, refused or broke: poll instead."""


class SseParser:
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


def status_update(payload: Mapping[str, Any], task_id: str, source: str, event: str | None = None) -> Json:
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


_WATCHED = ("status", "progress", "currentStep", "currentStepDescription", "error", "queuePosition", "eta")
#: What a task's place in line and estimate are carried with while its status stays.
_OUTLOOK = ("queuePosition", "eta")


class Changes:
    """What `watch` has said of the task, and what an update adds to it.

    Calling it with an update answers the update to yield, or None when it shows nothing
    new. A ``log`` event's update is the last state said with the new lines (``lines``:
    those not said yet, by their number ``n``); a snapshot's log (``logs``) becomes its
    ``lines`` the same way. An ``eta`` event's update is the last state with its
    ``queuePosition`` and ``eta``; other updates keep those while the status stays.
    """

    def __init__(self) -> None:
        self.last: tuple[Any, ...] | None = None
        self.state: Json = {}
        self.last_line = 0

    def _new_lines(self, lines: Any) -> list[Json]:
        fresh = [line for line in lines or () if isinstance(line, dict) and int(line.get("n") or 0) > self.last_line]
        if fresh:
            self.last_line = max(int(line.get("n") or 0) for line in fresh)
        return fresh

    def __call__(self, update: Mapping[str, Any]) -> Json | None:
        event = update.get("event")
        if event == "log":
            lines = self._new_lines(update.get("lines"))
            if not lines or not self.state:
                return None
            return {**self.state, "event": "log", "lines": lines}
        if event == "eta":
            same = self.state.get("status") == update.get("status")
            if not same or all(self.state.get(key) == update.get(key) for key in _OUTLOOK):
                return None  # not the state said (its own event comes first), or nothing moved
            self.state = {**self.state, **{key: update.get(key) for key in _OUTLOOK}}
            self.last = tuple(self.state.get(k) for k in _WATCHED)
            return {**self.state, "event": "eta"}
        said = dict(update)
        lines = self._new_lines(said.pop("logs", None))
        for key in _OUTLOOK:
            if key not in said:
                same = self.state.get("status") == said.get("status")
                said[key] = self.state.get(key) if same else None
        self.state = said
        fingerprint = tuple(said.get(k) for k in _WATCHED)
        if fingerprint == self.last and not lines:
            return None
        self.last = fingerprint
        return {**said, "lines": lines} if lines else said


#: What `event_update` returns for a ``removed`` event.
REMOVED: Json = {}


def event_update(event: str, data: str, task_id: str) -> Json | None:
    """The update in one SSE message; None to skip it; `REMOVED` when the task was removed."""
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    if payload.get("taskId", task_id) != task_id:
        return None
    if (payload.get("type") or event) == "removed":
        return REMOVED
    if "status" not in payload:
        return None
    return status_update(payload, task_id, "events", event)


def is_stream(response: httpx.Response) -> bool:
    return response.status_code < 400 and "text/event-stream" in response.headers.get("content-type", "")


def refused_stream(response: httpx.Response, body: bytes) -> Exception:
    """Why an answer to the stream request is no stream: the task's 404 is an error,
    a missing route (or any answer but an error) a reason to poll."""
    status = response.status_code
    if status in (404, 405, 406, 501) or status < 400:
        if status == 404:
            error = error_of(status, response.reason_phrase, body)
            if error.code == "task_not_found":
                return error
        return StreamUnavailable(f"HTTP {status}")
    return error_of(status, response.reason_phrase, body)

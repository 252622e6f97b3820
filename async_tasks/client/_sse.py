"""The task's event stream (``text/event-stream``) and the updates `watch` yields.

`SseParser` turns the stream's lines into (event, data) messages; `event_update`
turns a message into an update, `status_update` a ``/status`` answer; `Changes`
says whether an update shows anything new. A stream that is absent, refused or
broken raises `StreamUnavailable`: `watch` polls instead.
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


_WATCHED = ("status", "progress", "currentStep", "currentStepDescription", "error")


class Changes:
    """Whether an update differs (in what `watch` shows) from the last one that did."""

    def __init__(self) -> None:
        self.last: tuple[Any, ...] | None = None

    def __call__(self, update: Mapping[str, Any]) -> bool:
        fingerprint = tuple(update.get(k) for k in _WATCHED)
        if fingerprint == self.last:
            return False
        self.last = fingerprint
        return True


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

"""What the API's answers mean: the JSON body of a success, `TaskApiError` for the rest.

An error answer has the contract's body ``{"success": false, "error": {"code",
"message", "details"}}``; anything else that is not a success (a proxy's HTML page,
plain text) still becomes a `TaskApiError` with a readable message.
"""

from __future__ import annotations

import json
from typing import Any, TypeAlias

import httpx

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


def error_of(status: int, reason: str, body: bytes) -> TaskApiError:
    """The error an answer with `status` and `body` stands for."""
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


def body_of(response: httpx.Response) -> Any:
    """The JSON body of a successful answer; raises `TaskApiError` for an error."""
    status = response.status_code
    if status >= 400:
        raise error_of(status, response.reason_phrase, response.content)
    if status == 204 or not response.content:
        return None
    try:
        body = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TaskApiError(status, "invalid_response", "The server did not answer JSON.") from exc
    if isinstance(body, dict) and body.get("success") is False:
        raise error_of(status, response.reason_phrase, response.content)
    return body


def invalid(what: str) -> TaskApiError:
    return TaskApiError(200, "invalid_response", f"The server's answer has no {what}.")


def object_of(body: Any, key: str | None) -> Json:
    """``body[key]`` (or the body without ``success``) as a JSON object."""
    value = body.get(key) if key is not None and isinstance(body, dict) else body
    if not isinstance(value, dict):
        raise invalid(f"{key!r} object" if key else "JSON object")
    return {k: v for k, v in value.items() if k != "success"} if key is None else value


def array_of(body: Any, key: str) -> list[Json]:
    """``body[key]`` as a JSON array."""
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, list):
        raise invalid(f"{key!r} list")
    return value

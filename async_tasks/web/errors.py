"""HTTP mapping of errors: every error body is the contract's
``{"success": false, "error": {"code", "message", "details?"}}``, never a traceback."""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import ParameterKwarg
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from async_tasks import errors
from async_tasks.validation import explain, field_type
from async_tasks.web.api.schemas import ErrorDetail, ErrorResponse

logger = logging.getLogger("async_tasks.api")


class ExecutorNotFound(errors.UnknownExecutor):
    """An unknown executor named in the URL (404 rather than 400)."""


class ShareLinkRefused(errors.TaskSystemError):
    """A share token that is forged, changed or expired (401)."""

    code = "invalid_share_link"

    def __init__(self, *, expired: bool) -> None:
        if expired:
            super().__init__("This share link has expired: ask whoever sent it for a new one.")
            self.code = "share_link_expired"
        else:
            super().__init__("This share link is not valid: check that it was copied whole.")


STATUS: dict[type[errors.TaskSystemError], int] = {
    errors.TaskNotFound: 404,
    ShareLinkRefused: 401,
    ExecutorNotFound: 404,
    errors.UnknownExecutor: 400,
    errors.InvalidParams: 400,
    errors.InvalidTransition: 409,
    errors.IdempotencyConflict: 422,
    errors.IdempotentTaskRemoved: 409,
    errors.QuotaExceeded: 429,
    errors.CapacityExceeded: 503,
    errors.TaskTooLarge: 413,
    errors.ShuttingDown: 503,
    errors.StoreUnavailable: 503,
}

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "service_unavailable",
}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> Response[ErrorResponse]:
    return Response(
        ErrorResponse(error=ErrorDetail(code=code, message=message, details=details)),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def _domain(request: Request[Any, Any, Any], exc: errors.TaskSystemError) -> Response[ErrorResponse]:
    status = next((code for cls, code in STATUS.items() if isinstance(exc, cls)), 400)
    headers = None
    if isinstance(exc, (errors.QuotaExceeded, errors.CapacityExceeded, errors.StoreUnavailable)):
        headers = {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))}
    return error_response(status, exc.code, exc.message, exc.details, headers)


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorResponse]:
    """Litestar's validation of the body, query, path and headers, as ``invalid_params``
    with one sentence per field (see `async_tasks.validation`)."""
    details = [
        _field_problem(request, entry)
        for entry in (exc.extra if isinstance(exc.extra, list) else [])
        if isinstance(entry, dict)
    ]
    if details:
        message = " ".join(detail["message"] for detail in details)
        return error_response(400, "invalid_params", message, details)
    detail = exc.detail or ""
    if match := _MISSING_PARAMETER.match(detail):
        kind, name = match["kind"], match["name"]
        message = f"The {kind} parameter {name} is required."
        return error_response(400, "invalid_params", message, [{"key": name, "message": message, "source": kind}])
    return error_response(400, "invalid_params", _sentence(detail or "The request is not valid."))


_MISSING_PARAMETER = re.compile(r"^Missing required (?P<kind>\w+) parameter '(?P<name>[^']+)'")


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _field_problem(request: Request[Any, Any, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """One entry of Litestar's validation ``extra`` (python names, msgspec wording) as
    ``{"key", "message", "source"}`` with the client's own names and a sentence."""
    raw_key = str(entry.get("key") or "")
    source = entry.get("source") or ""
    source = str(getattr(source, "value", source))  # Litestar's ParamType enum, or "body"
    error = str(entry.get("message") or "is not valid")
    handler = request.scope.get("route_handler")
    parameters = handler.parsed_fn_signature.parameters if handler is not None else {}
    parameter = parameters.get(raw_key)
    if source == "body" or (not source and raw_key.split(".")[0].split("[")[0] not in parameters):
        # The body: Litestar strips "data." from field paths and reports the body itself as "data".
        within = "" if raw_key == "data" else raw_key
        data = handler.parsed_data_field if handler is not None else None
        # The type of the part of the body the error is about: msgspec's path is inside it.
        part = field_type(data.annotation, _as_path(within)) if data is not None else None
        key, message = explain(error, part, within=within)
        return {"key": key, "message": message, "source": "body"} if key else {"message": message, "source": "body"}
    kwarg = parameter.kwarg_definition if parameter is not None else None
    name = raw_key
    if isinstance(kwarg, ParameterKwarg):
        name = kwarg.name or kwarg.query or kwarg.header or kwarg.cookie or raw_key
        source = source or str(kwarg.param_type.value)
    subject = f"The {name.replace('_', ' ')} in the path" if source == "path" else name
    root = parameter.annotation if parameter is not None else None
    message = explain(error, root, within=subject, got=_raw_value(request, source, name)).message
    return {"key": name, "message": message, "source": source or "query"}


def _as_path(field: str) -> str:
    return "" if not field else field if field.startswith("[") else "." + field


def _raw_value(request: Request[Any, Any, Any], source: str, name: str) -> str | None:
    if source == "query":
        value = request.query_params.get(name)
    elif source == "header":
        value = request.headers.get(name)
    elif source == "cookie":
        value = request.cookies.get(name)
    elif source == "path":
        value = request.path_params.get(name)
    else:
        value = None
    return value if isinstance(value, str) else None


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorResponse]:
    status = exc.status_code
    if status >= 500:
        return _internal(request, exc)
    code = _HTTP_CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    message = exc.detail or HTTPStatus(status).phrase
    if status == 400 and "JSON" in message:
        return error_response(400, "malformed_json", f"The request body is not valid JSON ({message}).")
    if status == 413:
        limit = request.route_handler.resolve_request_max_body_size() if request.scope.get("route_handler") else None
        message = "The request body is too large."
        if limit:
            message = (
                f"The request body is too large: the limit is {limit} bytes here "
                "(MAX_TASK_DATA_BYTES for the task's data, MAX_REQUEST_BODY_BYTES for the whole body)."
            )
            return error_response(413, code, message, {"limit": limit}, headers=exc.headers)
    elif status == 404:
        message = f"No route for {request.method} {request.url.path}."
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
        message = f"{request.method} is not allowed on {request.url.path}."
        if allowed:
            message += f" Allowed: {allowed}."
    else:
        message = _sentence(message)
    return error_response(status, code, message, headers=exc.headers)


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorResponse]:
    logger.error("Unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal_error", "Something went wrong on the server.")


def _recursion(request: Request[Any, Any, Any], exc: RecursionError) -> Response[ErrorResponse]:
    # msgspec refuses JSON nested about 1000 deep with a RecursionError, not a DecodeError.
    if "while deserializing" in str(exc):
        return error_response(400, "malformed_json", "The request body is nested too deeply to be read as JSON.")
    return _internal(request, exc)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    errors.TaskSystemError: _domain,
    ValidationException: _validation,
    HTTPException: _http,
    RecursionError: _recursion,
    Exception: _internal,
}


def responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the error statuses a route can answer."""
    return {
        status: ResponseSpec(
            data_container=ErrorResponse, description=HTTPStatus(status).phrase, generate_examples=False
        )
        for status in statuses
    }


def replay_responses(data_container: type[Any]) -> dict[int, ResponseSpec]:
    """The OpenAPI entry of the 200 a create answers when an Idempotency-Key replays it."""
    description = "Replayed: the task an earlier request with this Idempotency-Key created"
    return {200: ResponseSpec(data_container=data_container, description=description, generate_examples=False)}

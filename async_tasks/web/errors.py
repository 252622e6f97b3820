"""HTTP mapping of errors: every error body is the contract's
``{"success": false, "error": {"code", "message", "details?"}}``, never a traceback."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from async_tasks import errors
from async_tasks.web.api.schemas import ErrorDetail, ErrorResponse

logger = logging.getLogger("async_tasks.api")


class ExecutorNotFound(errors.UnknownExecutor):
    """An unknown executor named in the URL (404 rather than 400)."""


STATUS: dict[type[errors.TaskSystemError], int] = {
    errors.TaskNotFound: 404,
    ExecutorNotFound: 404,
    errors.UnknownExecutor: 400,
    errors.InvalidParams: 400,
    errors.InvalidTransition: 409,
    errors.IdempotencyConflict: 422,
    errors.QuotaExceeded: 429,
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
    if isinstance(exc, errors.QuotaExceeded):
        headers = {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))}
    return error_response(status, exc.code, exc.message, exc.details, headers)


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorResponse]:
    details = exc.extra if isinstance(exc.extra, list) else None
    message = exc.detail or "The request is not valid."
    if details:
        parts = [f"{d.get('key') or 'body'}: {d.get('message')}" for d in details if isinstance(d, dict)]
        message = "Invalid request: " + "; ".join(parts) if parts else message
    return error_response(400, "validation_error", message, details)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorResponse]:
    status = exc.status_code
    if status >= 500:
        return _internal(request, exc)
    code = _HTTP_CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    message = exc.detail or HTTPStatus(status).phrase
    if status == 400 and "JSON" in message:
        return error_response(400, "malformed_json", f"The request body is not valid JSON ({message}).")
    if status == 413:
        message = "The request body is too large."
    elif status == 404:
        message = f"No route for {request.method} {request.url.path}."
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

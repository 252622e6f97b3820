"""The OpenAPI document declares what each operation can answer, errors included."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from async_tasks.task import TaskOptions
from async_tasks.web.api.demo import DEMO_OPTIONS
from async_tasks.web.api.schemas import CreateTaskRequest
from tests.helpers import build_app

ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorResponse"}
SAFE = {"get", "head", "options"}
ADMIN_KEY = "ops:admin-key-0123456789abcdef"


@pytest.fixture(scope="module")
def operations() -> list[tuple[str, str, dict[str, Any]]]:
    # With ADMIN_API_KEYS, so the admin API's operations are in the document too.
    document = build_app(admin_api_keys=ADMIN_KEY).openapi_schema.to_schema()
    found = [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "responses" in operation
    ]
    assert len(found) > 20
    return found


def test_every_operation_declares_a_client_error_in_the_error_envelope(
    operations: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """No operation lacks a 4xx answer (Redocly's operation-4xx-response), and every client
    error it declares has the contract's error body."""
    for method, path, operation in operations:
        responses = operation["responses"]
        assert any(status.startswith("4") for status in responses), f"{method} {path}"
        for status, response in responses.items():
            if status.startswith("4"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == ERROR_SCHEMA, f"{method} {path} {status}"


def test_every_operation_declares_the_boundarys_refusals(operations: list[tuple[str, str, dict[str, Any]]]) -> None:
    """What the boundary answers before any handler is declared where it applies: a foreign
    Host (400) everywhere, a missing API key (401) on the API and /metrics, a foreign origin
    (403) and a body that is not JSON (415) on the API's state-changing operations."""
    for method, path, operation in operations:
        declared = set(operation["responses"])
        assert "400" in declared, f"{method} {path}"
        if path.startswith("/api/v1/") or path == "/metrics":
            assert "401" in declared, f"{method} {path}"
        if path.startswith("/api/v1/") and method not in SAFE:
            assert {"403", "415"} <= declared, f"{method} {path}"


def test_operations_that_read_the_store_declare_its_unavailability(
    operations: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """Every task operation can meet an unreachable store (503 with Retry-After on Redis);
    the cleaner's status is the one that reads only this process's memory."""
    for method, path, operation in operations:
        if path.startswith(("/api/v1/tasks", "/api/v1/demo/")) and path != "/api/v1/tasks/cleanup/status":
            assert "503" in operation["responses"], f"{method} {path}"


def test_admin_operations_declare_the_admin_keys_refusal_and_a_backend_without_them(
    operations: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """The admin API's 401 names ADMIN_API_KEYS (not API_KEYS, which do not open it), and
    each admin operation declares the 501 of a backend that has no admin view yet."""
    admin = [(method, path, operation) for method, path, operation in operations if path.startswith("/api/v1/admin/")]
    assert len(admin) >= 7
    for method, path, operation in admin:
        responses = operation["responses"]
        assert "ADMIN_API_KEYS" in responses["401"]["description"], f"{method} {path}"
        assert "501" in responses, f"{method} {path}"
        assert operation["security"] == [{"adminKey": []}], f"{method} {path}"


def test_a_create_body_carries_the_task_options_the_engine_takes() -> None:
    """``POST /tasks`` declares every `TaskOptions` field (and only those beside the executor
    and params), hands them to the engine as one record, and the demo bodies take a subset."""
    options = {f.name for f in msgspec.structs.fields(TaskOptions)}
    declared = {f.name for f in msgspec.structs.fields(CreateTaskRequest)} - {"executor", "params"}
    assert declared == options and set(DEMO_OPTIONS) <= options
    body = msgspec.json.decode(
        b'{"executor": "sample", "name": "n", "tags": ["a"], "timeoutMs": 5, "startAt": 7}', type=CreateTaskRequest
    )
    assert body.options() == TaskOptions(name="n", tags=["a"], start=False, timeout_ms=5, start_at=7)

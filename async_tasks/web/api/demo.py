"""``/demo/tasks/{executor}``: create and start any executor's task in one call.

Each registered executor gets its own route whose body is the executor's `Params`
plus the task options (`description`, `priority`, `timeoutMs`, `maxRetries`, `tags`,
`metadata`) that the Params do not define themselves: a field of the Params always
belongs to the Params (api-call's own `timeoutMs` is its HTTP timeout, never the
task's). Litestar validates the body and the OpenAPI document shows each
executor's schema. A generic route answers executors registered without one
(and unknown names, with a 404).
"""

# No `from __future__ import annotations`: handler annotations are built at run time.
import re
import typing
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, JSONBody, SkipValidation
from litestar.types import Scope

from async_tasks.errors import InvalidParams, UnknownExecutor
from async_tasks.executor import TaskExecutor
from async_tasks.system import TaskSystem
from async_tasks.task import Task, TaskOptions
from async_tasks.validation import explain
from async_tasks.web.api.body import decoded_body
from async_tasks.web.api.schemas import CreateTaskRequest, DemoTask, DemoTaskResponse
from async_tasks.web.api.tasks import IdempotencyKey
from async_tasks.web.errors import ExecutorNotFound, replay_responses, responses
from async_tasks.web.middleware import client_of, session_key_of
from async_tasks.web.responses import encoded

#: The task options (`TaskOptions`) a demo body takes beside the params, in its schema's
#: order: all but `name` and `start` (a demo task has its executor's title and starts at
#: once). Their types and bounds are those of ``POST /tasks`` (`CreateTaskRequest`).
DEMO_OPTIONS = ("description", "priority", "timeout_ms", "max_retries", "tags", "metadata", "start_at")
_REQUEST_TYPES = typing.get_type_hints(CreateTaskRequest, include_extras=True)
_REQUEST_DEFAULTS = {f.name: f.default for f in msgspec.structs.fields(CreateTaskRequest)}
OPTION_FIELDS: list[tuple[str, Any, Any]] = [
    (name, _REQUEST_TYPES[name], _REQUEST_DEFAULTS[name]) for name in DEMO_OPTIONS
]
_OPTION_NAMES = [name for name, _, _ in OPTION_FIELDS]
DemoOptions = msgspec.defstruct("DemoOptions", OPTION_FIELDS, kw_only=True, rename="camel", module=__name__)


def demo_body_type(executor_cls: type[TaskExecutor[Any, Any]]) -> type[msgspec.Struct]:
    """The executor's Params extended with the task options it does not define itself."""
    params_cls = executor_cls.Params
    own = set(params_cls.__struct_fields__)
    extra = [field for field in OPTION_FIELDS if field[0] not in own]
    name = "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", executor_cls.name)) + "DemoRequest"
    return msgspec.defstruct(name, extra, bases=(params_cls,), kw_only=True, module=__name__)


def split_body(executor_cls: type[TaskExecutor[Any, Any]], body: msgspec.Struct) -> tuple[Any, TaskOptions]:
    """(the executor's params, the task options) of a demo body."""
    params_cls = executor_cls.Params
    own = params_cls.__struct_fields__
    params = params_cls(**{f: getattr(body, f) for f in own})
    options = TaskOptions(**{name: getattr(body, name) for name in _OPTION_NAMES if name not in own})
    return params, options


async def _create(
    system: TaskSystem,
    scope: Scope,
    executor: str,
    params: Any,
    options: TaskOptions,
    idempotency_key: str | None,
) -> Response[DemoTaskResponse]:
    task, replayed = await system.create_or_replay(
        session_key_of(scope), executor=executor, params=params, options=options, idempotency_key=idempotency_key,
        client=client_of(scope),
    )  # fmt: skip
    return encoded(
        demo_response(task),
        status_code=200 if replayed else 201,
        headers={"Idempotent-Replayed": "true"} if replayed else None,
    )


def demo_response(task: Task) -> DemoTaskResponse:
    if task.scheduled_at is not None and task.attempts == 0:
        at = datetime.fromtimestamp(task.scheduled_at / 1000, UTC).isoformat(timespec="milliseconds")
        message = f"{task.name} created; it starts at {at.replace('+00:00', 'Z')}"
    else:
        message = f"{task.name} created and started"
    return DemoTaskResponse(
        message=message,
        task=DemoTask(
            id=task.id,
            name=task.name,
            status=task.status,
            progress=task.progress,
            session_key=task.session_key,
            scheduled_at=task.scheduled_at,
        ),
    )


def demo_route(executor_cls: type[TaskExecutor[Any, Any]], system: TaskSystem) -> HTTPRouteHandler:
    """``POST /demo/tasks/<name>`` with the executor's params as the body, creating in
    `system` (a hot route: no per-request dependency injection, see `tasks`)."""
    body_type = demo_body_type(executor_cls)
    name = executor_cls.name

    async def create_demo_task(
        request: Request[Any, Any, Any],
        data: Any,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[DemoTaskResponse]:
        params, options = split_body(executor_cls, await decoded_body(request, body_type))
        return await _create(system, request.scope, name, params, options, idempotency_key)

    # The schema shows `body_type`; the route decodes the body itself, strictly and once
    # (`decoded_body`), instead of after Litestar's lax conversion.
    create_demo_task.__annotations__["data"] = JSONBody[SkipValidation[body_type]]  # type: ignore[misc,valid-type]
    return post(
        f"/demo/tasks/{name}",
        name=f"demo-{name}",
        operation_id=f"createDemoTask_{re.sub(r'[^A-Za-z0-9]', '_', name)}",
        summary=f"Create and start a {executor_cls.title or name} task",
        description=executor_cls.description or None,
        tags=["demo"],
        status_code=201,
        responses={**responses(400, 413, 422, 429, 503), **replay_responses(DemoTaskResponse)},
    )(create_demo_task)


@post(
    "/demo/tasks/{executor:str}",
    tags=["demo"],
    status_code=201,
    responses={**responses(400, 404, 413, 422, 429, 503), **replay_responses(DemoTaskResponse)},
    summary="Create and start a task of any registered executor",
)
async def create_any_demo_task(
    request: Request[Any, Any, Any],
    task_system: NamedDependency[TaskSystem],
    executor: FromPath[Annotated[str, msgspec.Meta(max_length=100)]],
    data: JSONBody[dict[str, Any]],
    idempotency_key: IdempotencyKey = None,
) -> Response[DemoTaskResponse]:
    impl = task_system.executors.get(executor)
    if impl is None:
        raise ExecutorNotFound(executor, task_system.executors.names())
    # Options the executor's Params define themselves are params (see the module docstring).
    own = {f.encode_name for f in msgspec.structs.fields(type(impl).Params)}
    fields = [f for f in msgspec.structs.fields(DemoOptions) if f.encode_name not in own]
    raw = {f.encode_name: data.pop(f.encode_name) for f in fields if f.encode_name in data}
    try:
        parsed = msgspec.convert(raw, DemoOptions)
    except msgspec.ValidationError as exc:
        field, message = explain(exc, DemoOptions)
        raise InvalidParams(message, field=field or None) from None
    options = TaskOptions(**{f.name: getattr(parsed, f.name) for f in fields if f.encode_name in raw})
    try:
        return await _create(task_system, request.scope, executor, data, options, idempotency_key)
    except UnknownExecutor as exc:  # unregistered between lookup and create
        raise ExecutorNotFound(executor, task_system.executors.names()) from exc

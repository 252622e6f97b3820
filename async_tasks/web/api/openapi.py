"""What Litestar 2.x leaves out of the OpenAPI document, put back: closed request
bodies, the session token and cookie as (optional) security schemes, and the errors
the HTTP boundary answers before any handler runs."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, Operation, Reference, RequestBody, SecurityRequirement, SecurityScheme
from litestar.plugins import ReceiveRoutePlugin
from litestar.routes import HTTPRoute

from async_tasks.web.api.schemas import ErrorResponse
from async_tasks.web.middleware import COOKIE_NAME, TOKEN_HEADER
from async_tasks.web.security import boundary_errors

if TYPE_CHECKING:
    from litestar._openapi.schema_generation import SchemaCreator
    from litestar.openapi.spec import Schema
    from litestar.routes import BaseRoute
    from litestar.typing import FieldDefinition


@dataclass
class OptionalBodyOperation(Operation):
    """An operation whose JSON body may be left out (Litestar marks every body as required):
    ``@post(..., operation_class=OptionalBodyOperation)`` with ``data: JSONBody[T | None] = None``."""

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Documents a ``forbid_unknown_fields=True`` Struct (request bodies, executor params)
    with ``additionalProperties: false``, so clients and fuzzers know unknown fields are
    refused. Passed in ``Litestar(plugins=...)`` it runs before Litestar's own Struct plugin."""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return super().is_plugin_supported_field(field_definition) and bool(
            field_definition.type_.__struct_config__.forbid_unknown_fields
        )

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: SchemaCreator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        return schema


#: The two ways a request names its session, as OpenAPI security schemes.
SESSION_SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {
    "sessionToken": SecurityScheme(
        type="apiKey",
        name=TOKEN_HEADER,
        security_scheme_in="header",
        description=(
            "A session token from `POST /api/v1/session` (its `token`, also in its `X-Session-Token` response "
            "header). Optional: without one a caller is in the session of its IP address (or, with "
            "AUTO_MAP_SESSION_BY_IP=false, gets a new session and its token in the response). A token that is "
            "not accepted is answered with `X-Session-Token-Status: invalid`."
        ),
    ),
    "sessionCookie": SecurityScheme(
        type="apiKey",
        name=COOKIE_NAME,
        security_scheme_in="cookie",
        description="The same token in the HttpOnly cookie the server sets; browsers send it by themselves.",
    ),
}
#: Every API operation: the token header, or the cookie, or neither (`{}`: the IP's session).
SESSION_SECURITY: list[SecurityRequirement] = [{"sessionToken": []}, {"sessionCookie": []}, {}]
#: Operations that never look at the session (health probes).
NO_SESSION: list[SecurityRequirement] = [{}]


#: The admin API's key (ADMIN_API_KEYS), declared only when the admin API is on.
ADMIN_SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {
    "adminKey": SecurityScheme(
        type="http",
        scheme="bearer",
        description="One of the server's ADMIN_API_KEYS: the admin routes (`/admin/...`) need it.",
    )
}


def with_session_security(config: OpenAPIConfig, *, admin: bool = False) -> OpenAPIConfig:
    """A copy of `config` that declares the session schemes (and with `admin`, the admin
    key's), and makes the session's the default (optional) security of every operation
    when `config` has none: the session middleware reads them on every route of the app."""
    components = config.components if isinstance(config.components, list) else [config.components]
    # A shallow copy, not dataclasses.replace: re-running __init__ would pass the
    # deprecated fields __post_init__ filled in (and warn); Litestar's default config
    # object is shared by every app, so it is never changed in place.
    documented = copy.copy(config)
    schemes = {**SESSION_SECURITY_SCHEMES, **(ADMIN_SECURITY_SCHEMES if admin else {})}
    documented.components = [*components, Components(security_schemes=schemes)]
    if documented.security is None:
        documented.security = SESSION_SECURITY
    return documented


class BoundaryResponses(ReceiveRoutePlugin):
    """Declares on every operation the errors `BoundaryMiddleware` may answer before its
    handler runs (a Host it does not answer to, a missing API key, a foreign origin, a
    body that is not JSON), so no operation of the document lacks its error answers. A
    status the operation declares itself keeps its own description."""

    __slots__ = ("api_path",)

    def __init__(self, api_path: str) -> None:
        self.api_path = api_path

    def receive_route(self, route: BaseRoute) -> None:
        if not isinstance(route, HTTPRoute):
            return
        for handler in route.route_handlers:
            errors: dict[int, str] = {}
            for method in sorted(handler.http_methods):
                errors.update(boundary_errors(route.path, method, self.api_path))
            declared = {
                status: ResponseSpec(data_container=ErrorResponse, description=text, generate_examples=False)
                for status, text in sorted(errors.items())
            }
            handler.responses = {**declared, **(handler.responses or {})}

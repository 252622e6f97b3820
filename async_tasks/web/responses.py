"""Response classes of the web door.

`EncodedJSON` is the hot routes' answer: a body msgspec encoded once, sent as it is;
`encoded` makes one from a struct.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, cast

import msgspec
from litestar import Request, Response
from litestar.background_tasks import BackgroundTask, BackgroundTasks
from litestar.datastructures import Cookie
from litestar.enums import MediaType
from litestar.types import Receive, Scope, Send, TypeEncodersMap

T = TypeVar("T")
_JSON_TYPE = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode


class EncodedJSON(Response[Any]):
    """A `Response` whose JSON body is already encoded, and that sends itself.

    Litestar turns a response into an `ASGIResponse` (headers object, body rendered
    with the app's encoders) on every request, a sixth of a status request; these
    bodies are plain msgspec structs, encoded the same by msgspec alone. When a layer
    adds anything (response headers or cookies, a background task) or the request is
    a HEAD, it takes Litestar's own path, so nothing a layer sets is lost.
    """

    def __init__(self, body: bytes, status_code: int = 200, headers: dict[str, Any] | None = None) -> None:
        super().__init__(body, status_code=status_code, headers=headers, media_type=MediaType.JSON)

    def to_asgi_response(
        self,
        app: Any,
        request: Request[Any, Any, Any],
        *,
        background: BackgroundTask | BackgroundTasks | None = None,
        cookies: Iterable[Cookie] | None = None,
        headers: dict[str, str] | None = None,
        is_head_response: bool = False,
        media_type: Any = None,
        status_code: int | None = None,
        type_encoders: TypeEncodersMap | None = None,
        **kwargs: Any,
    ) -> Any:
        if background is not None or cookies or headers or kwargs or is_head_response or self.cookies:
            return super().to_asgi_response(
                app,
                request,
                background=background,
                cookies=cookies,
                headers=headers,
                is_head_response=is_head_response,
                media_type=media_type,
                status_code=status_code,
                type_encoders=type_encoders,
                **kwargs,
            )
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body: bytes = self.content
        headers = [_JSON_TYPE, (b"content-length", b"%d" % len(body))]
        if self.headers:
            headers += [
                (name.lower().encode("latin-1"), str(value).encode("latin-1")) for name, value in self.headers.items()
            ]
        await send({"type": "http.response.start", "status": self.status_code or 200, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def encoded(value: T, status_code: int = 200, headers: dict[str, Any] | None = None) -> Response[T]:
    """`value` (a msgspec struct) as an `EncodedJSON` response."""
    return cast("Response[T]", EncodedJSON(_encode(value), status_code, headers))

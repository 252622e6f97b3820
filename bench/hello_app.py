"""The anchor: a bare Litestar app, served exactly like the task server.

``GET /`` returns a small JSON dict; ``POST /`` decodes the same body the task
server's sample route gets (``{"delayMs": 0}``) into a msgspec Struct and returns
a uuid. No middleware, no plugins, no logging config.

    uvicorn bench.hello_app:app --loop uvloop --http httptools --no-access-log
"""

from __future__ import annotations

import uuid

import msgspec
from litestar import Litestar, get, post


class Body(msgspec.Struct, rename="camel"):
    delay_ms: int = 0


class Created(msgspec.Struct):
    id: str


@get("/")
async def hello() -> dict[str, str]:
    return {"message": "hello", "status": "ok"}


@post("/", status_code=201)
async def create(data: Body) -> Created:
    return Created(id=str(uuid.uuid4()))


app = Litestar(route_handlers=[hello, create], openapi_config=None)

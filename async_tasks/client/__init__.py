"""An HTTP client for the async-tasks API, sync and async, made for notebooks and scripts.

    from async_tasks.client import TaskClient

    with TaskClient("http://localhost:3000") as tasks:
        task = tasks.demo("sample", delayMs=2000)
        for update in tasks.watch(task["id"]):
            print(update["status"], update["progress"], update["currentStep"])

    async with AsyncTaskClient() as tasks:
        task = await tasks.create_task("sample", {"delayMs": 500}, start=True)
        async for update in tasks.watch(task["id"]):
            ...

Every method returns plain JSON data (dicts and lists, camelCase keys as on the
wire). An error body raises `TaskApiError(status, code, message)`; an answer of the
wrong shape raises it with code ``invalid_response``.

Sessions: the client keeps the session token once it has one, from
`new_session()`, from the ``X-Session-Token`` header the server sends when it
issues a session (IP mapping off), or passed as ``token=``; it sends it as the
``X-Session-Token`` header on every request, and calls ``on_token`` with each new
token it adopts. Without a token the server decides (by default one session per
client IP, shared with a browser on the same machine).

How it is built (the pattern of httpx's ``Auth.auth_flow``): what the API means is
written once, without I/O, in `_flows.BaseClient`. Each operation is a *flow*, a
generator that yields the I/O it needs (`_ops`: send a request, open the event
stream and read its lines, sleep, hand an update of `watch` to the caller) and
receives the answers; `_answers` reads the API's answers, `_sse` the event stream.
`TaskClient` (`_sync`) and `AsyncTaskClient` (`_async`) only perform that I/O, with
``httpx.Client`` and ``httpx.AsyncClient``. Both take an httpx ``transport=``, so a
test can run them in-process against the app. `tokens` is where the ``async-tasks``
command keeps a session token per server.

The names below are imported lazily: ``async_tasks.client.tokens`` (the CLI's) does
not import httpx.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from async_tasks.client._answers import TaskApiError
    from async_tasks.client._async import AsyncTaskClient
    from async_tasks.client._flows import DEFAULT_URL, TERMINAL_STATUSES
    from async_tasks.client._sync import TaskClient

__all__ = ["DEFAULT_URL", "TERMINAL_STATUSES", "AsyncTaskClient", "TaskApiError", "TaskClient"]

_LAZY = {
    "DEFAULT_URL": "async_tasks.client._flows",
    "TERMINAL_STATUSES": "async_tasks.client._flows",
    "TaskApiError": "async_tasks.client._answers",
    "TaskClient": "async_tasks.client._sync",
    "AsyncTaskClient": "async_tasks.client._async",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'async_tasks.client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)

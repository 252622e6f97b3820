"""`AsyncTaskClient`: the API's flows (`_flows`) performed with an ``httpx.AsyncClient``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import closing
from typing import Any, TypeVar

import anyio
import httpx

from async_tasks.client._answers import Json
from async_tasks.client._flows import DEFAULT_URL, BaseClient
from async_tasks.client._ops import Close, Done, Emit, Flow, Op, Open, ReadBody, ReadLine, Send, Sleep, build, resume

T = TypeVar("T")


class AsyncDriver:
    """`SyncDriver` with an ``httpx.AsyncClient``."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http
        self._response: httpx.Response | None = None
        self._lines: AsyncIterator[str] | None = None

    async def __aenter__(self) -> AsyncDriver:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def advance(self, flow: Flow[T]) -> Emit | Done[T]:
        step = resume(flow)
        while not isinstance(step, Emit | Done):
            try:
                reply = await self._perform(step)
            except httpx.TransportError as exc:
                step = resume(flow, error=exc)
            else:
                step = resume(flow, reply)
        return step

    async def _perform(self, op: Op[Any]) -> Any:
        match op:
            case Send(request):
                return await self._http.send(build(self._http, request))
            case Open(request):
                await self._close()
                self._response = await self._http.send(build(self._http, request), stream=True)
                self._lines = self._response.aiter_lines()
                return self._response
            case ReadLine():
                return None if self._lines is None else await anext(self._lines, None)
            case ReadBody():
                return await self._response.aread() if self._response is not None else b""
            case Close():
                await self._close()
            case Sleep(seconds):
                await anyio.sleep(seconds)
            case _:
                raise TypeError(f"unknown operation {op!r}")
        return None

    async def _close(self) -> None:
        if self._response is not None:
            await self._response.aclose()
            self._response, self._lines = None, None


class AsyncTaskClient(BaseClient):
    """Asynchronous client (asyncio or trio). Use with ``async with``, or call `aclose()`.

    Same methods as `TaskClient`, as coroutines; `watch` is an async iterator.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        api_path: str = "/api/v1",
        transport: httpx.AsyncBaseTransport | None = None,
        on_token: Callable[[str], None] | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(base_url, token=token, timeout=timeout, api_path=api_path, on_token=on_token, api_key=api_key)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncTaskClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, flow: Flow[T]) -> T:
        with closing(flow):
            async with AsyncDriver(self._http) as driver:
                while True:
                    step = await driver.advance(flow)
                    if isinstance(step, Done):
                        return step.value

    async def create_task(self, executor: str, /, params: Mapping[str, Any] | None = None, **options: Any) -> Json:
        return await self._run(self._create_task(executor, params, options))

    async def demo(self, executor: str, /, **params: Any) -> Json:
        return await self._run(self._demo(executor, params))

    async def list_tasks(
        self,
        status: str | None = None,
        *,
        executor: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
        offset: int | None = None,
        dead_letter: bool | None = None,
    ) -> list[Json]:
        return await self._run(
            self._list_tasks(
                status=status, executor=executor, tag=tag, limit=limit, offset=offset, dead_letter=dead_letter
            )
        )

    async def get_task(self, task_id: str) -> Json:
        return await self._run(self._task(task_id))

    async def status(self, task_id: str) -> Json:
        return await self._run(self._status(task_id))

    async def start(self, task_id: str, *, start_at: int | None = None) -> Json:
        """``POST /tasks/{id}/start``: now, or at `start_at` (epoch ms)."""
        return await self._run(self._action(task_id, "start", None if start_at is None else {"startAt": start_at}))

    async def cancel(self, task_id: str) -> Json:
        return await self._run(self._action(task_id, "cancel"))

    async def retry(self, task_id: str) -> Json:
        return await self._run(self._action(task_id, "retry"))

    async def delete(self, task_id: str) -> None:
        await self._run(self._delete(task_id))

    async def stats(self) -> Json:
        return await self._run(self._stats())

    async def executors(self) -> list[Json]:
        return await self._run(self._executors())

    async def cleanup_status(self) -> Json:
        return await self._run(self._cleanup_status())

    async def run_cleanup(self) -> Json:
        return await self._run(self._run_cleanup())

    async def session(self) -> Json:
        return await self._run(self._session())

    async def new_session(self) -> Json:
        return await self._run(self._new_session())

    async def watch(
        self,
        task_id: str,
        *,
        interval: float = 0.5,
        timeout: float | None = None,  # noqa: ASYNC109 - same signature as TaskClient.watch
        events: bool = True,
    ) -> AsyncIterator[Json]:
        """Like `TaskClient.watch`, as an async iterator."""
        flow = self._watch(task_id, interval=interval, timeout=timeout, events=events)
        with closing(flow):
            async with AsyncDriver(self._http) as driver:
                while isinstance(step := await driver.advance(flow), Emit):
                    yield step.update

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - same signature as TaskClient.wait
        interval: float = 0.5,
    ) -> Json:
        return await self._run(self._wait(task_id, timeout=timeout, interval=interval))

"""Shared fixtures: a fresh app per test, in-process clients, test executors."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.settings import Settings
from async_tasks.testing import redis_server, serve_in_loop
from async_tasks.web.app import create_app
from tests.helpers import TEST_EXECUTORS

SECRET = "test-secret-key-0123456789abcdef"
#: The Host of Litestar's test clients and of our in-process clients: not a loopback
#: name, so the tests allow it (the default ALLOWED_HOSTS does not).
TEST_HOST = "testserver.local"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_app() -> Callable[..., Litestar]:
    """Build an app with test settings; keyword arguments override `Settings` fields."""

    def build(
        executors: Any = TEST_EXECUTORS,
        *,
        environ: dict[str, str] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        load_entry_points: bool = True,
        **overrides: Any,
    ) -> Litestar:
        fields: dict[str, Any] = {"secret_key": SECRET, "task_create_rate": 0.0, "allowed_hosts": TEST_HOST}
        fields.update(overrides)
        return create_app(
            Settings(**fields), executors, environ=environ or {}, clock=clock, load_entry_points=load_entry_points
        )

    return build


@pytest.fixture
async def app(make_app: Callable[..., Litestar]) -> Litestar:
    return make_app()


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_in_loop(app) as http:
        yield http


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """One throwaway redis-server for the whole test session (tests keep apart by key prefix)."""
    try:
        with redis_server() as url:
            yield url
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own on the shared redis-server."""
    return f"test-{uuid.uuid4().hex[:12]}:"

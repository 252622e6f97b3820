"""Shared fixtures: apps with test settings, in-process clients, test executors.

Plain helpers and the test constants (`SECRET`, `TEST_HOST`, `build_app`,
`new_address`) live in `tests.helpers`; import them from there.

- `make_app` / `app` / `client`: a fresh app per test, running in the test's event loop.
  Use them when the test's point involves the whole app's state (stats of every
  session, metrics, cleanup, settings, shutdown).
- `shared_app` / `session_client`: one app for the module (building an app costs
  ~130 ms: Litestar copies every handler at registration) and, per test, a client
  with a session of its own (its own client address). Use them for matrices of
  mistakes and for anything a session sees only of itself.
"""

from __future__ import annotations

import gc
import logging
import logging.handlers
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from queue import Queue
from typing import Any

import httpx
import pytest
from litestar import Litestar

from async_tasks.testing import asgi_client, serve_in_loop
from tests.faults.postgres_process import TEMPLATE_ENV
from tests.helpers import build_app, new_address
from tests.postgres_schemas import SchemaPool
from tests.servers import redis_server


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With ``-n``: every test a unit of its own, the modules sharing a browser or real
    server processes kept whole on one worker (see `tests.scheduling`)."""
    if config.getoption("dist") != "load":
        return None  # an explicit other --dist mode
    from tests.scheduling import GroupedScheduling

    return GroupedScheduling(config, log)


#: The garbage collector's thresholds in test processes (Python's: 700, 10, 10).
GC_THRESHOLDS = (20_000, 10, 10)


def pytest_configure(config: pytest.Config) -> None:
    """The collector runs less often in test processes: a test process builds an app after
    another (tens of thousands of objects each, most of them long-lived), and with Python's
    thresholds collecting took a sixth of its CPU (10 % with these; a process's peak memory
    grows by ~10 MB). Tests of what memory holds call `gc.collect()` themselves."""
    gc.set_threshold(*GC_THRESHOLDS)
    _make_postgres_template(config)


def _make_postgres_template(config: pytest.Config) -> None:
    """The run's PostgreSQL template (`tests.faults.postgres_process`): a directory that
    every xdist worker of the run inherits, so that initdb runs once, not in each worker.
    Removed when the run ends."""
    if hasattr(config, "workerinput") or os.environ.get(TEMPLATE_ENV):
        return  # a worker (it inherits the variable), or a run inside another
    directory = tempfile.mkdtemp(prefix="postgres-template-")
    os.environ[TEMPLATE_ENV] = directory

    def remove() -> None:
        del os.environ[TEMPLATE_ENV]
        shutil.rmtree(directory, ignore_errors=True)

    config.add_cleanup(remove)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # Session scope lets module-scoped async fixtures (`shared_app`) run in the event
    # loop of their module's tests; a test without one still gets a loop of its own.
    return "asyncio"


@pytest.fixture
def make_app() -> Callable[..., Litestar]:
    """`build_app`: an app with test settings; keyword arguments override `Settings` fields."""
    return build_app


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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One throwaway PostgreSQL cluster for the whole test session (tests keep apart by schema)."""
    from tests.faults.postgres_process import PostgresProcess

    try:
        with PostgresProcess() as server:
            yield server.url
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def postgres_schemas(postgres_url: str) -> Iterator[SchemaPool]:
    """The migrated schemas of the shared cluster that tests take in turn."""
    pool = SchemaPool(postgres_url)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def postgres_schema(postgres_schemas: SchemaPool) -> Iterator[str]:
    """A schema of this test's own in the shared cluster: migrated, and empty."""
    with postgres_schemas.schema() as name:
        yield name


@pytest.fixture(scope="module")
async def shared_app() -> AsyncIterator[Litestar]:
    """One app with test settings for the module, its lifespan running in the module's loop."""
    app = build_app()
    async with app.lifespan():
        yield app


@pytest.fixture
async def session_client(shared_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `shared_app` from an address of its own: a new session, empty."""
    async with asgi_client(shared_app, new_address()) as http:
        yield http


LOGGERS = ("", "async_tasks", "litestar", "uvicorn", "saq")


def written_logs() -> None:
    """The app's log handler writes from a queue listener's thread: wait (on the queue, no
    sleep) until it has written every record logged so far."""
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            listener = getattr(handler, "listener", None)
            running = getattr(listener, "_thread", None) is not None
            if isinstance(handler, logging.handlers.QueueHandler) and isinstance(handler.queue, Queue) and running:
                handler.queue.join()


def stream_handlers() -> Iterator[logging.StreamHandler[Any]]:
    """Our loggers' stream handlers, also those behind a queue listener."""
    for name in LOGGERS:
        for handler in logging.getLogger(name).handlers:
            listener = getattr(handler, "listener", None)
            for inner in (handler, *getattr(listener, "handlers", ())):
                if isinstance(inner, logging.StreamHandler):
                    yield inner


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call() -> Iterator[None]:
    """What the test logged is written before its fixtures end (``capsys`` among them)."""
    try:
        return (yield)
    finally:
        written_logs()


@pytest.fixture(autouse=True)
def _logs_written_within_the_test() -> Iterator[None]:
    """No line a test logged lands in another test's output, and none is lost after it.

    An app started in a test configures our loggers to write to ``sys.stderr`` as it is
    then: with ``capsys`` that is the test's own capture, closed when the test ends, and
    later lines (an app stopped by a module fixture, an engine without an app) would meet
    a closed stream. Such handlers are pointed back at the run's stderr."""
    yield
    written_logs()
    for handler in stream_handlers():
        if getattr(handler.stream, "closed", False):
            handler.acquire()  # not setStream(): it flushes the closed stream first
            try:
                handler.stream = sys.stderr
            finally:
                handler.release()


def pytest_sessionfinish() -> None:
    """What module fixtures logged while stopping their apps is written while pytest's
    capture is still open: the listener's thread would otherwise write it at exit, to a
    closed stream."""
    written_logs()

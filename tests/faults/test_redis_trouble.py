"""Redis trouble, as a deployment meets it: hung, refusing work (out of memory, a demoted
primary), gone, restarted. Requests answer 503 ``store_unavailable`` with Retry-After,
quickly; streams end with an event a client understands; each process says in one line
that Redis went away and in one that it is back; a restart with persistence keeps every
task and never condemns a healthy worker.

The tests taking a `server` hold on every shared backend and run on PostgreSQL too (hung,
gone, restarted); PostgreSQL's own refusals are in `test_postgres_trouble.py`."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import BusyLoadingError, MasterDownError, OutOfMemoryError, ReadOnlyError, ResponseError

from async_tasks.backends.queued.reconciler import Reconciler
from async_tasks.backends.redis import RedisTaskStore
from async_tasks.backends.redis.connection import is_transient
from async_tasks.errors import StoreUnavailable
from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from async_tasks.task import TaskStatus
from async_tasks.testing import serve_in_loop, wait_for
from tests.execution.executors import EXECUTORS
from tests.faults.redis_process import RedisProcess
from tests.faults.servers import (
    KINDS,
    WORDS,
    Kind,
    ServerProcess,
    kind_of,
    namespace,
    renewed_at,
    server_now_ms,
    server_process,
)
from tests.faults.servers import settings_fields as backend_fields
from tests.helpers import SECRET, ScriptExecutor, build_app

pytestmark = pytest.mark.e2e
S = "s"
API = "/api/v1"
LOGGER = "async_tasks.backend"


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    try:
        with RedisProcess(appendonly=True) as server:
            yield server
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A server of each shared backend that keeps its data across a restart."""
    kind: Kind = request.param
    try:
        with server_process(kind, persistent=True) as started:
            yield started
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


class Said(logging.Handler):
    """Counts our log lines about the server (Redis, or PostgreSQL with `word`), and wakes a
    test waiting for one."""

    def __init__(self, word: str = "Redis") -> None:
        super().__init__()
        self.word = word
        self.lines: list[str] = []
        self.changed = anyio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.word in record.getMessage():
            self.lines.append(record.getMessage())
            self.changed.set()

    def attach(self) -> None:
        logger = logging.getLogger(LOGGER)
        if self not in logger.handlers:
            logger.addHandler(self)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def until(self, text: str, times: int = 1, limit: float = 10) -> None:
        with anyio.fail_after(limit):
            while self.count(text) < times:
                await self.changed.wait()
                self.changed = anyio.Event()


@pytest.fixture
def said(request: pytest.FixtureRequest) -> Iterator[Said]:
    """Our lines about the server (the test's `server`, else Redis). Attached to the logger where they
    are logged; an app that configures logging clears that logger's handlers, so a test with an app
    calls `attach` again after building it."""
    server: ServerProcess | None = request.getfixturevalue("server") if "server" in request.fixturenames else None
    handler = Said(WORDS[kind_of(server)] if server is not None else "Redis")
    handler.attach()
    try:
        yield handler
    finally:
        logging.getLogger(LOGGER).removeHandler(handler)


def settings(server: ServerProcess, space: str, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "secret_key": SECRET,
        "task_create_rate": 0.0,
        **backend_fields(server, space, timeout_ms=300),
        "worker_lease_ms": 600,
        "retry_backoff_ms": 0,
        **overrides,
    }
    return Settings(**fields)


@pytest.fixture
async def engines(server: ServerProcess) -> AsyncIterator[Any]:
    """Engines of one deployment on `server`."""
    space = namespace(kind_of(server))
    async with AsyncExitStack() as stack:

        async def make(**overrides: Any) -> TaskSystem:
            system = TaskSystem(EXECUTORS, settings=settings(server, space, **overrides), load_entry_points=False)
            return await stack.enter_async_context(system)

        yield make


def test_what_counts_as_redis_being_away() -> None:
    """Timeouts, lost connections and the error replies of a Redis that refuses work for now are
    a 503; any other error reply (a bug of ours) is not hidden as one."""
    replies = ("OOM command not allowed", "BUSY Redis is busy running a script", "MASTERDOWN Link down",
               "NOREPLICAS Not enough good replicas", "TRYAGAIN Multiple keys", "MISCONF Errors writing")  # fmt: skip
    for reply in replies:
        assert is_transient(ResponseError(reply)), reply
    assert is_transient(ReadOnlyError("READONLY You can't write against a read only replica."))
    assert is_transient(BusyLoadingError("Redis is loading the dataset in memory"))
    assert is_transient(OutOfMemoryError("command not allowed when used memory > 'maxmemory'"))
    assert is_transient(MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."))
    assert not is_transient(ResponseError("ERR Error running script (call to f_1234): bad argument"))


async def test_a_hung_server_is_a_503_within_its_timeout_said_once(server: ServerProcess, said: Said) -> None:
    """SIGSTOPped Redis (or PostgreSQL): every request answers 503 with Retry-After within about its
    timeout (REDIS_TIMEOUT_MS, POSTGRES_TIMEOUT_MS), never waits for it; one line says it is away,
    one that it is back."""
    app = build_app(**backend_fields(server, namespace(kind_of(server)), timeout_ms=300))
    said.attach()
    async with serve_in_loop(app) as http:
        created = (await http.post(f"{API}/tasks", json={"executor": "script", "start": False})).json()["task"]
        server.pause()
        try:
            for _ in range(3):
                began = time.monotonic()
                answer = await http.get(f"{API}/tasks/{created['id']}")
                assert answer.status_code == 503 and time.monotonic() - began < 1.5
                assert answer.json()["error"]["code"] == "store_unavailable" and answer.headers["Retry-After"]
        finally:
            server.resume()
        assert (await http.get(f"{API}/tasks/{created['id']}")).status_code == 200
    assert said.count(f"cannot reach {said.word}") == 1 and said.count(f"reaches {said.word} again") == 1


async def test_a_refusing_redis_is_a_503_and_a_demoted_primary_is_left(redis: RedisProcess) -> None:
    """Out of memory, or a primary turned replica by a failover: 503 store_unavailable; once Redis
    takes writes again (the client connects afresh), creates work."""
    app = build_app(task_backend=redis.url)
    admin: Any = Redis.from_url(redis.url)
    async with serve_in_loop(app) as http:
        body = {"executor": "script", "start": False}
        for breaking, mending in (
            (["CONFIG", "SET", "maxmemory", "1"], ["CONFIG", "SET", "maxmemory", "0"]),
            (["REPLICAOF", "127.0.0.1", "1"], ["REPLICAOF", "NO", "ONE"]),
        ):
            await admin.execute_command(*breaking)
            refused = await http.post(f"{API}/tasks", json=body)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
            await admin.execute_command(*mending)
            assert (await http.post(f"{API}/tasks", json=body)).status_code == 201
    await admin.aclose()


async def test_a_stream_asked_for_while_the_server_is_away_says_so(server: ServerProcess) -> None:
    """Gone or hung, a stream is refused with 503 store_unavailable, or (once subscribed) ends with an
    ``error`` event saying when to reconnect, within the timeout: never a 500, never a wait for the server."""
    app = build_app(**backend_fields(server, namespace(kind_of(server)), timeout_ms=300))
    async with serve_in_loop(app) as http:
        created = (await http.post(f"{API}/tasks", json={"executor": "script", "start": False})).json()["task"]
        server.pause()
        try:
            for path in ("/tasks/events", f"/tasks/{created['id']}/events"):
                began = time.monotonic()
                says_unavailable(await http.get(API + path))
                assert time.monotonic() - began < 1.5
        finally:
            server.resume()
        server.kill()
        says_unavailable(await http.get(f"{API}/tasks/events"))


def says_unavailable(answer: httpx.Response) -> None:
    """Refused (503 store_unavailable, Retry-After) or, once subscribed, ended by an ``error`` event with ``retry``."""
    if answer.status_code == 200:
        assert "event: error" in answer.text and "store_unavailable" in answer.text and "retry: " in answer.text
    else:
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "store_unavailable"
        assert answer.headers["Retry-After"]


async def test_a_worker_says_once_that_the_server_is_away_and_once_that_it_is_back(
    engines: Any, server: ServerProcess, said: Said
) -> None:
    """A paused server makes the worker's upkeep fail at every tick: one line, then one when it is back."""
    await engines(embedded_worker=True)
    server.pause()
    try:
        await said.until(f"cannot reach {said.word}")
    finally:
        server.resume()
    await said.until(f"reaches {said.word} again")
    assert said.count(f"cannot reach {said.word}") == 1


async def test_a_restart_with_persistence_keeps_every_task_and_every_healthy_attempt(
    engines: Any, server: ServerProcess
) -> None:
    """Redis restarted (AOF), or PostgreSQL: finished, waiting and running tasks are all there; the
    running attempt is not declared lost by the other worker (leases come back within a third of a
    lease), and completes."""
    api = await engines()
    runner = await engines(embedded_worker=True, worker_concurrency=1)
    watcher = await engines(embedded_worker=True, worker_concurrency=1)
    done = await api.create_task(S, executor="script")
    await wait_for(runner, S, done.id, "completed")
    running = await api.create_task(S, executor="script", params={"hold": True})
    await wait_for(runner, S, running.id, "running")
    waiting = await api.create_task(S, executor="script", start=False)
    server.restart(graceful=True)
    # Both workers renew their leases again (the watcher's reconciler runs all along); a lease
    # and a half later nothing may have been condemned.
    store = api.store
    ids = [runner.worker.worker_id, watcher.worker.worker_id]
    with anyio.fail_after(10):
        while True:  # the first call after the restart may meet a connection that broke
            try:
                restarted = await server_now_ms(store)
                break
            except StoreUnavailable:
                await anyio.sleep(0.05)
        while min(await renewed_at(store, ids)) < restarted + 900:  # noqa: ASYNC110 (state in the server)
            await anyio.sleep(0.05)
    assert [t.status for t in [await api.get_task(S, t.id) for t in (done, running, waiting)]] == [
        TaskStatus.COMPLETED, TaskStatus.RUNNING, TaskStatus.PENDING,
    ]  # fmt: skip
    ScriptExecutor.release(running.id)
    assert (await wait_for(runner, S, running.id, "completed")).attempts == 1


async def test_a_lease_gone_for_less_than_half_a_lease_is_only_suspected(redis_url: str, redis_prefix: str) -> None:
    """The reconciler condemns a worker only when its lease has been gone for half a lease (time by Redis)."""
    store = RedisTaskStore(Redis.from_url(redis_url), prefix=redis_prefix)
    raw: Any = store.redis
    reconciler = Reconciler(store, Settings(worker_lease_ms=600), "me")
    await store.join("other", 1, 600, b"{}")
    await raw.delete(store.keys.lease("other"))
    assert await reconciler.lost_workers() == []  # just suspected
    await store.join("other", 1, 600, b"{}")  # it renews: no longer suspected
    assert await reconciler.lost_workers() == [] and not await raw.hexists(store.keys.suspects, "other")
    await raw.delete(store.keys.lease("other"))
    await reconciler.lost_workers()
    seconds, _ = await raw.time()
    await raw.hset(store.keys.suspects, "other", str((int(seconds) - 1) * 1000))  # suspected a second ago
    assert await reconciler.lost_workers() == ["other"]
    await store.aclose()

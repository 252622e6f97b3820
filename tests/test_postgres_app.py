"""The HTTP API on the PostgreSQL backend, in-process: the same answers as in memory mode,
readiness that names PostgreSQL, start-up refusals in one line, push streams that start
again from snapshots after PostgreSQL comes back, and what differs from Redis and memory
(NOTIFY's size limit, the NUL character)."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import msgspec
import pytest
from litestar import Litestar

from async_tasks.errors import StoreUnavailable
from async_tasks.server import serve
from async_tasks.settings import Settings
from async_tasks.system import TaskSystem
from async_tasks.testing import serve_in_loop, wait_for
from async_tasks.web.frames import OPENED
from async_tasks.web.streams import StreamBridge
from async_tasks.worker import run_worker
from tests.faults.postgres_process import PostgresProcess
from tests.helpers import SECRET, ScriptExecutor, system_of
from tests.servers import free_port
from tests.test_redis_app import API, run_scenario


async def test_the_api_answers_as_in_memory_mode(
    make_app: Callable[..., Litestar], postgres_url: str, postgres_schema: str
) -> None:
    """The same requests get the same answers (but ids, times and how far a just-started
    task has got) on both backends."""
    memory_app = make_app(max_cancelled_tasks=0)  # the cleanup run removes the cancelled task
    postgres_app = make_app(
        max_cancelled_tasks=0, task_backend=postgres_url, postgres_schema=postgres_schema, embedded_worker=True
    )
    async with serve_in_loop(memory_app) as http:
        in_memory = await run_scenario(http, system_of(memory_app))
    async with serve_in_loop(postgres_app) as http:
        in_postgres = await run_scenario(http, system_of(postgres_app))
        for task in (await http.get(f"{API}/tasks")).json()["tasks"]:
            ScriptExecutor.release(task["id"])
    assert in_postgres == in_memory


async def test_ready_names_postgres(make_app: Callable[..., Litestar], postgres_url: str, postgres_schema: str) -> None:
    """/ready checks PostgreSQL: 200 while it answers, 503 naming it when it does not; requests answer 503."""
    async with serve_in_loop(make_app(task_backend=postgres_url, postgres_schema=postgres_schema)) as http:
        ready = await http.get("/ready")
        assert ready.status_code == 200 and ready.json()["checks"]["postgres"] == "ok"
    gone = PostgresProcess()
    gone.start()
    app = make_app(task_backend=gone.url, postgres_schema=postgres_schema, postgres_timeout_ms=500)
    async with serve_in_loop(app) as http:
        gone.kill()
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["failing"] == ["postgres"]
        response = await http.get(f"{API}/tasks")
        assert response.status_code == 503 and response.json()["error"]["code"] == "store_unavailable"
        assert response.headers["Retry-After"]
    gone.close()


def test_start_up_refusals_are_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    """No SECRET_KEY, an unreachable database, a schema name PostgreSQL would need quoted: one line each."""
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("TASK_BACKEND", raising=False)
    assert serve(backend=postgres_url, port=free_port()) == 2
    assert "SECRET_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("SECRET_KEY", SECRET)
    gone = f"postgresql://app:hunter2@127.0.0.1:{free_port()}/tasks"
    assert serve(backend=gone, port=free_port()) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("async-tasks: Cannot reach PostgreSQL at postgresql://app:***@127.0.0.1")
        and err.count("\n") == 1
    )
    assert run_worker(backend=gone) == 2
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setenv("POSTGRES_SCHEMA", "Tasks; drop")
    assert serve(backend=postgres_url, port=free_port()) == 2
    err = capsys.readouterr().err
    assert "POSTGRES_SCHEMA" in err and err.count("\n") == 1


async def test_a_large_result_stays_whole_in_the_task_and_out_of_the_event(
    postgres_url: str, postgres_schema: str
) -> None:
    """NOTIFY carries at most 8000 bytes: the completed event of a task with a larger result
    leaves the result out (clients read it from the task); the task keeps it whole."""
    settings = Settings(secret_key=SECRET, task_create_rate=0.0, task_backend=postgres_url,
                        postgres_schema=postgres_schema, embedded_worker=True, worker_lease_ms=600)  # fmt: skip
    async with TaskSystem([ScriptExecutor], settings=settings, load_entry_points=False) as system:
        bridge = StreamBridge(system.store, shared=system.backend.events)
        async with anyio.create_task_group() as tg:
            await tg.start(bridge.run)
            stream = bridge.session_stream("s", keepalive=False)
            assert await anext(stream) == OPENED
            big = {"text": "x" * 20_000}
            task = await system.create_task("s", executor="script", params={"result": big})
            with anyio.fail_after(5):
                while True:
                    frame = await anext(stream)
                    event = msgspec.json.decode(frame.data)
                    if event["status"] == "completed":
                        break
            assert event["result"] is None
            assert (await wait_for(system, "s", task.id, "completed")).result == big
            await stream.aclose()
            tg.cancel_scope.cancel()


async def test_a_nul_character_is_stored_as_a_replacement_character(postgres_url: str, postgres_schema: str) -> None:
    """PostgreSQL's text cannot hold NUL: a task's name with one is kept with U+FFFD instead
    (never a 500); params keep it (they are JSON)."""
    settings = Settings(secret_key=SECRET, task_create_rate=0.0, task_backend=postgres_url,
                        postgres_schema=postgres_schema)  # fmt: skip
    async with TaskSystem([ScriptExecutor], settings=settings, load_entry_points=False) as system:
        task = await system.create_task("s", executor="script", name="a\x00b", params={"result": "c\x00d"}, start=False)
        stored = await system.get_task("s", task.id)
    assert stored.name == "a\ufffdb" and stored.params.result == "c\x00d"  # (params as the executor takes them)


@pytest.mark.e2e
async def test_streams_start_again_from_snapshots_after_postgres_comes_back(postgres_schema: str) -> None:
    """NOTIFY loses what is sent while the listening connection reconnects: after a PostgreSQL
    restart every open stream sends fresh snapshots, then follows changes again."""
    with PostgresProcess() as server:
        settings = Settings(secret_key=SECRET, task_create_rate=0.0, task_backend=server.url,
                            postgres_schema=postgres_schema)  # fmt: skip
        async with TaskSystem([ScriptExecutor], settings=settings, load_entry_points=False) as system:
            bridge = StreamBridge(system.store, shared=system.backend.events)
            async with anyio.create_task_group() as tg:
                await tg.start(bridge.run)
                stream = bridge.session_stream("s", keepalive=False)
                assert await anext(stream) == OPENED
                first = await system.create_task("s", executor="script", start=False)
                frame = await anext(stream)  # snapshots are read when the consumer starts reading
                assert frame.type == "snapshot" and first.id.encode() in frame.data
                server.restart()  # killed: every connection drops; the data stays
                with anyio.fail_after(10):
                    while True:
                        try:
                            second = await system.create_task("s", executor="script", start=False)
                            break
                        except StoreUnavailable:
                            await anyio.sleep(0.05)
                    caught_up = await anext(stream)  # a snapshot, or its event if it came after
                    while second.id.encode() not in caught_up.data:
                        caught_up = await anext(stream)
                    third = await system.create_task("s", executor="script", start=False)
                    followed = await anext(stream)
                    while third.id.encode() not in followed.data:
                        followed = await anext(stream)
                assert followed.type == "transition"
                await stream.aclose()
                tg.cancel_scope.cancel()

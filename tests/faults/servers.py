"""The fault suite's backends: a server process to hang, kill and restart, and how a
deployment on it is configured, for each shared backend (the tests that hold on every
backend take the `kind` as a parameter).

    with server_process("postgres") as server:       # a RedisProcess or a PostgresProcess
        fields = settings_fields(server, namespace("postgres"))   # TASK_BACKEND, its schema
        server.pause()                                # hung; .resume(), .kill(), .restart()
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, Protocol

from async_tasks.store.base import TaskStore

Kind = Literal["redis", "postgres"]
KINDS: tuple[Kind, ...] = ("redis", "postgres")
#: How each backend's log lines name its server.
WORDS: dict[Kind, str] = {"redis": "Redis", "postgres": "PostgreSQL"}


class ServerProcess(Protocol):
    @property
    def url(self) -> str: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def kill(self) -> None: ...

    def restart(self, *, graceful: bool = False) -> None: ...


def kind_of(server: ServerProcess) -> Kind:
    return "postgres" if server.url.startswith("postgresql") else "redis"


@contextmanager
def server_process(kind: Kind, *, persistent: bool = False) -> Iterator[ServerProcess]:
    """A throwaway server of `kind` (Redis with an AOF when `persistent`; PostgreSQL always
    keeps its data). `FileNotFoundError` when it is not installed."""
    if kind == "redis":
        from tests.faults.redis_process import RedisProcess

        with RedisProcess(appendonly=persistent) as redis:
            yield redis
    else:
        from tests.faults.postgres_process import PostgresProcess

        with PostgresProcess() as postgres:
            yield postgres


def namespace(kind: Kind) -> str:
    """A key prefix (Redis) or a schema (PostgreSQL) of the test's own."""
    return f"test-{uuid.uuid4().hex[:12]}:" if kind == "redis" else f"test_{uuid.uuid4().hex[:12]}"


def settings_fields(server: ServerProcess, space: str, *, timeout_ms: int | None = None) -> dict[str, Any]:
    """The `Settings` fields of a deployment on `server` under `space` (see `namespace`)."""
    if kind_of(server) == "redis":
        fields: dict[str, Any] = {"task_backend": server.url, "redis_key_prefix": space}
        if timeout_ms is not None:
            fields["redis_timeout_ms"] = timeout_ms
        return fields
    fields = {"task_backend": server.url, "postgres_schema": space}
    if timeout_ms is not None:
        fields["postgres_timeout_ms"] = timeout_ms
    return fields


def environ(server: ServerProcess, space: str) -> dict[str, str]:
    """`settings_fields` as a process's environment variables."""
    return {name.upper(): str(value) for name, value in settings_fields(server, space).items()}


async def add_lost_worker(store: TaskStore, worker: str, lease_ms: int) -> None:
    """A worker in the pool whose lease has just run out (it died without a word)."""
    from async_tasks.backends.redis import RedisTaskStore

    if isinstance(store, RedisTaskStore):
        await store.join(worker, 1, lease_ms, b"{}")
        await store.redis.delete(store.keys.lease(worker))
        return
    from async_tasks.backends.postgres import PostgresTaskStore

    assert isinstance(store, PostgresTaskStore)
    await store.join(worker, f"{store.schema}.gone", 1, lease_ms, b"{}")
    await store.db.call("UPDATE workers SET lease_until = db_now() WHERE id = %s", (worker,))


async def renewed_at(store: TaskStore, workers: list[str]) -> list[int]:
    """When each worker last renewed its lease (0: no lease), by the server's clock."""
    from async_tasks.backends.redis import RedisTaskStore

    if isinstance(store, RedisTaskStore):
        import msgspec

        found = []
        for worker in workers:
            raw = await store.redis.get(store.keys.lease(worker))
            found.append(int(msgspec.json.decode(raw)["renewedAt"]) if raw else 0)
        return found
    from async_tasks.backends.postgres import PostgresTaskStore

    assert isinstance(store, PostgresTaskStore)
    rows = dict(await store.db.rows("SELECT id, renewed_at FROM workers WHERE id = ANY(%s)", (workers,)))
    return [int(rows.get(worker, 0)) for worker in workers]


async def server_now_ms(store: TaskStore) -> int:
    """The server's clock, in ms."""
    now: int = await store._now_ms()  # type: ignore[attr-defined]
    return now

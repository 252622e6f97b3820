"""PostgreSQL's own trouble: what counts as the server being away, a server that refuses
writes (a hot standby, or a primary turned read-only) answers 503 until it takes them
again, and a worker is condemned only when its lease has been gone for half a lease (by
the database's clock). The trouble every backend meets (hung, gone, restarted) is in
`test_redis_trouble.py`, run on PostgreSQL too."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import errors
from psycopg_pool import PoolTimeout

from async_tasks.backends.postgres import PostgresTaskStore
from async_tasks.backends.postgres.connection import Database, is_transient
from async_tasks.backends.postgres.schema import migrate
from async_tasks.backends.queued.reconciler import Reconciler
from async_tasks.settings import Settings
from async_tasks.testing import serve_in_loop
from tests.helpers import build_app

API = "/api/v1"


def test_what_counts_as_postgres_being_away() -> None:
    """Lost connections, timeouts, a server shutting down or starting, out of connections, read-only:
    a 503; any other error (a bug of ours) is not hidden as one."""
    away: tuple[BaseException, ...] = (
        psycopg.OperationalError("server closed the connection unexpectedly"),
        PoolTimeout("no connection"),
        errors.AdminShutdown("terminating connection"),
        errors.CannotConnectNow("starting up"),
        errors.TooManyConnections("too many clients"),
        errors.ReadOnlySqlTransaction("read-only"),
        errors.SerializationFailure("could not serialize"),
        TimeoutError(),
    )
    bugs: tuple[BaseException, ...] = (
        errors.UndefinedFunction("no such function"),
        errors.SyntaxError("bad"),
        errors.UniqueViolation("duplicate key"),
    )
    for exc in away:
        assert is_transient(exc), exc
    for exc in bugs:
        assert not is_transient(exc), exc


async def test_a_read_only_server_is_a_503_until_it_takes_writes(postgres_url: str, postgres_schema: str) -> None:
    """A primary turned read-only (or a standby behind the address after a failover): creates answer
    503 store_unavailable with Retry-After; reads still work; once it takes writes, creates work."""
    app = build_app(task_backend=postgres_url, postgres_schema=postgres_schema)
    admin = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
    database = f"{postgres_url.rpartition('/')[2]}"
    async with serve_in_loop(app) as http:
        body = {"executor": "script", "start": False}
        assert (await http.post(f"{API}/tasks", json=body)).status_code == 201
        await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND application_name = 'async-tasks'"
            )
            refused = await http.post(f"{API}/tasks", json=body)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
            assert refused.headers["Retry-After"]
            assert (await http.get(f"{API}/tasks")).status_code == 200
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                "AND application_name = 'async-tasks'"
            )
        assert (await http.post(f"{API}/tasks", json=body)).status_code == 201
    await admin.close()


async def test_a_lease_gone_for_less_than_half_a_lease_is_only_suspected(
    postgres_url: str, postgres_schema: str
) -> None:
    """The reconciler condemns a worker only when its lease has been gone for half a lease (time by
    PostgreSQL); a renewed lease clears the suspicion."""
    await migrate(postgres_url, postgres_schema, 2000)
    store = PostgresTaskStore(Database(postgres_url, postgres_schema, 2000))
    reconciler = Reconciler(store, Settings(worker_lease_ms=600), "me")
    expire: Any = "UPDATE workers SET lease_until = db_now() WHERE id = 'other'"
    await store.join("other", "q.other", 1, 600, b"{}")
    await store.db.call(expire)
    assert await reconciler.lost_workers() == []  # just suspected
    await store.join("other", "q.other", 1, 600, b"{}")  # it renews: no longer suspected
    assert await reconciler.lost_workers() == []
    assert await store.db.call("SELECT suspected_at FROM workers WHERE id = 'other'") is None
    await store.db.call(expire)
    await reconciler.lost_workers()
    await store.db.call("UPDATE workers SET suspected_at = db_now() - 1000 WHERE id = 'other'")  # a second ago
    assert await reconciler.lost_workers() == ["other"]
    await store.aclose()

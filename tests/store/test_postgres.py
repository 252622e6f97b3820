"""What the PostgreSQL store promises beyond the shared contract: a deployment made by an
earlier version of the schema is migrated at start-up and keeps its tasks, what each client
holds is covered by the counter verification, and a session forgotten whole is announced on
the deployment's channel (its push streams end on every API process)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from psycopg import AsyncConnection
from psycopg.sql import SQL, Identifier

from async_tasks.backends.postgres import PostgresTaskStore
from async_tasks.backends.postgres.connection import Database, connection_kwargs
from async_tasks.backends.postgres.schema import MIGRATIONS, events_channel, functions_fingerprint, migrate, source
from async_tasks.store.base import CreateLimits, Expiry
from async_tasks.task import TaskStatus
from async_tasks.testing import FakeClock
from tests.store.test_contract import new_task

LIMITS = CreateLimits(max_active_per_session=100)


@pytest.fixture
async def connect(postgres_url: str, postgres_schema: str) -> AsyncIterator[Any]:
    """``await connect()``: a connection to the test's schema (closed after the test)."""
    opened: list[AsyncConnection[Any]] = []

    async def make() -> AsyncConnection[Any]:
        opened.append(await AsyncConnection.connect(postgres_url, **connection_kwargs(postgres_schema, 2000)))
        return opened[-1]

    yield make
    for conn in opened:
        await conn.close()


@pytest.fixture
async def store(postgres_url: str, postgres_schema: str) -> AsyncIterator[PostgresTaskStore]:
    await migrate(postgres_url, postgres_schema, 2000)
    made = PostgresTaskStore(Database(postgres_url, postgres_schema, 2000), clock=FakeClock())
    yield made
    await made.aclose()


async def test_a_deployment_of_schema_version_1_is_migrated_at_start_up(
    postgres_url: str, postgres_schema: str, connect: Any
) -> None:
    """Version 1 knew no clients: each of its sessions becomes its own client, holding its
    tasks, so the counters check out and a full pool makes room from the largest of them."""
    conn = await connect()
    # The fixture's schema is migrated already: this test starts it again from version 1.
    await conn.execute(SQL("DROP SCHEMA {} CASCADE").format(Identifier(postgres_schema)))
    await conn.execute(SQL("CREATE SCHEMA {}").format(Identifier(postgres_schema)))
    await conn.execute(source(MIGRATIONS[0][1]).encode())
    await conn.execute("CREATE TABLE schema_version (version integer NOT NULL, functions text NOT NULL)")
    await conn.execute("INSERT INTO schema_version VALUES (1, 'the functions of version 1')")
    # What version 1 held: session "old" with three never-started tasks, "done" with a finished one.
    old = [new_task("old") for _ in range(3)]
    for n, (task, session, status) in enumerate([*((t, "old", "pending") for t in old),
                                                 (new_task("done"), "done", "completed")]):  # fmt: skip
        await conn.execute(
            "INSERT INTO tasks (id, session_key, seq, status, executor, name, created_at, updated_at, lifetime_from, "
            "fresh, finished_seq) VALUES (%s, %s, nextval('seq'), %s, 'x', 't', %s, %s, %s, %s, %s)",
            (task.id, session, status, 1000 + n, 1000 + n, 1000 + n, status == "pending", n if n == 3 else None),
        )
    await conn.execute("INSERT INTO sessions (key, pending, changed_at) VALUES ('old', 3, 1002)")
    await conn.execute("INSERT INTO sessions (key, completed, changed_at) VALUES ('done', 1, 1003)")
    await conn.execute("UPDATE totals SET pending = 3, completed = 1, sessions = 2")

    await migrate(postgres_url, postgres_schema, 2000)

    version = await (await conn.execute("SELECT version, functions FROM schema_version")).fetchall()
    assert version == [(MIGRATIONS[-1][0], functions_fingerprint())]
    store = PostgresTaskStore(Database(postgres_url, postgres_schema, 2000), clock=FakeClock())
    try:
        assert await store.verify() == []
        removed: list[tuple[str, str | None]] = []
        store.events.on_removed.append(lambda task, cause: removed.append((task.id, cause)))
        caps = msgspec.structs.replace(LIMITS, max_tasks=5, client="newcomer")
        await store.create(new_task("new"), limits=caps)
        assert removed == []
        await store.create(new_task("new"), limits=caps)  # full: "old" holds 3, more than 1 + 1
        assert removed == [(old[0].id, "evicted")]
        assert (await store.counts("old")).by_status[TaskStatus.PENDING] == 2
        assert await store.verify() == []
    finally:
        await store.aclose()
    await migrate(postgres_url, postgres_schema, 2000)  # up to date: nothing to do
    assert await (await conn.execute("SELECT count(*) FROM tasks")).fetchone() == (5,)


async def test_verify_repairs_what_a_client_holds(store: PostgresTaskStore, connect: Any) -> None:
    """The per-client counters are covered by the counter verification: a drifted one is
    repaired (and logged by the reconciler), a right one left alone."""
    limits = msgspec.structs.replace(LIMITS, client="c-a")
    for session in ("a1", "a2", "a2"):
        await store.create(new_task(session), limits=limits)
    await store.create(new_task("b"), limits=msgspec.structs.replace(limits, client="c-b"))
    assert await store.verify() == []
    conn = await connect()
    await conn.execute("UPDATE clients SET tasks = 7 WHERE key = 'c-a'")
    await conn.execute("DELETE FROM clients WHERE key = 'c-b'")
    await conn.execute("INSERT INTO clients (key, sessions) VALUES ('c-gone', 2)")
    repairs = sorted(await store.verify())
    assert repairs == [
        ("client c-a", "tasks", 7, 3),
        ("client c-b", "sessions", 0, 1),
        ("client c-b", "tasks", 0, 1),
        ("client c-gone", "sessions", 2, 0),
    ]
    assert await store.verify() == []


async def test_a_session_forgotten_whole_is_announced_on_the_deployments_channel(
    store: PostgresTaskStore, connect: Any, postgres_schema: str
) -> None:
    """Evicted to make room, or expired when idle: an ``ended`` envelope on the session's
    channel, after its tasks' removals (what the push streams of every API process end on)."""
    caps = msgspec.structs.replace(LIMITS, max_sessions=1)
    idle, _ = await store.create(new_task("idle"), limits=msgspec.structs.replace(caps, client="A"))
    await store.transition("idle", idle.id, TaskStatus.CANCELLED)
    listener = await connect()
    await listener.execute(SQL("LISTEN {}").format(Identifier(events_channel(postgres_schema))))
    newcomer, _ = await store.create(new_task("newcomer"), limits=msgspec.structs.replace(caps, client="B"))
    await store.transition("newcomer", newcomer.id, TaskStatus.CANCELLED)
    assert isinstance(store.clock, FakeClock)
    store.clock.advance(3600)
    assert (await store.expire(Expiry(session_idle_ms=60_000))).sessions == 1

    seen = []
    async for notify in listener.notifies(timeout=5, stop_after=6):
        session, _, envelope = notify.payload.partition("\n")
        _, _, kind, _, _, event = msgspec.json.decode(envelope)
        assert event["sessionKey"] == session
        seen.append((session, kind, event.get("reason")))
    assert seen == [
        ("idle", "removed", None),
        ("idle", "ended", "evicted"),
        ("newcomer", "transition", None),
        ("newcomer", "transition", None),
        ("newcomer", "removed", None),
        ("newcomer", "ended", "expired"),
    ]

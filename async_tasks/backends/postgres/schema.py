"""Every table and function of the PostgreSQL backend, named once, and how a deployment's
schema is created or brought up to date at start-up.

A deployment lives in one schema (POSTGRES_SCHEMA, ``async_tasks`` by default; every
connection's ``search_path``), readable with any SQL client::

    tasks            one row per task: the contract's fields (snake_case), and where its
                     delivery is (delivery: p parked, d delayed, q dispatched; line_order,
                     due_at, job_worker / job_key), the worker running it (runner), its
                     last writes' operation ids (ops), its session's client (client)
    task_history     each task's transitions (capped by MAX_TASK_HISTORY)
    task_logs        the lines each task's executor wrote (within the TASK_LOG_* bounds)
    durations        each executor's last completed attempts' run times (estimates)
    sessions         one row per session holding tasks: counts by status, dispatched,
                     summed run time, when it last changed, its place in the line of
                     sessions waiting for a slot, the client (address) it belongs to
    clients          what each client holds: sessions and tasks (its budgets and shares)
    totals           every session's counts together (one row)
    idempotency_keys Idempotency-Key -> task, fingerprint, when used (outlives the task)
    workers          live workers: their SAQ queue, slots, slots in use, lease
    buckets          token buckets (per-session create rates)
    removals         a removal's answer, a minute (a re-sent removal answers with it)
    locks            leases of one-at-a-time duties (the reconciler)
    schema_version   the version of the tables and the fingerprint of the functions
    saq_jobs, saq_stats, saq_versions
                     SAQ's own tables (its migrations, run here): each worker has its own
                     queue (``queue``); the change functions insert its jobs

and the functions in `sql/` (``op_<name>``: one per change, each one transaction; the
others are the prelude's helpers). Two notification channels: ``<schema>_events`` (every
change, for the push streams) and ``<schema>_stop`` (a running attempt cancelled).

`migrate` runs under a transaction-level advisory lock, so processes starting together
wait for one another: the tables' migrations whose number is above the stored version,
SAQ's own, then the functions again when their text changed (dropped and created, in the
same transaction). A process whose code is older than the schema refuses to start.
"""

from __future__ import annotations

import hashlib
import zlib
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Final

from async_tasks.errors import SettingsError

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.sql import Composed

#: The tables' migrations: (version, file in sql/), in order.
MIGRATIONS: Final = ((1, "tables_1.sql"), (2, "tables_2.sql"))
#: The function files, in the order they are created (the prelude's three first).
FUNCTIONS: Final = (
    "prelude.sql",
    "prelude_delivery.sql",
    "prelude_changes.sql",
    "create.sql",
    "transition.sql",
    "start.sql",
    "claim.sql",
    "finish.sql",
    "progress.sql",
    "remove.sql",
    "trim.sql",
    "expire.sql",
    "token.sql",
    "promote.sql",
    "workers.sql",
    "reads.sql",
)
#: SAQ's tables, in the deployment's schema.
SAQ_JOBS: Final = "saq_jobs"
SAQ_STATS: Final = "saq_stats"
SAQ_VERSIONS: Final = "saq_versions"
#: The first key of the deployment's advisory locks (the second: the schema's hash).
LOCK_SPACE: Final = 1735


def events_channel(schema: str) -> str:
    return f"{schema}_events"


def stop_channel(schema: str) -> str:
    return f"{schema}_stop"


def due_channel(schema: str) -> str:
    """Where a transaction that makes a task the earliest delayed one says when it is due."""
    return f"{schema}_due"


def saq_lock_keyspace(schema: str) -> int:
    """SAQ's advisory lock keys for this deployment's queues (its default, 0, is one for the
    whole database: a second deployment would wait for the first's)."""
    return zlib.crc32(schema.encode()) & 0x3FFFFFFF | 0x40000000


@cache
def source(name: str) -> str:
    return (files(__package__) / "sql" / name).read_text()


@cache
def functions_fingerprint() -> str:
    digest = hashlib.sha256()
    for name in FUNCTIONS:
        digest.update(source(name).encode())
    return digest.hexdigest()[:16]


async def migrate(url: str, schema: str, timeout_ms: int) -> None:
    """Create the deployment's schema, or bring it up to date (see the module docstring)."""
    from psycopg import AsyncConnection
    from psycopg.sql import SQL, Identifier
    from saq.queue.postgres_migrations import get_migrations

    from async_tasks.backends.postgres.connection import connection_kwargs

    target = MIGRATIONS[-1][0]
    fingerprint = functions_fingerprint()
    async with await AsyncConnection.connect(url, **connection_kwargs(schema, timeout_ms)) as conn:
        current = await _version(conn)
        if current == (target, fingerprint):
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_SPACE, schema))
            await conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(schema)))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL, functions text NOT NULL)"
            )
            row = await (await conn.execute("SELECT version, functions FROM schema_version")).fetchone()
            version, installed = (row[0], row[1]) if row else (0, "")
            if version > target:
                raise SettingsError(
                    f"The PostgreSQL schema {schema!r} is at version {version}, newer than this async-tasks "
                    f"knows ({target}): upgrade async-tasks on this machine"
                )
            for number, name in MIGRATIONS:
                if number > version:
                    await conn.execute(source(name).encode())
            await _saq_tables(conn, get_migrations(jobs_table=Identifier(SAQ_JOBS), stats_table=Identifier(SAQ_STATS)))
            if installed != fingerprint:
                await conn.execute(_DROP_FUNCTIONS.encode(), prepare=False)
                for name in FUNCTIONS:
                    await conn.execute(source(name).encode())
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version VALUES (%s, %s)", (target, fingerprint))


async def _version(conn: AsyncConnection[Any]) -> tuple[int, str] | None:
    from psycopg import errors

    try:
        row = await (await conn.execute("SELECT version, functions FROM schema_version")).fetchone()
    except (errors.UndefinedTable, errors.InvalidSchemaName):
        return None
    return (int(row[0]), str(row[1])) if row else None


async def _saq_tables(conn: AsyncConnection[Any], migrations: list[tuple[int, list[Composed]]]) -> None:
    """SAQ's tables, by SAQ's own migrations, as its `PostgresQueue.init_db` would make them."""
    from psycopg.sql import SQL, Identifier

    await conn.execute(SQL("CREATE TABLE IF NOT EXISTS {} (version INT)").format(Identifier(SAQ_VERSIONS)))
    row = await (await conn.execute(SQL("SELECT version FROM {}").format(Identifier(SAQ_VERSIONS)))).fetchone()
    version = row[0] if row else 0
    for number, statements in migrations:
        if number > version:
            for statement in statements:
                await conn.execute(statement)
    await conn.execute(SQL("DELETE FROM {}").format(Identifier(SAQ_VERSIONS)))
    await conn.execute(
        SQL("INSERT INTO {} (version) VALUES (%s)").format(Identifier(SAQ_VERSIONS)), (migrations[-1][0],)
    )


#: Drops every function and type of the functions' files (the schema's tables stay).
_DROP_FUNCTIONS = """
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p WHERE p.pronamespace = current_schema()::regnamespace LOOP
        EXECUTE 'DROP FUNCTION ' || f || ' CASCADE';
    END LOOP;
    DROP TYPE IF EXISTS ctx CASCADE;
    DROP TYPE IF EXISTS moved CASCADE;
    DROP TYPE IF EXISTS event CASCADE;
    DROP TYPE IF EXISTS snapshot CASCADE;
    DROP TYPE IF EXISTS room CASCADE;
END $$;
"""

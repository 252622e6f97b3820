"""Migrated PostgreSQL schemas that the tests of a process take in turn (`postgres_schema`).

A migration (the tables, their indexes, SAQ's tables and every function) costs the server
about a tenth of a second of CPU, more than most PostgreSQL tests spend on their own work.
So a test gets a schema migrated earlier, emptied since its last test to what a fresh
migration leaves: every row deleted (but the version tables'), every sequence started
again, and the rows a migration inserts (the one row of ``totals``) copied back from a
schema that no test uses. (DELETE, not TRUNCATE: a test leaves a few rows, and TRUNCATE
gives every table and index a new file, which costs half a migration.) A schema that
something still holds when its test ends (a connection left open, a lock) is not taken
again; the next test gets a new one.

    pool = SchemaPool(url)
    with pool.schema() as name:      # POSTGRES_SCHEMA for the test
        ...
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from async_tasks.backends.postgres.schema import SAQ_VERSIONS, migrate

if TYPE_CHECKING:
    import psycopg
    from psycopg.sql import Composed

#: Tables a migration fills once and the tests never change.
VERSION_TABLES = ("schema_version", SAQ_VERSIONS)


class SchemaPool:
    """Schemas in the cluster at `url`, migrated once and emptied between tests."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._free: list[str] = []
        self._admin: psycopg.Connection[Any] | None = None
        #: How to empty a schema: (the untouched schema, tables, sequences, tables with rows).
        self._plan: tuple[str, list[str], list[str], list[str]] | None = None

    @contextmanager
    def schema(self) -> Iterator[str]:
        """A migrated, empty schema of the caller's own until the block ends."""
        name = self._free.pop() if self._free else self._migrated()
        yield name
        if self._emptied(name):
            self._free.append(name)

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def _migrated(self) -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        # `migrate` is a coroutine; it runs in a thread of its own, away from any event
        # loop of this thread (a module's async fixtures keep one between tests).
        with ThreadPoolExecutor(max_workers=1) as thread:
            thread.submit(asyncio.run, migrate(self.url, name, 5000)).result()
        return name

    def _connection(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.url, autocommit=True)
        return self._admin

    def _emptying(self, name: str) -> Composed:
        """The statements that empty schema `name`; what to do is read once from a schema
        migrated for that and never handed out."""
        from psycopg.sql import SQL, Identifier

        if self._plan is None:
            pristine = self._migrated()
            admin = self._connection()
            tables = admin.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s AND tablename <> ALL(%s) ORDER BY 1",
                (pristine, list(VERSION_TABLES)),
            ).fetchall()
            sequences = admin.execute(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = %s ORDER BY 1", (pristine,)
            ).fetchall()
            seeded = [
                table
                for (table,) in tables
                if admin.execute(SQL("SELECT 1 FROM {}").format(Identifier(pristine, table))).fetchone()
            ]
            self._plan = (pristine, [t for (t,) in tables], [s for (s,) in sequences], seeded)
        pristine, tables, sequences, seeded = self._plan
        delete = [SQL("DELETE FROM {}").format(Identifier(name, t)) for t in tables]
        restart = [SQL("ALTER SEQUENCE {} RESTART").format(Identifier(name, s)) for s in sequences]
        copy = [
            SQL("INSERT INTO {} SELECT * FROM {}").format(Identifier(name, t), Identifier(pristine, t)) for t in seeded
        ]
        return SQL("; ").join([*delete, *restart, *copy])

    def _emptied(self, name: str) -> bool:
        """Whether `name` is now as a fresh migration leaves it (False: leave it be)."""
        import psycopg

        try:
            admin = self._connection()
            with admin.transaction():
                # Not waiting long for a lock that something left behind holds.
                admin.execute("SET LOCAL lock_timeout = '2s'")
                admin.execute(self._emptying(name))
        except psycopg.Error:
            self.close()
            return False
        return True

"""Connections to PostgreSQL: the pool every part sends its calls through, what counts as
PostgreSQL trouble, one log line when it goes away and one when it is back, and the
listening connection that LISTEN/NOTIFY needs.

- `Database`: a psycopg pool on the deployment's schema (``search_path``), opened at first
  use and closed by `aclose` (the same object can serve one event loop after another).
  `call` runs one statement in autocommit, within POSTGRES_TIMEOUT_MS (a hung or gone
  server answers 503, never holds a request), and sends it again on a new connection when
  the connection broke under it: every change function is safe to run twice (a re-sent
  write finds its operation id and answers "done"). A `patient` database (the worker's)
  tries for half a minute, waiting out a restart.
- `Listener`: one dedicated connection that LISTENs on fixed channels and hands each
  notification to a callback; it reconnects by itself, LISTENs again and says so
  (`on_reconnect`: what was sent meanwhile is lost, as with any pub/sub).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc

from async_tasks.errors import SettingsError, StoreUnavailable

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger("async_tasks.backend")

#: SQLSTATE classes and codes that mean "not now": a connection problem (08), the server
#: shutting down or starting (57P0x), out of resources (53), a hot standby or a demoted
#: primary refusing writes (25006), a conflict that a second run resolves (40001, 40P01).
TRANSIENT_STATES = ("08", "57P01", "57P02", "57P03", "57P05", "53", "25006", "40001", "40P01")

#: How many times a call is sent when its connection keeps breaking under it (each time on
#: another connection, at once: a lost reply, a reset, a restarted server).
BROKEN_TRIES = 5
#: Seconds between attempts of a `patient` call, and how long it keeps trying.
PATIENT_DELAY = 0.2
PATIENT_FOR = 30.0


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is PostgreSQL being away or refusing work for now (not our bug)."""
    from psycopg import OperationalError
    from psycopg import errors as pg_errors
    from psycopg_pool import PoolTimeout, TooManyRequests

    if isinstance(exc, (TimeoutError, ConnectionError, PoolTimeout, TooManyRequests)):
        return True
    state: str | None = getattr(exc, "sqlstate", None)
    if state:
        return state.startswith(TRANSIENT_STATES)
    # No SQLSTATE: a connection that failed or broke (the server never answered).
    return isinstance(exc, (OperationalError, pg_errors.InterfaceError))


def broken(exc: BaseException) -> bool:
    """Whether the call may be sent again at once on another connection: its connection
    broke (a lost reply among them) or the server asked to try again."""
    from psycopg import OperationalError

    state = getattr(exc, "sqlstate", None)
    if state in ("40001", "40P01"):
        return True
    return isinstance(exc, OperationalError) and (not state or state.startswith(("08", "57P01", "57P02")))


class Availability:
    """Says once, in one line, when PostgreSQL becomes unreachable, and once when it is back."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down_since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            logger.warning("%s cannot reach PostgreSQL (%s); retrying", self.what, describe(exc))

    def succeeded(self) -> None:
        if self.down_since is not None:
            seconds = time.monotonic() - self.down_since
            self.down_since = None
            logger.info("%s reaches PostgreSQL again (after %.1f s)", self.what, seconds)


def describe(exc: BaseException) -> str:
    """An error in one line (psycopg's messages can span several)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@contextmanager
def reachable(availability: Availability | None = None) -> Iterator[None]:
    """Turn PostgreSQL trouble into `StoreUnavailable` (503 with Retry-After at the HTTP edge)."""
    try:
        yield
    except Exception as exc:
        if not is_transient(exc):
            raise
        if availability is not None:
            availability.failed(exc)
        raise StoreUnavailable(f"The task store (PostgreSQL) is unavailable: {describe(exc)}") from exc
    if availability is not None and availability.down_since is not None:
        availability.succeeded()


def connection_kwargs(schema: str, timeout_ms: int) -> dict[str, Any]:
    """What every connection of the deployment is opened with."""
    return {
        "autocommit": True,
        "options": f"-c search_path={schema}",
        # libpq counts whole seconds, at least 2.
        "connect_timeout": max(2, round(timeout_ms / 1000)),
        "application_name": "async-tasks",
    }


class Database:
    """A pool of connections to the deployment's schema. See the module docstring."""

    def __init__(
        self,
        url: str,
        schema: str,
        timeout_ms: int,
        *,
        availability: Availability | None = None,
        max_size: int = 10,
        patient: bool = False,
    ) -> None:
        self.url = url
        self.schema = schema
        self.timeout = timeout_ms / 1000
        self.kwargs = connection_kwargs(schema, timeout_ms)
        self.max_size = max_size
        self.patient = patient
        self.availability = availability or Availability("The task store")
        self._pool: AsyncConnectionPool[Any] | None = None

    def sibling(self, *, patient: bool, availability: Availability | None = None) -> Database:
        """The same database through a pool of its own."""
        return Database(
            self.url,
            self.schema,
            round(self.timeout * 1000),
            availability=availability or self.availability,
            max_size=self.max_size,
            patient=patient,
        )

    async def pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            from psycopg_pool import AsyncConnectionPool

            pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                self.url,
                kwargs=self.kwargs,
                min_size=1,
                max_size=self.max_size,
                open=False,
                timeout=self.timeout,
                name=f"async-tasks {self.schema}",
            )
            try:
                # Waiting for the first connection: a pool still connecting in the
                # background would slow the first calls down.
                await pool.open(wait=True, timeout=self.timeout)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await pool.close(timeout=0.5)
                raise
            self._pool = pool
        return self._pool

    async def aclose(self) -> None:
        """Close the pool; the next call opens a new one."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close(timeout=1)
            except Exception as exc:
                logger.debug("Closing the PostgreSQL pool failed: %s", exc)

    async def call(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement and return the first column of its first row (None without
        one). PostgreSQL trouble is `StoreUnavailable`, within the timeout."""
        with reachable(self.availability):
            return await self._call(sql, params, one=True)

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows."""
        with reachable(self.availability):
            result: list[tuple[Any, ...]] = await self._call(sql, params, one=False)
            return result

    async def _call(self, sql: str, params: Sequence[Any], *, one: bool) -> Any:
        give_up = time.monotonic() + (PATIENT_FOR if self.patient else self.timeout)
        tries = 0
        while True:
            tries += 1
            try:
                with anyio.fail_after(self.timeout):
                    pool = await self.pool()
                    async with pool.connection() as conn:
                        cursor = await conn.execute(sql, params)
                        if cursor.description is None:
                            return None if one else []
                        if one:
                            row = await cursor.fetchone()
                            return None if row is None else row[0]
                        return await cursor.fetchall()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                again = broken(exc) and tries < BROKEN_TRIES
                if self.patient and time.monotonic() < give_up:
                    again = True
                if not again:
                    raise
                if self.patient:
                    self.availability.failed(exc)
                    if not broken(exc):
                        await anyio.sleep(PATIENT_DELAY)


class Listener:
    """One connection LISTENing on `channels`; `handle(channel, payload)` for each
    notification. `run` serves until cancelled, reconnecting when the connection breaks
    (after which `on_reconnect` is called: notifications sent meanwhile are lost)."""

    def __init__(
        self,
        url: str,
        schema: str,
        channels: Sequence[str],
        handle: Callable[[str, str], None],
        *,
        availability: Availability,
        timeout_ms: int = 2000,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.kwargs = connection_kwargs(schema, timeout_ms)
        self.channels = list(channels)
        self.handle = handle
        self.availability = availability
        self.on_reconnect = on_reconnect
        #: Set once the channels are listened to (again after each reconnect).
        self.listening = anyio.Event()
        self._connection: AsyncConnection[Any] | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        from psycopg import AsyncConnection
        from psycopg.sql import SQL, Identifier

        started = False
        first = True
        while True:
            try:
                connection = await AsyncConnection.connect(self.url, **self.kwargs)
                async with connection:
                    self._connection = connection
                    for channel in self.channels:
                        await connection.execute(SQL("LISTEN {}").format(Identifier(channel)))
                    self.availability.succeeded()
                    self.listening.set()
                    if not first and self.on_reconnect is not None:
                        self.on_reconnect()
                    first = False
                    if not started:
                        started = True
                        task_status.started()
                    async for notify in connection.notifies():
                        self.handle(notify.channel, notify.payload)
            except Exception as exc:
                if not is_transient(exc):
                    logger.exception("Listening to PostgreSQL failed; listening again")
                self.availability.failed(exc)
            finally:
                self._connection = None
                self.listening = anyio.Event()
            if not started:
                started = True
                task_status.started()  # the caller goes on; notifications come once it connects
            await anyio.sleep(0.5)


def check(url: str, timeout: float = 2.0) -> None:
    """Raise `SettingsError` with one line when PostgreSQL at `url` does not answer."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=max(2, round(timeout)), autocommit=True) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        raise SettingsError(f"Cannot reach PostgreSQL at {redact(url)} (TASK_BACKEND): {describe(exc)}") from None


def redact(url: str) -> str:
    """`url` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))

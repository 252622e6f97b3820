"""Connections to Redis: the clients each part uses, what counts as Redis trouble, and
one log line when Redis goes away and one when it is back.

Three kinds of client, because their commands differ:
- `request_client`: what API requests and worker writes send. Every command has a
  timeout (REDIS_TIMEOUT_MS), so a hung Redis answers 503 within about that time; a
  dropped connection is retried (redis-py re-sends the command: every script is safe to
  run twice). `patient` clients (the worker's) also retry timeouts and wait out a restart.
- `blocking_client`: SAQ's dequeue (BLMOVE with no timeout) must never meet a socket
  timeout (redis-py 8 defaults to 5 s, which breaks it: redis/redis-py#2807).
- `pubsub_client`: subscriptions wait for messages as long as it takes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from async_tasks.errors import SettingsError, StoreUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("async_tasks.backend")

#: Error replies that mean "not now" (out of memory, busy with a script, a replica or a
#: demoted primary, loading its data, a failover under way): the request may be retried.
TRANSIENT_REPLIES = ("OOM", "BUSY", "READONLY", "MASTERDOWN", "LOADING", "TRYAGAIN", "NOREPLICAS", "MISCONF")


def _client(url: str, *, socket_timeout: float | None, retries: int, errors: tuple[type[RedisError], ...]) -> Redis:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.driver_info import DriverInfo

    return Redis.from_url(
        url,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries, supported_errors=errors),
        socket_connect_timeout=2,
        socket_timeout=socket_timeout,
        # By default redis-py 7 reads its own package metadata for every new connection
        # (8 ms here) and sends CLIENT SETINFO twice on each connect.
        driver_info=DriverInfo(name=None, lib_version=None),
    )


def request_client(url: str, timeout_ms: int, *, patient: bool = False) -> Redis:
    """A client whose commands time out after `timeout_ms`. A lost connection is retried
    (twice; `patient`: for half a minute, timeouts included, waiting out a restart)."""
    if patient:
        return _client(url, socket_timeout=timeout_ms / 1000, retries=30, errors=(RedisConnectionError,
                                                                                  RedisTimeoutError))  # fmt: skip
    return _client(url, socket_timeout=timeout_ms / 1000, retries=2, errors=(RedisConnectionError,))


def blocking_client(url: str) -> Redis:
    """A client for blocking commands (SAQ's dequeue): no socket timeout."""
    return _client(url, socket_timeout=None, retries=30, errors=(RedisConnectionError, RedisTimeoutError))


def pubsub_client(url: str) -> Redis:
    """A client for subscriptions: no socket timeout, a few reconnects."""
    return _client(url, socket_timeout=None, retries=3, errors=(RedisConnectionError,))


#: What redis-py raises for such replies (it strips the reply's first word from its message).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # BusyLoadingError (LOADING) too
    RedisTimeoutError,
    ConnectionError,
    TimeoutError,
    ReadOnlyError,
    OutOfMemoryError,
    MasterDownError,
    TryAgainError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` is Redis being away or refusing work for now (not our bug)."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(TRANSIENT_REPLIES)


class Availability:
    """Says once, in one line, when Redis becomes unreachable, and once when it is back."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down_since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            detail = str(exc).strip() or type(exc).__name__
            logger.warning("%s cannot reach Redis (%s); retrying", self.what, detail)

    def succeeded(self) -> None:
        if self.down_since is not None:
            seconds = time.monotonic() - self.down_since
            self.down_since = None
            logger.info("%s reaches Redis again (after %.1f s)", self.what, seconds)


@contextmanager
def reachable(availability: Availability | None = None) -> Iterator[None]:
    """Turn Redis trouble into `StoreUnavailable` (503 with Retry-After at the HTTP edge)."""
    try:
        yield
    except Exception as exc:
        if not is_transient(exc):
            raise
        if availability is not None:
            availability.failed(exc)
        detail = str(exc).strip() or type(exc).__name__
        raise StoreUnavailable(f"The task store (Redis) is unavailable: {detail}") from exc
    if availability is not None and availability.down_since is not None:
        availability.succeeded()


def check(url: str, timeout: float = 2.0) -> None:
    """Raise `SettingsError` with one line when Redis at `url` does not answer a PING."""
    from redis import Redis as SyncRedis

    client = SyncRedis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    except Exception as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise SettingsError(f"Cannot reach Redis at {redact(url)} (TASK_BACKEND): {detail}") from None
    finally:
        client.close()


def redact(url: str) -> str:
    """`url` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))

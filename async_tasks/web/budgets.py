"""`ClientBudgets`: what one client (an address) may start through the web door.

A session and a stream ticket are free to make, so each client draws them from a
budget of its own (`async_tasks.clients`): NEW_SESSIONS_PER_CLIENT_PER_MINUTE new
sessions, and as many stream tickets a minute as it may hold streams
(MAX_STREAMS_PER_CLIENT). A ticket opens one stream: its nonce is spent once. The
buckets are the task store's (`TaskStore.take_token`), so every API process of a
shared backend draws from the same ones; the engine holds them without knowing what
they are for.
"""

from __future__ import annotations

from async_tasks.errors import RateLimited
from async_tasks.settings import Settings
from async_tasks.store.base import TaskStore


class ClientBudgets:
    """Draws new sessions and stream tickets from a client's budgets; spends tickets."""

    def __init__(self, store: TaskStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    async def admit_new_session(self, client: str) -> None:
        """Draw a new session from `client`'s budget (NEW_SESSIONS_PER_CLIENT_PER_MINUTE,
        held in the task store: across API processes too); `RateLimited` when spent."""
        per_minute = self.settings.new_sessions_per_client_per_minute
        if per_minute <= 0:
            return
        wait = await self.store.take_token(f"new-sessions:{client}", per_minute / 60, per_minute)
        if wait > 0:
            raise RateLimited(
                f"Your address started {per_minute} new sessions in the last minute (the limit, "
                f"NEW_SESSIONS_PER_CLIENT_PER_MINUTE). Keep using the session you have (send its X-Session-Token), "
                f"or retry in {wait:.1f} s.",
                retry_after=wait,
                details={"perMinute": per_minute, "setting": "NEW_SESSIONS_PER_CLIENT_PER_MINUTE"},
            )

    async def admit_ticket(self, client: str) -> None:
        """Draw a stream ticket from `client`'s budget: as many a minute as it may hold streams
        (MAX_STREAMS_PER_CLIENT; each ticket is remembered once spent, so tickets must not be
        free); `RateLimited` when spent."""
        per_minute = self.settings.max_streams_per_client
        wait = await self.store.take_token(f"tickets:{client}", per_minute / 60, per_minute)
        if wait > 0:
            raise RateLimited(
                f"Your address asked for {per_minute} stream tickets in the last minute (as many as it may hold "
                f"streams, MAX_STREAMS_PER_CLIENT). Retry in {wait:.1f} s.",
                retry_after=wait,
                details={"perMinute": per_minute, "setting": "MAX_STREAMS_PER_CLIENT"},
            )

    async def spend_ticket(self, nonce: str) -> bool:
        """True the first time the stream ticket with `nonce` is spent (a ticket opens one
        stream). The task store remembers it until the ticket would have expired anyway."""
        ttl = self.settings.stream_ticket_ttl
        return await self.store.take_token(f"ticket:{nonce}", 1 / ttl, 1) == 0

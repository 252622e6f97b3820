"""``POST /session/ticket``: a short-lived stand-in for the session, for push streams.

``EventSource`` and browser WebSockets cannot send headers, so a page using a token
session (``X-Session-Token``) or an API key cannot authenticate them. It asks for a
ticket and opens ``/tasks/events?ticket=…`` (or ``/ws?ticket=…``): the ticket stands
for the caller's session (and key) for STREAM_TICKET_TTL seconds, and only on the
stream routes, so the long-lived token never goes in a URL or a log. A ticket opens
one stream (ask for another to reconnect); one address may ask for as many a minute as
it may hold streams (MAX_STREAMS_PER_CLIENT).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.di import NamedDependency

from async_tasks.web.api.schemas import Response
from async_tasks.web.budgets import ClientBudgets
from async_tasks.web.errors import responses
from async_tasks.web.middleware import client_of, resolver_of


class TicketResponse(Response, kw_only=True):
    #: Put it in the stream URL as ``?ticket=``: it opens one stream.
    ticket: str
    #: Seconds it can be used to open a stream (STREAM_TICKET_TTL).
    expires_in: int


@post(
    "/session/ticket",
    tags=["sessions"],
    status_code=201,
    summary="A short-lived ticket to open a push stream (EventSource, WebSocket) without headers",
    responses=responses(401, 403, 429),
)
async def stream_ticket(
    request: Request[Any, Any, Any], client_budgets: NamedDependency[ClientBudgets], session_key: NamedDependency[str]
) -> TicketResponse:
    await client_budgets.admit_ticket(client_of(request.scope))
    resolver = resolver_of(request.scope)
    return TicketResponse(ticket=resolver.ticket_for(session_key), expires_in=resolver.settings.stream_ticket_ttl)

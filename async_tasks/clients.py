"""A client is an address, not a session.

Sessions are free to make (a token is a signature, an IP session needs no request),
so budgets that only count per session let one caller open as many as it likes. The
budgets that keep one caller from shutting the others out count per *client*: the
address a request comes from (`client_address`):

* an IPv4 address as it is; an IPv6 address by its /64 network (what one home, phone
  or cloud machine is given: its privacy addresses rotate inside it);
* the forwarded client address only when the proxy is trusted (TRUST_PROXY_HEADERS and
  FORWARDED_ALLOW_IPS: `async_tasks.web.security`); otherwise the peer, like any other
  request, whatever the headers say;
* `FORWARDED_PEER` when the server in front of the app already replaced the peer with a
  forwarded address the app does not trust (plain ``uvicorn`` does that for requests
  from loopback): the real peer is unknown, so every such request is one client, as
  everyone behind one proxy is;
* `LOCAL_PEER` when the server gives no address at all (a Unix socket).

A client's budgets (settings ``MAX_SESSIONS_PER_CLIENT``, ``MAX_TASKS_PER_CLIENT``,
``MAX_STREAMS_PER_CLIENT``, ``NEW_SESSIONS_PER_CLIENT_PER_MINUTE``) are sized so that a
whole room behind one NAT address is served; beyond them, and whenever a shared pool
(MAX_TASKS, MAX_SESSIONS, MAX_STREAMS) is full, the store and the push streams make
room from the largest holder rather than refuse a newcomer (`fair_victims`).

The web door hands the engine a keyed hash of the address
(`async_tasks.web.sessions.SessionResolver.client_key`), an opaque key it stores and
counts by, never the address itself. The engine used without HTTP has no addresses:
each session is then its own client.
"""

from __future__ import annotations

import heapq
import ipaddress
from collections.abc import Callable, Iterable
from typing import Final, TypeVar

#: The client of a request whose peer the server in front of the app replaced with a
#: forwarded address the app does not trust (see the module docstring).
FORWARDED_PEER: Final = "forwarded-peer"
#: The client of a request that came with no address (a Unix socket).
LOCAL_PEER: Final = "local-peer"
#: The longest peer name kept as it is (servers may report a name rather than an address).
_MAX_NAME = 64

H = TypeVar("H")


def client_address(host: str | None) -> str:
    """The address `host` counts as: IPv4 as is, IPv6 as its /64, an IPv4-mapped IPv6
    address as the IPv4 one; `LOCAL_PEER` for None; anything else (a test client's name)
    as it is."""
    if not host:
        return LOCAL_PEER
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host[:_MAX_NAME]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def fair_victims(holders: Iterable[H], held: Callable[[H], int], mine: int, *, most: int = 8) -> list[H]:
    """The holders a full pool may take from to let in one more item of a client holding
    `mine`: those holding more than ``mine + 1`` (after the move the newcomer still holds
    no more than they do), the largest first, at most `most` of them.

    Taking only from a larger holder is what makes the shares fair without a fixed
    quota: a client can keep its items while it holds no more than anyone who asks, and
    two clients asking in turn settle on equal shares instead of taking from each other
    forever."""
    return heapq.nlargest(most, (holder for holder in holders if held(holder) > mine + 1), key=held)

"""`ServerAddresses`: where the server running the web door accepts connections.

The server adds the address it binds at start-up (`async_tasks.server`), and the
boundary middleware each local address a request arrives on (ASGI ``scope["server"]``,
`async_tasks.web.security`), so it is right under ``async-tasks serve``, plain uvicorn
or any other server. The plugin hands it to the executors that make outbound requests
(`async_tasks.executor.CallsOut`), which refuse these (and loopback on these ports): a
task must never call the server that runs it, with the server's own network position.
"""

from __future__ import annotations


class ServerAddresses:
    """(host, port) pairs the server is bound to or was reached on."""

    __slots__ = ("hosts", "ports", "seen")

    def __init__(self) -> None:
        #: Host strings as bound or seen (``0.0.0.0`` / ``::`` mean every local address).
        self.hosts: set[str] = set()
        self.ports: set[int] = set()
        self.seen: set[tuple[str, int]] = set()

    def add(self, host: str, port: int | None) -> None:
        if port is None or not host:
            return  # a Unix socket: nothing to call over TCP
        self.seen.add((host, port))
        self.hosts.add(host.strip("[]").lower())
        self.ports.add(int(port))

"""A loopback TCP proxy in front of a real PostgreSQL that loses the reply to chosen
statements after the server ran (and, in autocommit, committed) them.

    with PostgresFaultProxy(postgres_url) as proxy:
        rule = proxy.lose_reply("op_create(")     # a fragment of the statement's text
        ...                        # the create runs and commits; its connection is closed
        rule.wait()                # before the reply reaches the client, which sends it again

Each connection is read as PostgreSQL's wire protocol in both directions: the start-up
(an SSL or GSS request answered by one byte, then the start-up message), then typed
messages. A statement is known by its text: from a simple query (``Q``), or from the
``Parse`` that named it and the ``Bind`` that runs it (psycopg prepares statements it runs
often, then sends only ``Bind``). When a rule takes a statement, everything the server
answers until its ``ReadyForQuery`` (the statement done, committed) is read and thrown away,
and both connections are closed: the client sees its connection break, as after a reset
or a failover, not knowing whether the statement ran.

The proxy runs in a thread of its own with its own event loop; the rules are
`tests.faults.rules.Rule` (a statement's text is the one "command" a rule matches).
"""

from __future__ import annotations

import asyncio
import struct
import threading
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from tests.faults.rules import Rule

#: Start-up requests answered by one byte (SSL, GSS encryption), and a cancel request.
_ONE_BYTE_ANSWERS = {80877103, 80877104}
_CANCEL = 80877102


def statement(fragment: str) -> object:
    """A rule's match: statements whose text contains `fragment`."""
    wanted = fragment.encode()
    return lambda sent: wanted in sent[0]


class PostgresFaultProxy:
    """A fault-injecting proxy on a free loopback port in front of the server of `upstream`
    (a ``postgresql://`` URL). A context manager; or `start` and `close`."""

    def __init__(self, upstream: str) -> None:
        self.upstream_url = upstream
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.port = 0
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self._failures: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The upstream's URL, through the proxy."""
        parts = urlsplit(self.upstream_url)
        user = f"{parts.username}@" if parts.username else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    def lose_reply(self, fragment: str, times: int | None = 1) -> Rule:
        """The next `times` statements whose text contains `fragment` run; their reply is
        thrown away and the connection closed."""
        return self._add(Rule(statement(fragment), times=times))  # type: ignore[arg-type]

    def lose_reply_randomly(self, probability: float, fragment: str = "op_", seed: int = 0) -> Rule:
        """A storm: each reply to a statement containing `fragment` is lost with `probability`."""
        return self._add(Rule(statement(fragment), times=None, probability=probability, seed=seed))  # type: ignore[arg-type]

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def _claim(self, text: bytes) -> Rule | None:
        with self._lock:
            rules = list(self._rules)
        for rule in rules:
            if rule.claim([[text]]):
                return rule
        return None

    # Life cycle

    def start(self) -> PostgresFaultProxy:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._serve(ready))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="postgres-fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start listening within 10 s")
        return self

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            thread.join(10)
        if self._failures:
            raise RuntimeError("the proxy failed") from self._failures[0]

    def __enter__(self) -> PostgresFaultProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # In the proxy's thread

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        self._links: set[asyncio.Task[None]] = set()
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stop.wait()
            for task in list(self._links):
                task.cancel()
            await asyncio.gather(*self._links, return_exceptions=True)

    def _accept(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._link(client_in, client_out))
        self._links.add(task)
        task.add_done_callback(self._links.discard)

    async def _link(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        try:
            server_in, server_out = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_out.close()
            return
        link = _Link(self, client_in, client_out, server_in, server_out)
        try:
            await link.run()
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception as exc:  # a bug of the proxy: the test must not pass on it
            self._failures.append(exc)
        finally:
            link.close()


class _Link:
    """One client connection and its server connection."""

    def __init__(
        self,
        proxy: PostgresFaultProxy,
        client_in: asyncio.StreamReader,
        client_out: asyncio.StreamWriter,
        server_in: asyncio.StreamReader,
        server_out: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.client_in, self.client_out = client_in, client_out
        self.server_in, self.server_out = server_in, server_out
        self.statements: dict[bytes, bytes] = {}
        #: The rule whose statement's reply is being thrown away (None: replies pass).
        self.losing: Rule | None = None
        self.done = asyncio.Event()

    async def run(self) -> None:
        if not await self._start_up():
            return
        pumps = [asyncio.create_task(self._from_client()), asyncio.create_task(self._from_server())]
        stop = asyncio.create_task(self.done.wait())
        try:
            await asyncio.wait([*pumps, stop], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*pumps, stop):
                task.cancel()
            await asyncio.gather(*pumps, stop, return_exceptions=True)

    async def _start_up(self) -> bool:
        while True:
            head = await self.client_in.readexactly(8)
            length, code = struct.unpack("!ii", head)
            rest = await self.client_in.readexactly(length - 8)
            self.server_out.write(head + rest)
            await self.server_out.drain()
            if code == _CANCEL:
                return False
            if code not in _ONE_BYTE_ANSWERS:
                return True
            answer = await self.server_in.readexactly(1)
            self.client_out.write(answer)
            await self.client_out.drain()

    async def _from_client(self) -> None:
        while True:
            kind, body = await _message(self.client_in)
            text: bytes | None = None
            if kind == b"Q":
                text = body.rstrip(b"\0")
            elif kind == b"P":
                name, _, rest = body.partition(b"\0")
                text = rest.partition(b"\0")[0]
                self.statements[name] = text
            elif kind == b"B":
                _portal, _, rest = body.partition(b"\0")
                text = self.statements.get(rest.partition(b"\0")[0])
            if text is not None and self.losing is None:
                self.losing = self.proxy._claim(text)
            self.server_out.write(kind + struct.pack("!i", len(body) + 4) + body)
            await self.server_out.drain()

    async def _from_server(self) -> None:
        while True:
            kind, body = await _message(self.server_in)
            if self.losing is not None:
                if kind == b"Z":  # the statement is done (committed): the reply goes nowhere
                    rule, self.losing = self.losing, None
                    rule.record()  # before the client can see the connection close
                    self.close()
                    self.done.set()
                    return
                continue
            self.client_out.write(kind + struct.pack("!i", len(body) + 4) + body)
            await self.client_out.drain()

    def close(self) -> None:
        for writer in (self.client_out, self.server_out):
            if not writer.is_closing():
                writer.close()


async def _message(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    (length,) = struct.unpack("!i", head[1:])
    return head[:1], await reader.readexactly(length - 4)

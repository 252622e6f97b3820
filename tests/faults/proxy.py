"""A loopback TCP proxy in front of a real redis-server that makes the faults clients
meet in production: a reply lost after Redis ran the command, a hung Redis, connections
reset.

    with RedisFaultProxy(redis_url) as proxy:
        client = Redis.from_url(proxy.url, retry=Retry(NoBackoff(), 3))
        rule = proxy.lose_reply(script(CREATE_LUA))
        ...                       # the create runs, its reply is lost, redis-py re-sends it
        rule.wait()               # or `await rule.wait_async()`; never a sleep

The proxy runs in a thread of its own with its own event loop, so a test in any event
loop (or none) drives it through plain method calls, and other processes use it by its
port: a real-process test starts API servers and workers with ``TASK_BACKEND`` set to
`proxy.url` and keeps the proxy (and its controls) in the test process; no control
channel is needed. For runs outside pytest, ``python -m tests.faults.proxy`` serves the
same proxy and takes control lines on its standard input (see `main`).

Both directions are cut into RESP messages (`tests.faults.resp`) so that each reply is
matched with the command it answers, pipelines included; a reply to a command queued in
MULTI is only ``QUEUED``, so a fault on such a command applies to the transaction's EXEC
reply, when the command has run. A connection that subscribes (or MONITORs, or turns
CLIENT REPLY off) no longer gets one reply per command: from there on its replies pass
through untouched (counted, never lost). RESP3 pushes answer no command and pass
through.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable
from types import FrameType, TracebackType
from urllib.parse import urlsplit

from tests.faults.commands import Match, any_script, command, name
from tests.faults.resp import read_command, read_reply
from tests.faults.rules import Rule

#: Commands after which a connection's replies are no longer one per command.
_STREAMS = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE", b"MONITOR"})
_CHUNK = 262144


class ProxyError(Exception):
    """The proxy itself failed (a bug in it, or a rule's match raised): raised by `close`,
    so a fault test cannot pass on a proxy that stopped injecting its faults."""


class RedisFaultProxy:
    """A fault-injecting proxy on `host`:`port` (a free port by default) in front of
    `upstream` (``HOST:PORT`` or a ``redis://`` URL). A context manager; or `start` and
    `close`."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream, self._db = _address(upstream)
        self.host = host
        self.port = port
        self._rules: list[Rule] = []
        self._commands: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._counted = threading.Condition(self._lock)
        # Changed only in the proxy's thread:
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stalled = False
        self._failures: list[BaseException] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The URL clients use to go through the proxy (the upstream's database number kept)."""
        return f"redis://{self.host}:{self.port}/{self._db}"

    # Faults

    def lose_reply(self, match: Match, times: int | None = 1) -> Rule:
        """The next `times` commands `match` accepts (None: every one) reach Redis and run;
        their reply is read and thrown away and the client's connection closed (what a
        failover, a proxy or a reset connection does). redis-py then reconnects and
        re-sends. A NOSCRIPT error is never lost: the script did not run."""
        return self.add(Rule(match, times=times))

    def lose_reply_randomly(
        self, probability: float, match: Match = any_script, seed: int = 0, times: int | None = None
    ) -> Rule:
        """A storm: each reply to a command `match` accepts (by default any script) is lost
        with `probability`, drawn from a generator seeded with `seed`; with no limit by
        default."""
        return self.add(Rule(match, times=times, probability=probability, seed=seed))

    def add(self, rule: Rule) -> Rule:
        """Apply `rule` (after the rules added before it) and give it back."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        """Cancel every rule."""
        with self._lock:
            rules, self._rules = self._rules, []
        for rule in rules:
            rule.cancel()

    def stall(self) -> None:
        """Hang, as a Redis that stopped answering looks from the clients: connections are
        accepted and read, nothing is forwarded either way until `resume`. What a
        connection closed meanwhile had sent is never forwarded (unlike a SIGSTOPped
        redis-server, which runs it when it wakes up: `RedisProcess.pause`)."""
        self._call(self._set_stalled)

    def resume(self) -> None:
        """Forward what was held since `stall`, and everything after."""
        self._call(self._flush)

    def drop_connections(self) -> None:
        """Close every client connection (and its upstream connection) now."""
        self._call(self._drop)

    # What went through

    @property
    def commands(self) -> Counter[str]:
        """Commands received from clients by name in capitals (``SET``, ``EVALSHA``,
        ``CLIENT``), re-sent ones and redis-py's connection set-up included."""
        with self._lock:
            return self._commands.copy()

    def reset_commands(self) -> None:
        with self._lock:
            self._commands.clear()

    def wait_for_commands(self, name: str, total: int = 1, timeout: float = 10) -> None:
        """Block until `total` commands `name` have been received in all (since the last
        `reset_commands`); `TimeoutError` after `timeout` s. E.g. to know that a request
        reached Redis, or is held by a stall."""
        key = name.upper()
        with self._counted:
            if not self._counted.wait_for(lambda: self._commands[key] >= total, timeout):
                raise TimeoutError(f"{self._commands[key]} of {total} {key} commands within {timeout} s")

    @property
    def connections(self) -> int:
        """Client connections open right now."""
        return sum(not link.closed for link in list(self._links))

    # Life cycle

    def start(self) -> RedisFaultProxy:
        """Listen (in a thread of the proxy's own) and return once clients can connect."""
        if self._thread is not None:
            raise RuntimeError("the proxy is already running")
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self._serve(ready, errors))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="redis-fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the proxy did not start listening within 10 s")
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        return self

    def close(self) -> None:
        """Close every connection and stop listening; raise `ProxyError` if the proxy
        failed meanwhile."""
        thread, self._thread = self._thread, None
        if thread is not None and self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            thread.join(10)
        if self._failures:
            raise ProxyError(f"the proxy failed {len(self._failures)} times; the first") from self._failures[0]

    def __enter__(self) -> RedisFaultProxy:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # In the proxy's thread

    async def _serve(self, ready: threading.Event, errors: list[BaseException]) -> None:
        self._stop = asyncio.Event()
        try:
            server = await asyncio.start_server(self._accept, self.host, self.port)
        except OSError as exc:
            errors.append(exc)
            ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stop.wait()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        # A task of our own rather than asyncio's for the callback: Python 3.11's logs an
        # error when such a task is cancelled (as `close` does to connects in progress).
        task = asyncio.get_running_loop().create_task(self._handle(client_reader, client_writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5)
        except (OSError, TimeoutError):
            client_writer.close()  # Redis is down: the client sees its connection closed
            return
        link = _Link(self, (client_reader, client_writer), upstream)
        self._links.add(link)
        try:
            await link.run()
        except Exception as exc:  # a bug of the proxy or a raising match: reported by close()
            self._failures.append(exc)
        finally:
            self._links.discard(link)

    def _call(self, action: Callable[[], None]) -> None:
        """Run `action` in the proxy's thread and return once it is done."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("the proxy is not running: start() it or use it as a context manager")

        async def run() -> None:
            action()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _set_stalled(self) -> None:
        self._stalled = True

    def _flush(self) -> None:
        self._stalled = False
        for link in self._links:
            link.flush()

    def _drop(self) -> None:
        for link in list(self._links):
            link.close()

    def _count(self, sent: list[bytes]) -> None:
        with self._lock:
            self._commands[name(sent)] += 1
            self._counted.notify_all()

    def _claim(self, answered: list[list[bytes]]) -> Rule | None:
        with self._lock:
            rules = list(self._rules)
        return next((rule for rule in rules if rule.claim(answered)), None)


class _Answer:
    """A reply the client waits for: the commands it answers (a transaction's EXEC: every
    queued command; ``QUEUED``: none), or the start of a stream."""

    __slots__ = ("commands", "stream")

    def __init__(self, commands: list[list[bytes]], stream: bool = False) -> None:
        self.commands = commands
        self.stream = stream


_Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Link:
    """One client connection and the upstream connection opened for it."""

    def __init__(self, proxy: RedisFaultProxy, client: _Streams, upstream: _Streams) -> None:
        self.proxy = proxy
        self.client_reader, self.client_writer = client
        self.upstream_reader, self.upstream_writer = upstream
        self.answers: deque[_Answer] = deque()
        self.transaction: list[list[bytes]] | None = None  # commands queued since MULTI
        self.streaming = False  # a command that starts a stream was sent
        self.passthrough = False  # its reply has come: replies pass untouched
        self.commands = bytearray()
        self.replies = bytearray()
        self.held_commands: list[bytes] = []
        self.held_replies: list[bytes] = []
        self.closed = False

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._pump(self.client_reader, self._from_client, self.upstream_writer))
            group.create_task(self._pump(self.upstream_reader, self._from_upstream, self.client_writer))

    async def _pump(
        self, reader: asyncio.StreamReader, handle: Callable[[bytes], None], writer: asyncio.StreamWriter
    ) -> None:
        try:
            while not self.closed and (data := await reader.read(_CHUNK)):
                handle(data)
                await _drained(writer)
        except OSError:
            pass  # a reset connection ends the link like a closed one
        finally:
            self.close()

    def _from_client(self, data: bytes) -> None:
        self.commands += data
        position = 0
        while (parsed := read_command(self.commands, position)) is not None:
            sent, position = parsed
            if sent:
                self._note(sent)
        del self.commands[:position]
        # Registered before forwarding: no reply can come before its command is noted.
        self._send(self.upstream_writer, self.held_commands, data)

    def _note(self, sent: list[bytes]) -> None:
        self.proxy._count(sent)
        if self.streaming:
            return
        verb = sent[0].upper()
        if verb in _STREAMS or (verb == b"CLIENT" and len(sent) > 1 and sent[1].upper() == b"REPLY"):
            self.streaming = True
            self.answers.append(_Answer([], stream=True))
            return
        answered = [sent]
        if self.transaction is not None:
            if verb == b"EXEC":
                answered = [*self.transaction, sent]
                self.transaction = None
            elif verb == b"DISCARD":
                self.transaction = None
            else:  # answered QUEUED: it runs at EXEC
                self.transaction.append(sent)
                answered = []
        elif verb == b"MULTI":
            self.transaction = []
        self.answers.append(_Answer(answered))

    def _from_upstream(self, data: bytes) -> None:
        if self.passthrough:
            self._send(self.client_writer, self.held_replies, data)
            return
        self.replies += data
        position = 0
        while not self.passthrough:
            if self.answers and self.answers[0].stream:
                # Every reply before the stream's start is through; what comes now (an
                # array in RESP2, a push in RESP3) and after passes untouched.
                self.passthrough = True
                break
            reply = read_reply(self.replies, position)
            if reply is None:
                break
            if not reply.push and self.answers:
                answered = self.answers.popleft().commands
                # NOSCRIPT: the script did not run; redis-py loads it and sends it again.
                ran = not self.replies.startswith(b"-NOSCRIPT", position)
                rule = self.proxy._claim(answered) if ran else None
                if rule is not None:
                    self._send(self.client_writer, self.held_replies, bytes(self.replies[:position]))
                    rule.record()  # before the client can see the connection close
                    self.close()
                    return
            position = reply.end
        end = len(self.replies) if self.passthrough else position
        self._send(self.client_writer, self.held_replies, bytes(self.replies[:end]))
        del self.replies[:end]

    def _send(self, writer: asyncio.StreamWriter, held: list[bytes], data: bytes) -> None:
        if not data or self.closed:
            return
        if self.proxy._stalled:
            held.append(data)
        else:
            writer.write(data)

    def flush(self) -> None:
        """Forward what was held during a stall."""
        for writer, held in ((self.upstream_writer, self.held_commands), (self.client_writer, self.held_replies)):
            for data in held:
                self._send(writer, held, data)
            held.clear()

    def close(self) -> None:
        """Close both connections; what was held is dropped."""
        if self.closed:
            return
        self.closed = True
        self.held_commands.clear()
        self.held_replies.clear()
        self.client_writer.close()
        self.upstream_writer.close()


async def _drained(writer: asyncio.StreamWriter) -> None:
    if not writer.is_closing():
        await writer.drain()


def _address(upstream: str) -> tuple[tuple[str, int], int]:
    """(host, port) and the database number of ``HOST:PORT`` or ``redis://HOST:PORT/DB``."""
    parts = urlsplit(upstream if "://" in upstream else f"redis://{upstream}")
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"not a Redis address: {upstream!r} (HOST:PORT or redis://HOST:PORT/DB)")
    return (parts.hostname, parts.port), int(parts.path.strip("/") or 0)


# Running it as a process

USAGE = """control lines on standard input, one answer line each:
  stall | resume | drop            hang, stop hanging, close every client connection
  lose NAME [TIMES]                lose the reply to the next TIMES (1) commands NAME
  lose-scripts PROBABILITY [SEED]  lose each script reply with PROBABILITY
  clear                            cancel every rule
  status                           JSON: commands by name, replies lost, connections"""


def main(argv: list[str] | None = None) -> int:
    """``python -m tests.faults.proxy --upstream HOST:PORT [--port N]``: print
    ``listening HOST:PORT`` once clients can connect, then serve until SIGTERM or
    Ctrl-C, taking control lines on standard input (`USAGE`; a parent process writes
    them to a pipe and reads one answer line each)."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.faults.proxy",
        description="A fault-injecting proxy in front of a redis-server.",
        epilog=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--upstream", required=True, help="the redis-server: HOST:PORT or a redis:// URL")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--lose-scripts", type=float, metavar="P", help="lose each script reply with probability P")
    parser.add_argument("--seed", type=int, default=0, help="seed of --lose-scripts (default: %(default)s)")
    args = parser.parse_args(argv)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, terminate)
    rules: list[Rule] = []
    with RedisFaultProxy(args.upstream, host=args.host, port=args.port) as proxy:
        if args.lose_scripts:
            rules.append(proxy.lose_reply_randomly(args.lose_scripts, seed=args.seed))
        print(f"listening {proxy.host}:{proxy.port}", flush=True)
        try:
            for line in sys.stdin:
                if line.strip():
                    print(_control(proxy, rules, line.split()), flush=True)
            while True:  # standard input closed: serve until a signal
                signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


def _control(proxy: RedisFaultProxy, rules: list[Rule], words: list[str]) -> str:
    """Apply one control line; its answer."""
    actions: dict[str, Callable[[], object]] = {"stall": proxy.stall, "resume": proxy.resume}
    actions |= {"drop": proxy.drop_connections, "clear": proxy.clear_rules}
    verb, arguments = words[0], words[1:]
    try:
        if verb in actions and not arguments:
            actions[verb]()
        elif verb == "lose" and 1 <= len(arguments) <= 2:
            rules.append(proxy.lose_reply(command(arguments[0]), times=int(arguments[1]) if arguments[1:] else 1))
        elif verb == "lose-scripts" and 1 <= len(arguments) <= 2:
            seed = int(arguments[1]) if arguments[1:] else 0
            rules.append(proxy.lose_reply_randomly(float(arguments[0]), seed=seed))
        elif verb == "status" and not arguments:
            lost = sum(rule.count for rule in rules)
            return json.dumps({"commands": proxy.commands, "lost": lost, "connections": proxy.connections})
        else:
            return f"error: not a control line: {' '.join(words)!r}; " + USAGE.splitlines()[0]
    except ValueError as exc:
        return f"error: {exc}"
    return "ok"


if __name__ == "__main__":
    sys.exit(main())

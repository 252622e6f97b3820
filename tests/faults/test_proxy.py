"""The fault proxy in front of the test session's redis-server, driven by redis-py as the
backend uses it: lost replies are re-sent, pipelines and transactions stay matched,
pub/sub passes through, a stall hangs clients until it ends."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import cast

import anyio
import anyio.to_thread
import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry as SyncRetry

from tests.faults.commands import any_script, command, script
from tests.faults.proxy import USAGE, ProxyError, RedisFaultProxy
from tests.faults.resp import read_reply

ROOT = Path(__file__).resolve().parents[2]
INCREMENT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
def proxy(redis_url: str) -> Iterator[RedisFaultProxy]:
    with RedisFaultProxy(redis_url) as running:
        yield running


def connect(url: str, retries: int = 3, socket_timeout: float | None = None) -> Redis:
    """A client that re-sends a command whose connection broke (as redis-py does by default)."""
    return Redis.from_url(url, retry=Retry(NoBackoff(), retries), socket_timeout=socket_timeout)


async def ping(client: Redis) -> bool:
    return await cast("Awaitable[bool]", client.ping())


@pytest.fixture
async def client(proxy: RedisFaultProxy) -> AsyncIterator[Redis]:
    async with connect(proxy.url) as through_proxy:
        yield through_proxy


@pytest.fixture
async def direct(redis_url: str) -> AsyncIterator[Redis]:
    async with Redis.from_url(redis_url) as redis:
        yield redis


async def test_a_lost_set_reply_is_sent_again(
    proxy: RedisFaultProxy, client: Redis, direct: Redis, redis_prefix: str
) -> None:
    """The SET runs, its reply is lost, redis-py re-sends it: the proxy saw it twice."""
    rule = proxy.lose_reply(command("set"))
    assert await client.set(f"{redis_prefix}k", "v") is True
    assert rule.count == 1 and rule.fired.is_set()
    assert proxy.commands["SET"] == 2
    assert await direct.get(f"{redis_prefix}k") == b"v"


async def test_times_counts_the_replies_lost(proxy: RedisFaultProxy, client: Redis, redis_prefix: str) -> None:
    """With times=2 the first two matching replies are lost and the third is answered."""
    rule = proxy.lose_reply(command("SET"), times=2)
    await client.set(f"{redis_prefix}k", "v")
    await client.set(f"{redis_prefix}k", "w")
    assert rule.count == 2
    assert proxy.commands["SET"] == 4


@pytest.mark.parametrize("sent_as", ["EVALSHA", "EVAL"])
async def test_a_lost_script_reply_runs_the_script_twice(
    proxy: RedisFaultProxy, client: Redis, redis_prefix: str, sent_as: str
) -> None:
    """A script matched by its body, sent by SHA1 or whole, runs again when its reply is lost."""
    key = f"{redis_prefix}counter"
    rule = proxy.lose_reply(script(INCREMENT))
    if sent_as == "EVALSHA":
        assert await client.register_script(INCREMENT)(keys=[key], args=[5]) == 10
    else:
        assert await client.eval(INCREMENT, 1, key, 5) == 10  # type: ignore[misc]  # redis-py's union return
    assert rule.count == 1
    # EVALSHA's first NOSCRIPT (the script did not run) is answered, not lost.
    assert proxy.commands[sent_as] == (3 if sent_as == "EVALSHA" else 2)


async def test_a_lost_reply_in_a_pipeline_resends_the_pipeline(
    proxy: RedisFaultProxy, client: Redis, redis_prefix: str
) -> None:
    """redis-py re-sends the whole pipeline and every result answers its own command."""
    keys = [f"{redis_prefix}{i}" for i in range(30)]
    rule = proxy.lose_reply(lambda sent: sent[:2] == [b"GET", keys[20].encode()])
    async with client.pipeline(transaction=False) as pipe:
        for i, key in enumerate(keys):
            pipe.set(key, i)
            pipe.get(key)
        results = await pipe.execute()
    assert results == [item for i in range(30) for item in (True, str(i).encode())]
    assert rule.count == 1
    assert proxy.commands["GET"] == 60


def test_replies_stay_matched_to_their_commands(proxy: RedisFaultProxy, redis_prefix: str) -> None:
    """In one write of many commands (every reply shape), the reply lost is the matched command's:
    the client gets exactly the replies before it, then the connection closes."""
    key = f"{redis_prefix}k".encode()
    commands = [
        [b"SET", key, b"two\r\nlines"],
        [b"GET", key],
        [b"GET", key + b"-missing"],
        [b"INCR", key],  # an error: not an integer
        [b"RPUSH", key + b"-list", b"a", b"b"],
        [b"LRANGE", key + b"-list", b"0", b"-1"],
        [b"HELLO", b"3"],  # RESP3 from here: a map, then nulls and doubles
        [b"GET", key + b"-missing"],
        [b"INCRBYFLOAT", key + b"-float", b"1.5"],
        [b"ECHO", b"lose this one"],
        [b"PING"],
    ]
    rule = proxy.lose_reply(lambda sent: sent == [b"ECHO", b"lose this one"])
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(b"".join(_encode(sent) for sent in commands))
        received = _read_until_closed(sock)
    position, replies = 0, 0
    while (reply := read_reply(received, position)) is not None:
        position, replies = reply.end, replies + 1
    assert (replies, position) == (9, len(received))
    assert rule.count == 1


async def test_a_lost_exec_reply_reruns_the_transaction(
    proxy: RedisFaultProxy, client: Redis, redis_prefix: str
) -> None:
    """A command queued in MULTI loses the EXEC's reply (when it has run), not its QUEUED."""
    key = f"{redis_prefix}counter"
    rule = proxy.lose_reply(command("INCRBY"))
    async with client.pipeline(transaction=True) as pipe:
        pipe.incrby(key, 1)
        pipe.get(key)
        results = await pipe.execute()
    await rule.wait_async()
    # The transaction ran twice: a lost QUEUED would have discarded the first one.
    assert results == [2, b"2"]


@pytest.mark.parametrize("protocol", [2, 3])
async def test_a_subscriber_keeps_receiving(
    proxy: RedisFaultProxy, client: Redis, redis_prefix: str, protocol: int
) -> None:
    """Once a connection subscribes its traffic passes through untouched, RESP2 or RESP3 pushes."""
    channel = f"{redis_prefix}channel"
    # Were they matched one to one, the subscriber's replies would be lost.
    rule = proxy.lose_reply(command("SUBSCRIBE", "PING"), times=None)
    async with Redis.from_url(proxy.url, protocol=protocol) as subscriber, subscriber.pubsub() as pubsub:
        await pubsub.subscribe(channel)
        for number in range(3):
            assert await client.publish(channel, f"m{number}") == 1
        await pubsub.ping("alive")
        received: list[bytes] = []
        with anyio.fail_after(5):
            while len(received) < 4:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                if message is not None:
                    received.append(message["data"])
    assert received == [b"m0", b"m1", b"m2", b"alive"]
    assert rule.count == 0


async def test_a_stall_hangs_clients_until_resumed(proxy: RedisFaultProxy, redis_prefix: str) -> None:
    """While stalled a client with a socket timeout times out; a patient one gets its reply on resume."""
    key = f"{redis_prefix}k"
    async with connect(proxy.url, retries=0, socket_timeout=0.5) as hasty, connect(proxy.url) as patient:
        await hasty.set(key, "v")
        await ping(patient)
        proxy.stall()
        with pytest.raises(TimeoutError):
            await hasty.get(key)
        async with anyio.create_task_group() as group:
            replies: list[bytes | None] = []

            async def wait_patiently() -> None:
                replies.append(await patient.get(key))

            group.start_soon(wait_patiently)
            await anyio.to_thread.run_sync(proxy.wait_for_commands, "GET", 2)
            assert replies == []  # held by the proxy
            proxy.resume()
        assert replies == [b"v"]
        assert await hasty.get(key) == b"v"


async def test_dropped_connections_are_closed_and_clients_reconnect(proxy: RedisFaultProxy) -> None:
    """drop_connections closes every client connection at once; redis-py opens a new one."""
    async with connect(proxy.url) as client:
        await ping(client)
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            sock.sendall(b"PING\r\n")
            assert sock.recv(100) == b"+PONG\r\n"
            assert proxy.connections == 2
            proxy.drop_connections()
            assert proxy.connections == 0
            assert sock.recv(100) == b""
        assert await ping(client) is True
        assert proxy.connections == 1


def storm(redis_url: str, key: str, seed: int) -> tuple[int, int]:
    """40 script runs through a proxy losing a quarter of script replies: (replies lost, runs)."""

    async def run() -> tuple[int, int]:
        with RedisFaultProxy(redis_url) as proxy:
            rule = proxy.lose_reply_randomly(0.25, any_script, seed=seed)
            async with connect(proxy.url, retries=20) as client:
                increment = client.register_script(INCREMENT)
                for _ in range(40):
                    await increment(keys=[key], args=[1])
                return rule.count, int(await client.get(key) or 0)

    return anyio.run(run)


def test_a_storm_is_repeatable_by_its_seed(redis_url: str, redis_prefix: str) -> None:
    """Each lost script reply ran once more; the same seed loses the same replies."""
    lost, runs = storm(redis_url, f"{redis_prefix}a", seed=7)
    assert 0 < lost < 40 and runs == 40 + lost
    assert storm(redis_url, f"{redis_prefix}b", seed=7) == (lost, runs)


async def test_a_raising_match_fails_the_test_at_close(redis_url: str, redis_prefix: str) -> None:
    """A bug in a match is not a silent fault: close() raises it."""
    proxy = RedisFaultProxy(redis_url).start()
    proxy.lose_reply(lambda sent: 1 / 0 == 0)
    async with connect(proxy.url, retries=0) as client:
        with pytest.raises(ConnectionError):
            await ping(client)
    with pytest.raises(ProxyError) as raised:
        proxy.close()
    assert isinstance(raised.value.__cause__, ExceptionGroup)


def _encode(command: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%s\r\n" % (len(part), part) for part in command)


def _read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.mark.e2e
def test_the_proxy_runs_as_a_process(redis_url: str, redis_prefix: str) -> None:
    """``python -m tests.faults.proxy`` serves the same proxy, controlled by lines on its standard input."""
    command = [sys.executable, "-m", "tests.faults.proxy", "--upstream", redis_url]
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdin is not None and process.stdout is not None
    try:
        listening = process.stdout.readline().split()
        assert listening[0] == "listening", listening

        def control(line: str) -> str:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(line + "\n")
            process.stdin.flush()
            return process.stdout.readline().strip()

        assert control("lose set") == "ok"
        with SyncRedis.from_url(f"redis://{listening[1]}/0", retry=SyncRetry(NoBackoff(), 3)) as client:
            assert client.set(f"{redis_prefix}k", "v") is True
        status = json.loads(control("status"))
        assert (status["commands"]["SET"], status["lost"]) == (2, 1)
        assert control("lose") == "error: not a control line: 'lose'; " + USAGE.splitlines()[0]
    finally:
        process.terminate()
        assert process.wait(5) == 0

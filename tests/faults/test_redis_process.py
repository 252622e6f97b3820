"""A throwaway redis-server paused, killed and restarted, alone and behind the fault proxy."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.retry import Retry

from tests.faults.proxy import RedisFaultProxy
from tests.faults.redis_process import RedisProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
]


def connect(url: str, retries: int = 0, **options: float) -> Redis:
    return Redis.from_url(url, retry=Retry(NoBackoff(), retries), **options)


def test_an_aof_restart_keeps_what_was_answered() -> None:
    """With appendonly, a key whose SET was answered survives a SIGKILL and restart on the same port."""
    with RedisProcess(appendonly=True) as redis, connect(redis.url) as client:
        assert client.set("k", "v") is True
        first = redis.pid
        redis.kill()
        assert not redis.alive
        redis.restart()
        assert redis.pid != first
        assert client.get("k") == b"v"


def test_without_persistence_a_restart_loses_everything() -> None:
    """The default server keeps nothing across a restart (what the guide's `--appendonly no` gives)."""
    with RedisProcess() as redis, connect(redis.url) as client:
        client.set("k", "v")
        redis.restart(graceful=True)
        assert client.get("k") is None


def test_a_paused_server_hangs_then_runs_what_it_was_sent() -> None:
    """SIGSTOP: clients time out and the process is stopped; SIGCONT: it runs what arrived meanwhile."""
    with RedisProcess() as redis, connect(redis.url, socket_timeout=0.5) as client:
        client.ping()
        redis.pause()
        assert Path(f"/proc/{redis.pid}/stat").read_text().split(") ")[1][0] == "T"
        with pytest.raises(TimeoutError):
            client.incr("k")
        with socket.create_connection(("127.0.0.1", redis.port)) as sock:
            sock.sendall(b"INCR k\r\n")  # sent, then the client gives up
        redis.resume()
        assert client.get("k") == b"2"


def test_a_restarted_server_behind_the_proxy() -> None:
    """While Redis is down the proxy refuses clients; once restarted they go through again."""
    with RedisProcess(appendonly=True) as redis, RedisFaultProxy(redis.url) as proxy:
        with connect(proxy.url, retries=3) as client:
            client.set("k", "v")
            redis.kill()
            with pytest.raises(ConnectionError):
                client.get("k")
            redis.restart()
            assert client.get("k") == b"v"


def test_close_stops_it_by_pid_and_removes_its_directory() -> None:
    """After the block the process is gone and so is its directory (AOF included)."""
    with RedisProcess(appendonly=True) as redis:
        directory = redis.directory
        assert directory is not None and (directory / "appendonlydir").is_dir()
        process = Path(f"/proc/{redis.pid}")
    assert not redis.alive and not process.exists()
    assert not directory.exists()


def test_a_port_taken_is_an_error_with_the_server_log() -> None:
    """A fixed port already in use fails at once, with what redis-server said."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        redis = RedisProcess(port=taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="Address already in use"):
            redis.start()
        redis.close()

"""The boundary under a real ``uvicorn async_tasks.web:create_app --factory`` process, as
the guide starts it: uvicorn's own defaults are the point (it believes
``X-Forwarded-For`` from loopback, and learns the app nothing about its port).

One server for the module: TRUST_PROXY_HEADERS left false, loopback allowed for
api-call (the guide's old self-call setup).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import httpx
import pytest

from async_tasks.clients import FORWARDED_PEER
from async_tasks.settings import Settings
from async_tasks.web.sessions import SessionResolver
from tests.live import start_server_process
from tests.servers import free_port

# One worker runs them all (a group of `tests.scheduling`): one server process.
pytestmark = pytest.mark.e2e

SECRET = "uvicorn-boundary-secret-0123456789"
API = "/api/v1"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "SECRET_KEY": SECRET,
        "API_CALL_ALLOW_HOSTS": "127.0.0.1,localhost",
        "TASK_CREATE_RATE": "0",
        "LOG_LEVEL": "warning",
    }
    env.pop("TRUST_PROXY_HEADERS", None)
    process = start_server_process(
        [sys.executable, "-m", "uvicorn", "async_tasks.web:create_app", "--factory", "--port", str(port)], env, port
    )
    base = f"http://127.0.0.1:{port}"
    try:
        yield base
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_a_spoofed_x_forwarded_for_never_picks_that_ips_session(server: str) -> None:
    """Plain uvicorn rewrites the client address from X-Forwarded-For on loopback; with
    TRUST_PROXY_HEADERS=false the app uses neither that address nor a fresh session per
    request: every such request is one client, the forwarding peer, with one IP session."""
    resolver = SessionResolver(Settings(secret_key=SECRET))
    keys = {
        httpx.get(f"{server}{API}/session", headers={"X-Forwarded-For": claimed}).json()["sessionKey"]
        for claimed in ("192.168.1.20", "192.168.1.21")
    }
    assert keys == {resolver.key_for_ip(FORWARDED_PEER)}
    assert httpx.get(f"{server}{API}/session").json()["sessionKey"] == resolver.key_for_ip("127.0.0.1")


def test_api_call_cannot_call_the_server_running_it(server: str) -> None:
    """Loopback is allowed, yet the server's own port is refused (it learns it from the
    requests it serves), by IP and by name."""
    port = server.rsplit(":", 1)[1]
    with httpx.Client(base_url=server) as client:
        victim = client.post(f"{API}/tasks", headers={"X-Forwarded-For": "10.1.1.1"}, json={"executor": "sample"})
        assert victim.status_code == 201
        for endpoint in (f"http://127.0.0.1:{port}{API}/tasks", f"http://localhost:{port}{API}/tasks"):
            refused = client.post(f"{API}/demo/tasks/api-call", json={"endpoint": endpoint})
            assert refused.status_code == 400, refused.text
            assert "this server's own address" in refused.json()["error"]["message"]


def test_a_foreign_host_and_a_foreign_websocket_are_refused(server: str) -> None:
    rebound = httpx.get(f"{server}{API}/tasks", headers={"Host": "attacker.example"})
    assert rebound.status_code == 400 and rebound.json()["error"]["code"] == "invalid_host"
    websockets = pytest.importorskip("websockets.sync.client")
    url = server.replace("http://", "ws://") + f"{API}/ws"
    with pytest.raises(websockets.InvalidStatus) as refused:
        with websockets.connect(url, origin="http://evil.example", open_timeout=5):
            pass
    assert refused.value.response.status_code == 403
    assert b"forbidden_origin" in refused.value.response.body
    with websockets.connect(url, origin=server, open_timeout=5) as socket:  # its own page is welcome
        socket.send("ping")


def test_websockets_beyond_the_session_cap_get_429(server: str) -> None:
    """Under uvicorn the refusal is an HTTP answer with the error body (the ASGI denial
    extension); 16 streams per session by default."""
    websockets = pytest.importorskip("websockets.sync.client")
    url = server.replace("http://", "ws://") + f"{API}/ws"
    with contextlib.ExitStack() as stack:
        for _ in range(16):
            stack.enter_context(websockets.connect(url, open_timeout=5))
        with pytest.raises(websockets.InvalidStatus) as refused:
            with websockets.connect(url, open_timeout=5):
                pass
        assert refused.value.response.status_code == 429
        assert b"MAX_STREAMS_PER_SESSION" in refused.value.response.body


def test_a_large_websocket_message_closes_the_socket(server: str) -> None:
    websockets = pytest.importorskip("websockets.sync.client")
    from websockets.exceptions import ConnectionClosed

    url = server.replace("http://", "ws://") + f"{API}/ws"
    with websockets.connect(url, open_timeout=5) as socket:
        socket.send("x" * 5000)
        with pytest.raises(ConnectionClosed) as closed:
            socket.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

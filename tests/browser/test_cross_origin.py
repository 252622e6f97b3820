"""A front-end on another origin, in a real browser (see conftest.py).

The API runs on ``http://localhost:<api>`` with ``CORS_ALLOW_ORIGINS`` listing
``http://localhost:<page>``, where a second server serves a blank page: the page's
own scripts (run with ``page.evaluate``, in the page's origin) create, poll, and
follow the SSE and WebSocket streams of their session, with a cookie session (same
site: localhost on two ports) and with a token session (a header for fetch, a
stream ticket for EventSource and WebSocket). A page on an origin that is not
listed can neither read nor write. The dashboard loads with no CSP violation.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from litestar import Litestar

from async_tasks.settings import Settings
from async_tasks.web.app import create_app
from tests.helpers import SECRET, TEST_EXECUTORS, memory_store_of
from tests.live import serve_in_thread

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

pytestmark = pytest.mark.e2e

PAGE = b"<!doctype html><html><head><meta charset='utf-8'><title>front-end</title></head><body>front-end</body></html>"


class _Blank(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_port() -> Iterator[int]:
    """A second origin: a static blank page on another localhost port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Blank)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def api_app(page_port: int) -> Litestar:
    settings = Settings(
        secret_key=SECRET,
        task_create_rate=0.0,
        auto_map_session_by_ip=False,  # cookie or token sessions, as two browsers would have
        cors_allow_origins=f"http://localhost:{page_port}",
        shutdown_grace_ms=1000,
    )
    return create_app(settings, TEST_EXECUTORS, environ={})


@pytest.fixture(scope="module")
def api(api_app: Litestar) -> Iterator[str]:
    with serve_in_thread(api_app, ws="auto") as url:
        yield url.replace("127.0.0.1", "localhost")


@pytest.fixture
def front_end(browser: Any, page_port: int) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"http://localhost:{page_port}/")
    try:
        yield page
    finally:
        context.close()


# The page's own code: a front-end developer would write the same calls.
COOKIE_FLOW = """async (api) => {
  const opts = (extra) => ({credentials: "include", ...extra});
  const json = {"Content-Type": "application/json"};
  const created = await fetch(`${api}/api/v1/tasks`, opts({method: "POST", headers: json,
    body: JSON.stringify({executor: "script", start: true, params: {steps: 2}})}));
  const task = (await created.json()).task;
  const sessionHeader = created.headers.get("X-Session-Token");
  const again = await fetch(`${api}/api/v1/tasks/${task.id}/status`, opts({}));
  const status = await again.json();
  const events = await new Promise((resolve, reject) => {
    const seen = [];
    const source = new EventSource(`${api}/api/v1/tasks/${task.id}/events`, {withCredentials: true});
    for (const type of ["snapshot", "transition", "progress"]) {
      source.addEventListener(type, (e) => { seen.push(JSON.parse(e.data).status); });
    }
    source.onerror = () => { source.close(); resolve(seen); };
    setTimeout(() => { source.close(); reject(new Error("sse timeout")); }, 10000);
  });
  const socketEvent = await new Promise((resolve, reject) => {
    const ws = new WebSocket(`${api.replace("http", "ws")}/api/v1/ws`);
    ws.onmessage = (e) => { ws.close(); resolve(JSON.parse(e.data)); };
    ws.onerror = () => reject(new Error("ws error"));
    setTimeout(() => reject(new Error("ws timeout")), 10000);
  });
  return {created: created.status, sessionHeader, sessionKey: task.sessionKey, statusCode: again.status,
          status: status.status, events, socketTask: socketEvent.taskId, socketSession: socketEvent.sessionKey,
          taskId: task.id};
}"""

TOKEN_FLOW = """async (api) => {
  const started = await fetch(`${api}/api/v1/session`, {method: "POST", credentials: "omit"});
  const token = (await started.json()).token;
  const headers = {"X-Session-Token": token, "Content-Type": "application/json"};
  const created = await fetch(`${api}/api/v1/tasks`, {method: "POST", headers, credentials: "omit",
    body: JSON.stringify({executor: "script", start: true, params: {steps: 1}})});
  const task = (await created.json()).task;
  const listed = await (await fetch(`${api}/api/v1/tasks`, {headers: {"X-Session-Token": token}})).json();
  const anonymous = await (await fetch(`${api}/api/v1/tasks`, {credentials: "omit"})).json();
  const ticketOf = async () => (await (await fetch(`${api}/api/v1/session/ticket`,
    {method: "POST", headers: {"X-Session-Token": token}, credentials: "omit"})).json()).ticket;
  const sse = await new Promise(async (resolve, reject) => {
    const seen = [];
    const source = new EventSource(`${api}/api/v1/tasks/${task.id}/events?ticket=${await ticketOf()}`);
    source.addEventListener("snapshot", (e) => seen.push(JSON.parse(e.data).taskId, JSON.parse(e.data).status));
    source.addEventListener("transition", (e) => seen.push(JSON.parse(e.data).status));
    source.onerror = () => { source.close(); resolve(seen); };
    setTimeout(() => { source.close(); reject(new Error("sse timeout")); }, 10000);
  });
  const ws = await new Promise(async (resolve, reject) => {
    const socket = new WebSocket(`${api.replace("http", "ws")}/api/v1/ws?ticket=${await ticketOf()}`);
    socket.onmessage = (e) => { socket.close(); resolve(JSON.parse(e.data).taskId); };
    socket.onerror = () => reject(new Error("ws error"));
    setTimeout(() => reject(new Error("ws timeout")), 10000);
  });
  return {created: created.status, taskId: task.id, listed: listed.tasks.map((t) => t.id),
          anonymous: anonymous.tasks.length, sse, ws, tokenInUrl: false};
}"""

FOREIGN_FLOW = """async (api) => {
  const outcome = {};
  try { await fetch(`${api}/api/v1/tasks`, {credentials: "include"}); outcome.read = "read"; }
  catch (e) { outcome.read = "blocked"; }
  try {
    await fetch(`${api}/api/v1/tasks`, {method: "POST", mode: "no-cors", credentials: "include",
      headers: {"Content-Type": "text/plain"}, body: JSON.stringify({executor: "script"})});
    outcome.write = "sent";
  } catch (e) { outcome.write = "blocked"; }
  outcome.ws = await new Promise((resolve) => {
    const ws = new WebSocket(`${api.replace("http", "ws")}/api/v1/ws`);
    ws.onopen = () => { ws.close(); resolve("open"); };
    ws.onerror = () => resolve("refused");
  });
  return outcome;
}"""


def test_a_listed_origin_uses_a_cookie_session(front_end: Any, api: str) -> None:
    """Same site, other port: the SameSite=Lax cookie travels with fetch (credentials:
    include), EventSource (withCredentials) and the WebSocket handshake."""
    result = front_end.evaluate(COOKIE_FLOW, api)
    assert result["created"] == 201 and result["sessionHeader"]  # exposed to the page
    assert result["statusCode"] == 200 and result["status"] in ("pending", "running", "completed")
    assert result["events"][-1] == "completed"
    assert result["socketSession"] == result["sessionKey"] and result["socketTask"] == result["taskId"]


def test_a_listed_origin_uses_a_token_session_with_stream_tickets(front_end: Any, api: str) -> None:
    """Headers for fetch; a short-lived ticket in the URL for EventSource and WebSocket."""
    result = front_end.evaluate(TOKEN_FLOW, api)
    assert result["created"] == 201 and result["listed"] == [result["taskId"]]
    assert result["anonymous"] == 0  # without the token: another (empty) session
    assert result["sse"][0] == result["taskId"] and result["sse"][-1] == "completed"
    assert result["ws"] == result["taskId"]


def test_an_unlisted_origin_can_neither_read_nor_write(
    browser: Any, page_port: int, api: str, api_app: Litestar
) -> None:
    """The same page served as http://127.0.0.1:<port> is another origin, not listed."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{page_port}/")
        before = len(memory_store_of(api_app))
        outcome = page.evaluate(FOREIGN_FLOW, api)
        assert outcome == {"read": "blocked", "write": "sent", "ws": "refused"}
        # The no-cors POST did leave the browser: the server refused it (403), nothing was created.
        assert len(memory_store_of(api_app)) == before
    finally:
        context.close()


def test_the_dashboard_runs_under_its_content_security_policy(browser: Any, api: str) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        violations: list[str] = []
        page.on(
            "console",
            lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None,
        )
        response = page.goto(f"{api}/")
        assert "script-src 'self'" in response.headers["content-security-policy"]
        sync_api.expect(page.locator("#session-key")).not_to_have_text("…", timeout=15_000)
        page.locator("#executor-tabs button").first.wait_for()
        assert violations == []
    finally:
        context.close()

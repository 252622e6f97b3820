"""A front-end on another origin, in a real browser (see conftest.py).

The API runs on ``http://localhost:<api>`` with ``CORS_ALLOW_ORIGINS`` listing
``http://localhost:<page>``, where a second server serves a blank page: the page's
own scripts (run with ``page.evaluate``, in the page's origin) create, poll, and
follow the SSE and WebSocket streams of their session, with a cookie session (same
site: localhost on two ports) and with a token session (a header for fetch, a
stream ticket for EventSource and WebSocket). A page on an origin that is not
listed can neither read nor write. The dashboard loads with no CSP violation.

The front-end kit: the page imports ``/client.js`` from the API's origin and follows a
task to its end through a dropped connection (`StreamCutter` ends the first event
stream after two messages), falls back to the WebSocket and to polling; the docs' React
recipe (``useTask``), bundled with esbuild, runs on that page; a share link opens on a
phone-sized page with no session.
"""

from __future__ import annotations

import http.server
import itertools
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from litestar import Litestar

from async_tasks.settings import Settings
from async_tasks.web.app import create_app
from tests.doc_pages import blocks
from tests.helpers import SECRET, TEST_EXECUTORS, memory_store_of
from tests.live import serve_in_thread

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

pytestmark = pytest.mark.e2e

PAGE = b"<!doctype html><html><head><meta charset='utf-8'><title>front-end</title></head><body>front-end</body></html>"


class _Blank(http.server.BaseHTTPRequestHandler):
    #: Other files the page's origin serves (path -> content type and bytes): the React bundle.
    files: ClassVar[dict[str, tuple[str, bytes]]] = {}

    def do_GET(self) -> None:
        content_type, body = self.files.get(self.path, ("text/html; charset=utf-8", PAGE))
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

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


class StreamCutter:
    """ASGI wrapper between the browser and the API that breaks event streams as a proxy or
    a network would: with `cut_next` set, the next event stream ends after that many
    messages (the client sees it close mid-task); with `refuse`, every event stream gets a
    503. It counts the event-stream requests per path in `opened`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.cut_next: int | None = None
        self.refuse = False
        self.opened: dict[str, int] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.endswith("/events"):
            await self.app(scope, receive, send)
            return
        self.opened[path] = self.opened.get(path, 0) + 1
        if self.refuse:
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        left, self.cut_next = self.cut_next, None

        async def cutting(message: Any) -> None:
            nonlocal left
            if left is None:
                await send(message)
            elif left > 0:
                if message["type"] == "http.response.body" and message.get("body"):
                    left -= 1
                    if left == 0:  # the last message that gets through, then the stream ends
                        message = {**message, "more_body": False}
                await send(message)
            # after the cut the app goes on writing to nobody until its stream ends

        await self.app(scope, receive, cutting)


@pytest.fixture(scope="module")
def cutter(api_app: Litestar) -> StreamCutter:
    return StreamCutter(api_app)


@pytest.fixture(scope="module")
def api(cutter: StreamCutter) -> Iterator[str]:
    with serve_in_thread(cutter, ws="auto") as url:
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


# -- the front-end kit: /client.js, the React recipe, share links ---------------------

#: The page imports the client from the API's origin, as it is, and follows a task.
CLIENT_FLOW = """async ({api, executor, params, transports}) => {
  const { connect } = await import(`${api}/client.js`);
  const client = connect({ baseUrl: api });
  const task = await client.createTask(executor, params);
  const updates = [];
  const used = [];
  const ended = await new Promise((resolve, reject) => {
    client.watch(task.id, (update) => updates.push(update), {
      transports,
      onTransport: (name) => used.push(name),
      onEnd: (last, reason) => resolve({ last, reason, delivered: updates.length }),
      onError: (error) => reject(new Error(`${error.code}: ${error.message}`)),
    });
    setTimeout(() => reject(new Error(`no end: ${JSON.stringify(updates)}`)), 15000);
  });
  const listed = await client.list();
  return { taskId: task.id, updates, used, ended, listed: listed.tasks.map((t) => t.id), token: client.token };
}"""


def follow(front_end: Any, api: str, executor: str, params: dict[str, Any], transports: list[str] | None = None) -> Any:
    return front_end.evaluate(
        CLIENT_FLOW, {"api": api, "executor": executor, "params": params, "transports": transports}
    )


def assert_each_update_once(outcome: dict[str, Any]) -> None:
    """Every update once: each brings a new state (attempt and time never go back), new log
    lines (each line once, in order) or a new place in line or estimate; progress never
    back, the last one completed, and the end after it."""
    updates = outcome["updates"]
    states = [(u["attempt"], u["at"], u["status"], u["progress"], u["currentStep"]) for u in updates]
    assert states == sorted(states, key=lambda s: (s[0], s[1])), states
    said = [
        (*state, [line["n"] for line in u.get("logs") or []], u["queuePosition"], (u["eta"] or {}).get("finishesAt"))
        for state, u in zip(states, updates, strict=True)
    ]
    assert all(a != b for a, b in itertools.pairwise(said)), said
    for u in updates:
        numbers = [line["n"] for line in u.get("logs") or []]
        assert numbers == sorted(set(numbers)), numbers  # each line once, in order
    progress = [u["progress"] for u in updates]
    assert progress == sorted(progress), progress
    assert updates[-1]["status"] == "completed" and updates[-1]["progress"] == 100
    assert outcome["ended"]["reason"] == "completed" and outcome["ended"]["last"] == updates[-1]
    assert outcome["ended"]["delivered"] == len(updates)  # nothing after the end


#: The log lines of the `sample` executor: one per step.
SAMPLE_LOG = [
    "Initializing: Setting up the task environment",
    "Loading Data: Loading the input data set",
    "Processing Data: Analyzing input data and preparing output",
    "Generating Results: Building the result summary",
    "Finalizing: Cleaning up and saving the results",
]


def test_a_page_imports_the_client_and_follows_a_task_through_a_dropped_connection(
    front_end: Any, api: str, cutter: StreamCutter
) -> None:
    """/client.js from another origin: create, watch to the end over the event stream, which
    the network cuts after two messages; the client reconnects (with a fresh ticket) and
    delivers each state once."""
    cutter.cut_next = 2
    outcome = follow(front_end, api, "sample", {"delayMs": 1500})
    assert_each_update_once(outcome)
    assert [u["currentStep"] for u in outcome["updates"]][-1] == "Finalizing"
    # Its log lines arrived live (before the end), each once through the cut.
    last_log = outcome["updates"][-1]["logs"]
    assert [(line["n"], line["message"]) for line in last_log] == list(enumerate(SAMPLE_LOG, 1))
    assert any(u["status"] == "running" and u.get("logs") for u in outcome["updates"])
    assert outcome["used"] == ["sse", "sse"], outcome["used"]  # the stream again, after the cut
    assert cutter.opened[f"/api/v1/tasks/{outcome['taskId']}/events"] == 2
    assert outcome["listed"] == [outcome["taskId"]] and outcome["token"]  # the session it was given


def test_the_client_falls_back_to_the_websocket_then_to_polling(front_end: Any, api: str, cutter: StreamCutter) -> None:
    """An event stream that is refused (a proxy in the way): the session WebSocket; and
    polling when asked for it alone."""
    cutter.refuse = True
    try:
        by_socket = follow(front_end, api, "sample", {"delayMs": 1000})
    finally:
        cutter.refuse = False
    assert_each_update_once(by_socket)
    assert by_socket["used"] == ["websocket"], by_socket["used"]
    by_polling = follow(front_end, api, "sample", {"delayMs": 300}, transports=["polling"])
    assert_each_update_once(by_polling)
    assert by_polling["used"] == ["polling"]


ROOT = Path(__file__).resolve().parent.parent.parent
FRONTEND = ROOT / "tests" / "frontend" / "node_modules"
KIT = ROOT / "async_tasks" / "web" / "kit"
#: The test page around the guide's recipe: it creates a task and shows it with `TaskProgress`.
REACT_APP = """
import { useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { client, TaskProgress } from "./use-task";

function App() {
  const [id, setId] = useState<string | null>(null);
  useEffect(() => { client.createTask("sample", { delayMs: 600 }).then((task) => setId(task.id)); }, []);
  return id ? <TaskProgress id={id} /> : <p>Creating…</p>;
}

createRoot(document.getElementById("root")!).render(<App />);
"""
REACT_PAGE = b"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>React</title>
<script type="module" src="/react.js"></script></head><body><div id="root"></div></body></html>"""


def react_recipe() -> str:
    recipes = [b for b in blocks("tsx") if "useTask" in b]
    assert len(recipes) == 1, "the docs must hold exactly one useTask recipe"
    return recipes[0]


def test_the_guides_react_hook_follows_a_task(front_end: Any, api: str, tmp_path: Path) -> None:
    """The useTask recipe as the guide writes it (only its server URL changed), beside the
    client module saved as the guide says, bundled with esbuild, on a page of another origin."""
    esbuild = FRONTEND / ".bin" / "esbuild"
    if not esbuild.is_file():
        pytest.skip(f"esbuild is not installed ({esbuild}): bash scripts/test.sh installs it")
    (tmp_path / "use-task.tsx").write_text(react_recipe().replace("http://localhost:3000", api))
    shutil.copy(KIT / "client.js", tmp_path / "async-tasks.js")
    (tmp_path / "app.tsx").write_text(REACT_APP)
    bundle = ["--bundle", "--format=esm", "--jsx=automatic", "--outfile=react.js", "--log-level=error"]
    built = subprocess.run(
        [str(esbuild), "app.tsx", *bundle],
        cwd=tmp_path,
        env={**os.environ, "NODE_PATH": str(FRONTEND)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert built.returncode == 0, built.stderr
    _Blank.files = {
        "/react.html": ("text/html; charset=utf-8", REACT_PAGE),
        "/react.js": ("text/javascript", (tmp_path / "react.js").read_bytes()),
    }
    try:
        origin = front_end.url.rstrip("/")
        front_end.goto(f"{origin}/react.html")
        shown = front_end.locator("#root .task")
        sync_api.expect(shown).to_have_attribute("data-status", "completed", timeout=15_000)
        sync_api.expect(shown).to_contain_text("100% · completed · Finalizing")
        assert front_end.locator("#root progress").get_attribute("value") == "100"
    finally:
        _Blank.files = {}


def test_a_share_link_opens_on_a_phone_without_a_session(browser: Any, api: str) -> None:
    """The link from POST /tasks/{id}/share, on a 390 px page with no cookie, no token and no
    key: the task moves to its end; the page makes no session, and its token reads nothing else."""
    with httpx.Client(base_url=api) as owner:
        token = owner.post("/api/v1/session").json()["token"]
        owner.headers["X-Session-Token"] = token
        shared = owner.post("/api/v1/demo/tasks/sample", json={"delayMs": 800}).json()["task"]["id"]
        other = owner.post("/api/v1/demo/tasks/sample", json={"delayMs": 0}).json()["task"]["id"]
        link = owner.post(f"/api/v1/tasks/{shared}/share").json()
    assert link["url"].startswith(f"{api}/share/")
    # axe is injected as a script: this context lets it past the page's CSP (tested elsewhere).
    context = browser.new_context(viewport={"width": 390, "height": 844}, reduced_motion="reduce", bypass_csp=True)
    try:
        page = context.new_page()
        seen: list[str] = []
        page.expose_function("reportProgress", lambda value: seen.append(value))
        page.add_init_script(
            "new MutationObserver(() => { const bar = document.getElementById('bar');"
            " if (bar) window.reportProgress(bar.getAttribute('aria-valuenow')); })"
            ".observe(document, {subtree: true, attributes: true, attributeFilter: ['aria-valuenow']});"
        )
        page.goto(link["url"])
        sync_api.expect(page.get_by_role("heading", level=1)).to_have_text("Sample Long-Running Task")
        sync_api.expect(page.locator("#badge")).to_have_text("completed", timeout=15_000)
        sync_api.expect(page.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
        sync_api.expect(page.locator("#step-name")).to_have_text("Finalizing")
        sync_api.expect(page.locator("#live")).to_have_attribute("data-mode", "ended")
        logs = page.locator("#logs li")  # its log lines, each once
        sync_api.expect(logs).to_have_count(len(SAMPLE_LOG))
        sync_api.expect(logs.last).to_contain_text(SAMPLE_LOG[-1])
        progress = [int(value) for value in seen]
        assert progress == sorted(progress) and len(set(progress)) >= 3, progress  # it moved, never back
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert context.cookies() == []  # no session was made for the page
        # What the page holds reads that task only.
        share_token = link["token"]
        reads = page.evaluate(
            """async ({other, token}) => {
              const status = async (url, init) => (await fetch(url, init)).status;
              return {
                other: await status(`/api/v1/tasks/${other}`, {headers: {"X-Session-Token": token}}),
                list: (await (await fetch("/api/v1/tasks", {headers: {"X-Session-Token": token}})).json()).tasks.length,
                stream: await status(`/api/v1/tasks/events?ticket=${token}`),
              };
            }""",
            {"other": other, "token": share_token},
        )
        assert reads == {"other": 404, "list": 0, "stream": 401}
        axe = FRONTEND / "axe-core" / "axe.min.js"
        if axe.is_file():
            page.add_script_tag(path=str(axe))
            assert page.evaluate("async () => (await axe.run()).violations.map((v) => v.id)") == []
    finally:
        context.close()

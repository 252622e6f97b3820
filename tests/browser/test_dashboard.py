"""The dashboard and the API reference in a real headless Chromium (see conftest.py).

Every wait is Playwright's auto-waiting `expect` on DOM state; nothing sleeps.

As in a demo room without internet, every request to a host other than the test server
is refused (and any attempt fails the test), and every response carries a strict
Content-Security-Policy (no inline script or style): a page that needs either fails here.

`test_screenshot` writes tests/artifacts/dashboard.png (docs/dashboard.png is a copy).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from async_tasks.client import TaskClient
from tests.browser.conftest import WithCSP
from tests.live import live_app, serve_in_thread

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
expect = sync_api.expect

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).parent.parent / "artifacts"
COOKIE = "async_tasks_session"
#: Any URL whose host is not the test server's.
OTHER_HOSTS = re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/])")

expect.set_options(timeout=15_000)


def offline_context(browser: Browser, **options: Any) -> tuple[Any, list[str]]:
    """A fresh browser profile (no cookie, so a new session) that reaches only this machine,
    with reduced motion.

    Returns the context and the list collecting what went wrong on its pages: JavaScript
    errors, Content-Security-Policy violations and attempts to reach another host.
    """
    # Reduced motion (the page honours it): no endless pulse and stripes to paint at 60 fps,
    # which cost a 2-core CI machine a sixth of the module's time and tested nothing.
    context = browser.new_context(reduced_motion="reduce", **options)
    problems: list[str] = []

    def refuse(route: Any) -> None:
        problems.append(f"request to another host: {route.request.url}")
        route.abort("internetdisconnected")

    def on_console(message: Any) -> None:
        if "Content Security Policy" in message.text:
            problems.append(f"CSP: {message.text}")

    def watch(page: Page) -> None:
        page.on("pageerror", lambda error: problems.append(f"JavaScript error: {error}"))
        page.on("console", on_console)

    context.route(OTHER_HOSTS, refuse)  # matched in the driver: local requests are not slowed down
    context.on("page", watch)
    return context, problems


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh offline profile with a projector-sized window; fails the test on any problem."""
    context, problems = offline_context(browser, viewport={"width": 1600, "height": 1000})
    opened = context.new_page()
    try:
        yield opened
    finally:
        context.close()
    assert problems == [], f"Problems on the page: {problems}"


def open_dashboard(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.locator("body[data-ready=true]")).to_be_attached()


def submit(page: Page, executor: str, **fields: str) -> None:
    """Fill the executor's generated form and start the task."""
    page.locator(f'#executor-tabs [data-executor="{executor}"]').click()
    form = page.locator(f'form[data-executor="{executor}"]')
    expect(form).to_be_visible()
    for name, value in fields.items():
        form.locator(f'[name="{name}"]').fill(value)
    form.get_by_role("button", name=f"Start {executor}").click()


def session_token(page: Page) -> str:
    return next(c["value"] for c in page.context.cookies() if c["name"] == COOKIE)


def test_a_sample_task_runs_live_and_a_new_session_starts_empty(page: Page, live_server: str) -> None:
    """A sample task runs to 100 % live on its card (the page follows the session's stream);
    "New session" then shows an empty list, follows the new session and keeps it across a reload."""
    open_dashboard(page, live_server)
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#session-key")).to_have_text(re.compile(r"^s_"))
    submit(page, "sample", delayMs="300")
    card = page.locator("li.task").first
    expect(card.locator(".task-name")).to_have_text("Sample Long-Running Task")
    expect(card.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    expect(card.locator(".badge")).to_have_text("completed")
    expect(card.locator(".pct")).to_have_text("100%")
    expect(card.locator(".step-name")).to_have_text("Finalizing")
    expect(card.locator(".step-desc").last).to_have_text("Sample task completed")
    expect(page.locator('.stat[data-stat="completed"] .n')).to_have_text("1")
    expect(page.locator("#empty")).to_be_hidden()
    # With the session cookie the page follows the session event stream.
    expect(page.locator("#live")).to_have_attribute("data-mode", "stream")

    expect(page.locator("li.task .badge")).to_have_text(["completed"])
    old_key = page.locator("#session-key").inner_text()
    page.get_by_role("button", name="New session").click()
    expect(page.locator("#session-key")).not_to_have_text(old_key)
    expect(page.locator("li.task")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator('.stat[data-stat="total"] .n')).to_have_text("0")
    new_key = page.locator("#session-key").inner_text()
    # Live updates follow the new session, and the cookie keeps it across reloads.
    submit(page, "sample", delayMs="0")
    expect(page.locator("li.task .badge")).to_have_text(["completed"])
    page.reload()
    expect(page.locator("#session-key")).to_have_text(new_key)
    expect(page.locator("li.task")).to_have_count(1)


def test_the_buttons_cancel_retry_and_delete_and_show_a_refusal(page: Page, live_server: str) -> None:
    """Cancel, Retry, Details and Delete work from a task's card; a click the server refuses
    shows the server's message, and the next click works."""
    open_dashboard(page, live_server)
    submit(page, "sample", delayMs="120000")
    card = page.locator("li.task").first
    expect(card.locator(".badge")).to_have_text("running")
    expect(card.get_by_role("button", name="Delete")).to_be_hidden()
    body = '{"success": false, "error": {"code": "invalid_transition", "message": "Too late: it finished."}}'
    page.route("**/cancel", lambda route: route.fulfill(status=409, content_type="application/json", body=body))
    card.get_by_role("button", name="Cancel").click()
    expect(page.locator(".toast.error")).to_have_text(re.compile(r"^Too late: it finished\."))
    page.unroute("**/cancel")
    card.get_by_role("button", name="Cancel").click()
    expect(card.locator(".badge")).to_have_text("cancelled")
    expect(card.get_by_role("button", name="Cancel")).to_be_hidden()
    expect(page.locator('.stat[data-stat="cancelled"] .n')).to_have_text("1")
    card.get_by_role("button", name="Retry").click()
    expect(card.locator(".badge")).to_have_text("running")
    card.get_by_role("button", name="Cancel").click()
    expect(card.locator(".badge")).to_have_text("cancelled")
    card.get_by_role("button", name="Details").click()
    expect(card.locator(".details")).to_contain_text('"attempts": 2')
    card.get_by_role("button", name="Delete").click()
    expect(page.locator("li.task")).to_have_count(0)
    expect(page.locator("#empty")).to_be_visible()


def test_a_second_window_holds_its_own_session(page: Page, live_server: str) -> None:
    open_dashboard(page, live_server)
    submit(page, "sample", delayMs="0")
    expect(page.locator("li.task .badge")).to_have_text(["completed"])
    first_key = page.locator("#session-key").inner_text()

    with page.context.expect_page() as opened:
        page.get_by_role("link", name=re.compile("Open second session")).click()
    second = opened.value
    expect(second.locator("body[data-ready=true]")).to_be_attached()
    expect(second).to_have_url(re.compile(r"\?session=tab$"))
    expect(second.locator("#session-mode")).to_be_visible()
    expect(second.locator("#session-key")).to_have_text(re.compile(r"^s_"))
    expect(second.locator("#session-key")).not_to_have_text(first_key)
    expect(second.locator("li.task")).to_have_count(0)
    # A header token cannot ride on EventSource: this window opens the stream with a ticket.
    expect(second.locator("#live")).to_have_attribute("data-mode", "stream")
    submit(second, "sample", delayMs="300")
    expect(second.locator("li.task .badge")).to_have_text(["completed"])
    second_bar = second.locator("li.task").first.get_by_role("progressbar")
    expect(second_bar).to_have_attribute("aria-valuenow", "100")

    # "New session" in that window replaces only that window's session.
    second_key = second.locator("#session-key").inner_text()
    second.get_by_role("button", name="New session").click()
    expect(second.locator("#session-key")).not_to_have_text(second_key)
    expect(second.locator("li.task")).to_have_count(0)

    # The first window is untouched: same session (its cookie was not replaced), one task.
    expect(page.locator("li.task")).to_have_count(1)
    page.reload()
    expect(page.locator("#session-key")).to_have_text(first_key)
    expect(page.locator("li.task")).to_have_count(1)
    second.close()


def test_every_executor_gets_a_form_whose_mistakes_and_lines_are_handled(page: Page, live_server: str) -> None:
    """Every executor gets a form from its schema; a value the server refuses and JSON that does
    not parse are shown at the form; a batch takes one item per line, a line that is JSON as
    JSON ({"fail": true} an object whose item fails, 7 a number); a task started at the bottom
    of a long form has its new card scrolled into view."""
    open_dashboard(page, live_server)
    with TaskClient(live_server) as tasks:
        names = sorted(e["name"] for e in tasks.executors())
    expect(page.locator("#executor-tabs [data-executor]")).to_have_count(len(names))
    expect(page.locator("form.exec-form")).to_have_count(len(names))
    sample = page.locator('form[data-executor="sample"]')
    delay = sample.locator('[name="delayMs"]')
    expect(delay).to_have_attribute("type", "number")
    expect(delay).to_have_value("3000")
    expect(delay).to_have_attribute("min", "0")
    expect(delay).to_have_attribute("max", "120000")
    api_call = page.locator('form[data-executor="api-call"]')
    expect(api_call.locator('select[name="method"] option:checked')).to_have_text("GET")
    expect(api_call.locator('textarea[name="headers"]')).to_be_attached()
    hold = page.locator('form[data-executor="script"] input[name="hold"]')
    expect(hold).to_have_attribute("type", "checkbox")

    # The server's message for a value it refuses, by the field; nothing started.
    submit(page, "sample", delayMs="-1")
    error = sample.locator(".form-error")
    expect(error).to_have_text("delayMs must be at least 0.")
    expect(delay).to_have_attribute("aria-invalid", "true")
    expect(page.locator("li.task")).to_have_count(0)
    # A JSON field that does not parse is caught before sending.
    submit(page, "script", result="{not json")
    expect(page.locator('form[data-executor="script"] .form-error')).to_have_text("result: not valid JSON.")

    # An array field takes one item per line.
    submit(page, "batch", items="alpha\nbeta\ngamma", itemDelayMs="0")
    card = page.locator("li.task").first
    expect(card.locator(".badge")).to_have_text("completed")
    card.get_by_role("button", name="Details").click()
    expect(card.locator(".details")).to_contain_text('"succeeded": 3')
    submit(page, "batch", items='alpha\n{"fail": true}\n7', itemDelayMs="0")
    expect(page.locator("li.task")).to_have_count(2)
    card = page.locator("li.task").first
    expect(card.locator(".badge")).to_have_text("completed")
    card.get_by_role("button", name="Details").click()
    details = card.locator(".details")
    expect(details).to_contain_text('"succeeded": 2')
    expect(details).to_contain_text('"failed": 1')
    expect(details).to_contain_text('"square": 49')

    # In a short window, the start button at the bottom of the form is far below the list.
    page.set_viewport_size({"width": 1600, "height": 500})
    page.locator('#executor-tabs [data-executor="batch"]').click()
    page.locator('form[data-executor="batch"] [name="items"]').fill("alpha\nbeta")
    start = page.get_by_role("button", name="Start batch")
    start.scroll_into_view_if_needed()
    expect(page.locator("#tasks-title")).not_to_be_in_viewport()  # the list is above the window
    start.click()
    expect(page.locator("li.task")).to_have_count(3)
    expect(page.locator("li.task").first).to_be_in_viewport()


def test_the_panels_count_and_clean_and_cards_show_user_text_and_dead_letters(page: Page, live_server: str) -> None:
    """The stats and cleanup panels count and clean; user text is shown as text, never as
    markup; a task that failed its last automatic retry is marked dead-lettered (one without
    retries is not) and its history starts at its creation."""
    open_dashboard(page, live_server)
    expect(page.locator("#cleanup")).to_contain_text("50 completed · 20 failed")
    expect(page.locator('.stat[data-stat="total"] .n')).to_have_text("0")
    submit(page, "script", fail="nope")
    expect(page.locator('.stat[data-stat="failed"] .n')).to_have_text("1")
    page.get_by_role("button", name="Run cleanup").click()
    expect(page.locator(".toast.ok").last).to_have_text(re.compile(r"^Cleanup removed 0 tasks"))
    expect(page.locator("#cleanup")).to_contain_text("manual")

    name = '<img src=x onerror="window.__xss=1"><b>bold</b>'
    with TaskClient(live_server, token=session_token(page)) as tasks:
        escaped = tasks.create_task("script", {"fail": "<script>window.__xss=2</script>"}, name=name, start=True)
    card = page.locator(f'li.task[data-task-id="{escaped["id"]}"]')
    expect(card.locator(".task-name")).to_have_text(name)
    expect(card.locator(".badge")).to_have_text("failed")
    expect(card.locator(".task-error")).to_contain_text("<script>window.__xss=2</script>")
    assert page.locator("li.task img, li.task b, li.task script").count() == 0
    assert page.evaluate("window.__xss") is None

    with TaskClient(live_server, token=session_token(page)) as tasks:
        plain = tasks.create_task("script", {"fail": "broken"}, start=True)
        dead = tasks.create_task("script", {"fail": "still broken"}, max_retries=1, start=True)
    dead_card = page.locator(f'li.task[data-task-id="{dead["id"]}"]')
    plain_card = page.locator(f'li.task[data-task-id="{plain["id"]}"]')
    expect(dead_card.locator(".badge")).to_have_text("failed")
    marker = dead_card.locator(".dead-letter")
    expect(marker).to_be_visible()
    expect(marker).to_have_attribute("title", re.compile(r"^Dead-lettered: all 1 automatic retry failed too"))
    expect(plain_card.locator(".badge")).to_have_text("failed")
    expect(plain_card.locator(".dead-letter")).to_be_hidden()
    dead_card.get_by_role("button", name="Details").click()
    details = dead_card.locator(".details")
    expect(details).to_contain_text('"deadLettered": true')
    expect(details).to_contain_text(re.compile(r'"[^"]+  created → pending",'))
    expect(details).to_contain_text("failed → pending  (automatic retry 1 of 1")
    expect(details).not_to_contain_text("—")


#: Records, on the page, each change of a card's latest log line with the card's status then.
LOG_WATCH = """
window.logSeen = [];
new MutationObserver(() => {
  for (const card of document.querySelectorAll("li.task")) {
    const latest = card.querySelector(".log-latest")?.textContent ?? "";
    const seen = window.logSeen.filter((entry) => entry.id === card.dataset.taskId);
    if (latest && seen.at(-1)?.latest !== latest) {
      window.logSeen.push({ id: card.dataset.taskId, status: card.dataset.status, latest });
    }
  }
}).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
"""


def test_log_lines_appear_live_on_the_card(page: Page, live_server: str) -> None:
    """A batch's log lines reach its card from the event stream while it runs, the latest
    in the log's summary; opened, the log lists every line once; after a reload the card
    reads the whole log when it is opened."""
    page.add_init_script(LOG_WATCH)
    open_dashboard(page, live_server)
    expect(page.locator("#live")).to_have_attribute("data-mode", "stream")
    submit(page, "batch", items='alpha\nbeta\n{"fail": true}\n4', itemDelayMs="250")
    card = page.locator("li.task").first
    log = card.locator(".task-log")
    expect(card.locator(".badge")).to_have_text("completed")
    expect(log.locator(".log-count")).to_have_text("Log · 5 lines")
    expect(log.locator(".log-latest")).to_have_text("Done: 3 succeeded, 1 failed")
    seen = page.evaluate("window.logSeen")
    running = [entry["latest"] for entry in seen if entry["status"] == "running"]
    assert 'Item 1: "alpha" — ok' in running, seen  # shown while the task ran, not at its end
    log.locator("summary").click()
    lines = log.locator(".log-lines li")
    expect(lines).to_have_count(5)
    expect(lines.nth(2)).to_contain_text('Item 3: {"fail":true} — failed: item asked to fail')
    expect(lines.nth(2)).to_contain_text('"status":"error"')  # the line's partial result
    page.reload()
    expect(page.locator("body[data-ready=true]")).to_be_attached()
    log = page.locator("li.task").first.locator(".task-log")
    expect(log.locator(".log-count")).to_have_text("Log · 5 lines")  # the list's latest lines
    log.locator("summary").click()
    expect(log.locator(".log-lines li")).to_have_count(5)  # the whole log, read on opening
    expect(log.locator(".log-lines li").first).to_contain_text('Item 1: "alpha" — ok')


def test_a_waiting_task_shows_its_place_in_line_and_an_estimate(browser: Browser) -> None:
    """With one slot, a second task waits: its card says it is 1st in line and when it should
    start (from the first run's duration), then how long it has left once it runs."""
    with serve_in_thread(WithCSP(live_app(max_concurrent_tasks=1))) as url:
        context, problems = offline_context(browser, viewport={"width": 1600, "height": 1000})
        page = context.new_page()
        try:
            open_dashboard(page, url)
            with TaskClient(url, token=session_token(page)) as tasks:
                tasks.wait(tasks.demo("sample", delayMs=1500)["id"], timeout=15)  # how long a run takes
                first = tasks.demo("sample", delayMs=1500)
                second = tasks.demo("sample", delayMs=1500)
            waiting = page.locator(f'li.task[data-task-id="{second["id"]}"]')
            expect(waiting.locator(".task-outlook")).to_have_text(
                re.compile(r"^1st in line · (starts in about \d+ s|starting any moment now)$")
            )
            running = page.locator(f'li.task[data-task-id="{first["id"]}"]')
            expect(running.locator(".task-outlook")).to_have_text(re.compile(r"(about \d+ s left|any moment now)$"))
            expect(waiting.locator(".badge")).to_have_text("running")
            expect(waiting.locator(".task-outlook")).to_have_text(re.compile(r"(about \d+ s left|any moment now)$"))
            expect(waiting.locator(".badge")).to_have_text("completed")
            expect(waiting.locator(".task-outlook")).to_be_hidden()
            # A delayed start says when, counted down.
            with TaskClient(url, token=session_token(page)) as tasks:
                later = tasks.create_task("sample", {"delayMs": 0}, start_at=int(time.time() * 1000) + 150_000)
            delayed = page.locator(f'li.task[data-task-id="{later["id"]}"]')
            expect(delayed.locator(".task-outlook")).to_have_text(
                re.compile(r"^starts at \d\d:\d\d:\d\d( [AP]M)?, in about (2|3) min$")
            )
        finally:
            context.close()
        assert problems == [], f"Problems on the page: {problems}"


# -- the API reference ----------------------------------------------------------------


def test_the_api_reference_renders_offline_from_the_dashboard_link(page: Page, live_server: str) -> None:
    """The "API docs" link opens /schema, which renders every operation with no other host and no
    inline code, tries one with the dashboard's session, and offers the session token to Authorize."""
    open_dashboard(page, live_server)
    with page.context.expect_page() as opened:
        page.get_by_role("link", name=re.compile("API docs")).click()
    docs = opened.value
    expect(docs).to_have_url(f"{live_server}/schema")
    expect(docs.locator(".info .title")).to_contain_text("async-tasks")
    paths = httpx.get(f"{live_server}/schema/openapi.json").json()["paths"]
    expect(docs.locator(".opblock")).to_have_count(sum(len(operations) for operations in paths.values()))
    # An operation can be tried from the page: same origin, the dashboard's session.
    session = docs.locator(".opblock-get", has=docs.locator('[data-path="/api/v1/session"]'))
    session.locator(".opblock-summary-control").click()
    session.get_by_role("button", name="Try it out").click()
    session.get_by_role("button", name="Execute").click()
    result = session.locator(".live-responses-table tbody")
    expect(result.locator(".response-col_status")).to_have_text("200")
    expect(result.locator(".response-col_description")).to_contain_text(page.locator("#session-key").inner_text())
    expect(docs.get_by_role("link", name=re.compile("Live dashboard"))).to_have_attribute("href", "/")
    # Its Authorize dialog offers the session token header and the cookie the document declares.
    docs.get_by_role("button", name="Authorize").first.click()
    schemes = docs.locator(".auth-container")
    expect(schemes.first).to_contain_text("sessionToken")
    expect(schemes.first).to_contain_text("X-Session-Token")
    expect(schemes.nth(1)).to_contain_text("sessionCookie")


# -- the screenshot for the docs ----------------------------------------------------


@pytest.fixture(scope="module")
def docs_server() -> Iterator[str]:
    """A server with only the installed executors, as a demo audience sees it."""
    with serve_in_thread(WithCSP(live_app(executors=[]))) as url:
        yield url


def test_screenshot(browser: Browser, docs_server: str) -> None:
    context, problems = offline_context(browser, viewport={"width": 1920, "height": 1080})
    page = context.new_page()
    # The page's own timers run on a clock this test can move: the toasts' self-dismissal
    # (4.5 s) is fast-forwarded below instead of waited for. Time still flows as usual.
    page.clock.install()
    try:
        open_dashboard(page, docs_server)
        with TaskClient(docs_server, token=session_token(page)) as tasks:
            long_one = tasks.demo("sample", delayMs=120_000, description="cancelled from the dashboard")
            tasks.demo("sample", delayMs=5000, timeoutMs=400)  # fails: timed out
            tasks.demo("batch", items=["alpha", "beta", "gamma"], itemDelayMs=0)
            tasks.create_task("sample", {"delayMs": 1000}, name="Nightly report (queued)")
            long_card = page.locator(f'li.task[data-task-id="{long_one["id"]}"]')
            expect(long_card.locator(".badge")).to_have_text("running")
            long_card.get_by_role("button", name="Cancel").click()
            batch = tasks.demo("batch", items=[f"item {i}" for i in range(6)], itemDelayMs=1500)
            submit(page, "sample", delayMs="12000")
        expect(page.locator("li.task")).to_have_count(6)
        expect(page.locator("li.task .badge")).to_have_text(
            ["running", "running", "pending", "completed", "failed", "cancelled"]
        )
        top = page.locator("li.task").first.get_by_role("progressbar")
        expect(top).to_have_attribute("aria-valuenow", re.compile(r"^(2\d|3\d)$"))  # mid-way
        batch_bar = page.locator(f'li.task[data-task-id="{batch["id"]}"]').get_by_role("progressbar")
        expect(batch_bar).to_have_attribute("aria-valuenow", re.compile(r"^[1-9]\d$"))
        page.clock.fast_forward(10_000)  # past every toast's timer (errors stay 9 s)
        expect(page.locator(".toast")).to_have_count(0)  # they dismiss themselves
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"))
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
    finally:
        context.close()
    assert problems == [], f"Problems on the page: {problems}"


# -- every screen, accessibility, API keys ------------------------------------------

#: axe-core from npm (tests/frontend, installed by scripts/test.sh), injected into the page.
AXE = Path(__file__).parent.parent / "frontend" / "node_modules" / "axe-core" / "axe.min.js"
#: Phones, a half-screen window, a small tablet: (width, height).
SCREENS = [(360, 640), (390, 844), (600, 800), (768, 1024)]
LAYOUT = """() => {
  const box = (node) => node.getBoundingClientRect();
  const card = document.querySelector("li.task");
  return {
    scrollWidth: document.documentElement.scrollWidth, width: innerWidth, height: innerHeight,
    header: box(document.querySelector(".topbar")).height,
    name: box(card.querySelector(".task-name")).width, card: box(card).width,
  };
}"""
#: Whether any message ("toast") overlaps a control or a progress bar of the page.
COVERED = """() => {
  const overlap = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const messages = [...document.querySelectorAll(".toast")].map((node) => node.getBoundingClientRect());
  const controls = [...document.querySelectorAll("button, a, input, select, textarea, .bar")]
    .filter((node) => !node.closest(".toast") && node.offsetParent !== null);
  const covered = (node) => messages.some((m) => overlap(m, node.getBoundingClientRect()));
  return messages.length === 0 ? null : controls.filter(covered).map((node) => node.outerHTML.slice(0, 80));
}"""


#: No animation of a set length is still playing (the endless ones: the live dot, stripes).
SETTLED = """() => document.getAnimations().every(
  (a) => a.playState !== 'running' || a.effect.getComputedTiming().iterations === Infinity)"""


def axe_violations(page: Page) -> list[str]:
    if not AXE.is_file():
        pytest.skip(f"axe-core is not installed ({AXE}): bash scripts/test.sh installs it")
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    # Colours are judged as the reader sees them: after a message has faded in, not halfway.
    page.wait_for_function(SETTLED)
    found = page.evaluate("async () => (await axe.run()).violations.map((v) => `${v.id}: ${v.nodes[0].target}`)")
    return list(found)


def test_the_dashboard_fits_every_screen_and_has_no_axe_violations(browser: Browser, live_server: str) -> None:
    """At 360-768 px: no sideways scroll, a task's name across most of its card, a top bar of a
    few lines; messages sit beside what they are about, over no control; axe finds nothing (the
    page is checked at each width and on a desktop, with every kind of card and the key dialog
    excepted: it has its own test)."""
    # axe is injected as a script: this context lets it past the page's CSP (tested elsewhere).
    context, problems = offline_context(browser, viewport={"width": 390, "height": 844}, bypass_csp=True)
    page = context.new_page()
    try:
        open_dashboard(page, live_server)
        with TaskClient(live_server, token=session_token(page)) as tasks:
            tasks.demo("sample", delayMs=120_000)
            tasks.create_task("script", {"fail": "the printer is on fire"}, start=True)
        submit(page, "batch", items="alpha\nbeta", itemDelayMs="0")
        card = page.locator("li.task").first
        expect(card.locator(".badge")).to_have_text("completed")
        expect(page.locator("li.task")).to_have_count(3)
        expect(page.locator(".toast.ok")).to_have_text(re.compile("^Started"))
        expect(card).to_be_in_viewport()
        assert page.evaluate(COVERED) == []
        for width, height in SCREENS:
            page.set_viewport_size({"width": width, "height": height})
            layout = page.evaluate(LAYOUT)
            assert layout["scrollWidth"] <= width, (width, layout)
            assert layout["name"] >= 0.8 * layout["card"], (width, layout)
            assert layout["header"] <= 0.16 * height, (width, layout)
            assert axe_violations(page) == [], width
        page.set_viewport_size({"width": 1600, "height": 1000})
        # Stacked messages on a desktop: a failed cancel on a card, a cleanup, a start.
        body = '{"success": false, "error": {"code": "invalid_transition", "message": "Too late."}}'
        page.route("**/cancel", lambda route: route.fulfill(status=409, content_type="application/json", body=body))
        running = page.locator("li.task[data-status=running]")
        running.get_by_role("button", name="Cancel").click()
        page.get_by_role("button", name="Run cleanup").click()
        submit(page, "sample", delayMs="0")
        expect(running.locator(".toast.error")).to_have_text(re.compile("^Too late"))
        expect(page.locator(".toast")).to_have_count(3)
        assert page.evaluate(COVERED) == []
        assert axe_violations(page) == []
    finally:
        context.close()
    assert problems == [], f"Problems on the page: {problems}"


def test_with_api_keys_the_dashboard_asks_for_the_key_once(browser: Browser) -> None:
    """No request is retried in vain and nothing says "live" before the key: the page asks,
    keeps the key for the tab (a reload does not ask again), then streams with a ticket."""
    key = "dashboard-key-0123456789"
    with serve_in_thread(WithCSP(live_app(api_keys=key))) as url:
        context, problems = offline_context(browser, viewport={"width": 390, "height": 844})
        page = context.new_page()
        refused: list[str] = []
        page.on("response", lambda r: refused.append(r.url) if r.status == 401 else None)
        try:
            page.goto(url)
            dialog = page.get_by_role("dialog", name="This server needs an API key")
            expect(dialog).to_be_visible()
            expect(page.locator("#live")).to_have_attribute("data-mode", re.compile("^(connecting|locked)$"))
            expect(page.locator("#live")).not_to_contain_text("live")
            assert len(refused) <= 2  # the session, and at most one more that was in flight
            dialog.get_by_label("API key").fill("not-the-key-at-all")
            dialog.get_by_role("button", name="Use this key").click()
            expect(dialog.locator("#key-error")).to_have_text(re.compile("refused this key"))
            dialog.get_by_label("API key").fill(key)
            dialog.get_by_role("button", name="Use this key").click()
            expect(dialog).to_be_hidden()
            expect(page.locator("body[data-ready=true]")).to_be_attached()
            expect(page.locator("#live")).to_have_attribute("data-mode", "stream")
            submit(page, "sample", delayMs="0")
            expect(page.locator("li.task .badge")).to_have_text(["completed"])
            before = len(refused)
            page.reload()
            expect(page.locator("li.task .badge")).to_have_text(["completed"])
            expect(page.locator("#key-dialog")).to_be_hidden()
            assert len(refused) == before
        finally:
            context.close()
        assert problems == [], f"Problems on the page: {problems}"


def test_the_indicator_says_live_only_while_requests_work(page: Page, live_server: str) -> None:
    """Without the event stream the page polls; when the list fails it says so (the server's
    message), and "live" again once it works."""
    page.route("**/tasks/events*", lambda route: route.abort())
    open_dashboard(page, live_server)
    live = page.locator("#live")
    expect(live).to_have_attribute("data-mode", "polling")
    expect(live).to_contain_text("live · polling")
    body = '{"success": false, "error": {"code": "store_unavailable", "message": "Redis is not answering."}}'
    page.route("**/api/v1/tasks?*", lambda route: route.fulfill(status=503, content_type="application/json", body=body))
    expect(live).to_have_attribute("data-mode", "failing")
    expect(live).to_have_text("not updating: Redis is not answering.")
    page.unroute("**/api/v1/tasks?*")
    expect(live).to_have_attribute("data-mode", "polling")

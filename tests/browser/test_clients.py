"""What a browser client meets, in a real browser (see conftest.py): a task's
``EventSource`` stops by itself once the task has ended. Waits are Playwright's own.
(The API reference's Authorize dialog is checked in test_dashboard.py, on the page its
"API docs" link opens: one Swagger UI load for both.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Response

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

pytestmark = pytest.mark.e2e

#: Starts a task (the response sets the session cookie), then follows it with an EventSource
#: that never calls close(): what a page written without reading the guide does.
FOLLOW = """async () => {
  const answer = await fetch("/api/v1/demo/tasks/sample", {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({delayMs: 300}),
  });
  const {task} = await answer.json();
  window.seen = [];
  const source = new EventSource(`/api/v1/tasks/${task.id}/events`);
  source.onopen = () => window.seen.push({kind: "open"});
  source.onerror = () => window.seen.push({kind: "error", state: source.readyState});
  for (const kind of ["snapshot", "transition", "progress", "end"]) {
    source.addEventListener(kind, (event) => window.seen.push({kind, id: event.lastEventId, data: event.data}));
  }
  window.source = source;
  return task.id;
}"""


@pytest.fixture(scope="module")
def page(browser: Browser) -> Iterator[Page]:
    # The page's own code is what this test drives through Playwright (which waits by
    # evaluating expressions); the server's CSP is tested elsewhere.
    context = browser.new_context(bypass_csp=True)
    try:
        yield context.new_page()
    finally:
        context.close()


def test_an_event_source_stops_after_the_task_ends(page: Page, live_server: str) -> None:
    """The stream ends with `end`; the browser's reconnect gets 204 and EventSource closes for good."""
    streams: list[tuple[int, str | None]] = []

    def on_response(response: Response) -> None:
        if response.url.endswith("/events"):
            streams.append((response.status, response.request.all_headers().get("last-event-id")))

    page.on("response", on_response)
    page.goto(f"{live_server}/health")
    task_id = page.evaluate(FOLLOW)
    # EventSource.CLOSED (2): it gave up reconnecting, which only a 204 (or an error status) makes it do.
    page.wait_for_function("window.source.readyState === 2", timeout=15_000)
    seen: list[dict[str, Any]] = page.evaluate("window.seen")

    kinds = [entry["kind"] for entry in seen]
    assert kinds.count("open") == 1, kinds
    # The server closes after `end` (error, state CONNECTING: EventSource will retry); the
    # retry is answered 204 (error, state CLOSED: it will not).
    assert kinds[:2] == ["open", "snapshot"] and kinds[-3:] == ["end", "error", "error"], kinds
    assert [entry["state"] for entry in seen[-2:]] == [0, 2]
    end = seen[-3]
    assert end["data"] == f'{{"type":"end","taskId":"{task_id}","reason":"completed"}}'
    assert end["id"].startswith("1-")
    # One stream, then one reconnect carrying the end's id, answered 204.
    assert streams == [(200, None), (204, end["id"])]

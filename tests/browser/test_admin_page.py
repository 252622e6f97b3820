"""The admin page in a real browser (see conftest.py): it asks for the admin key, shows
every session's tasks, and retries the dead letter. Waits are Playwright's own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.browser.conftest import WithCSP
from tests.live import live_app, serve_in_thread

if TYPE_CHECKING:
    from playwright.sync_api import Browser

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

pytestmark = pytest.mark.e2e

ADMIN_KEY = "admin-page-key-0123456789abcdef"


@pytest.fixture(scope="module")
def admin_server() -> Iterator[str]:
    app = live_app(admin_api_keys=f"ops:{ADMIN_KEY}", retry_backoff_ms=0)
    with serve_in_thread(WithCSP(app)) as url:
        yield url


def test_the_admin_page_shows_every_session_and_retries_the_dead_letter(browser: Browser, admin_server: str) -> None:
    """A wrong key is refused on the page; the right one shows two sessions' tasks, and
    "Retry the dead letter" runs the dead task again until it completes."""
    ids = []
    for params in ({"steps": 1}, {"failAttempts": 2}):  # each client without a token: a session of its own
        with httpx.Client(base_url=f"{admin_server}/api/v1") as client:
            body = {"executor": "script", "params": params, "maxRetries": 1, "start": True}
            ids.append(client.post("/tasks", json=body).json()["task"]["id"])
    context = browser.new_context()
    errors: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.goto(f"{admin_server}/admin")
        page.fill("#key", "not-the-admin-key-0000")
        page.click("#unlock button[type=submit]")
        sync_api.expect(page.locator("#unlock-error")).to_contain_text("ADMIN_API_KEYS")
        errors.clear()  # the refused request's 401 is logged by the browser
        page.fill("#key", ADMIN_KEY)
        page.click("#unlock button[type=submit]")
        sync_api.expect(page.locator("#unlock")).to_be_hidden()
        rows = page.locator("#tasks tbody tr")
        sync_api.expect(rows).to_have_count(2)
        sync_api.expect(page.locator("#sessions-total")).to_have_text("2 holding tasks")
        sync_api.expect(rows.filter(has_text="dead letter")).to_have_count(1)
        sync_api.expect(page.locator("#queues")).to_contain_text("script")
        page.click("#retry-dead")
        sync_api.expect(page.locator("#result")).to_have_text("retry: 1 changed, 0 skipped")
        sync_api.expect(rows.filter(has_text="completed")).to_have_count(2)
        assert errors == []
    finally:
        context.close()

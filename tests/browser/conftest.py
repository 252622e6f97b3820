"""The browser tests: one real headless Chromium (Debian's, driven by Playwright) for the
whole package, and one real server for the pages.

The browser is Debian's ``chromium-headless-shell``: Chromium's own headless build (the
same Blink, V8 and network stack; what Playwright itself runs for ``headless=True``),
which needs about half the CPU of the full ``chromium`` started with ``--headless``. The
full ``chromium`` is used when the shell is not installed, or set ``CHROMIUM_PATH``.
Needs ``pip install playwright`` (the ``test`` extra) and
``apt-get install -y chromium-headless-shell``; ``playwright install`` is never used.
Skipped, with the reason, when either is missing.

Starting Playwright's driver and Chromium costs seconds, so they start here with
package scope: `tests.scheduling` keeps each browser module whole on one xdist worker
(the dashboard's on one, the two others together, so two workers can share the
browser tests), and the browser closes when its worker leaves the package. (While
Playwright's sync API is open its event loop counts as running on the thread, so no
async test may run in between: the tests here are all sync.)
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.live import live_app, serve_in_thread

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = (
    os.environ.get("CHROMIUM_PATH")
    or shutil.which("chromium-headless-shell")
    or shutil.which("chromium")
    or "/usr/bin/chromium-headless-shell"
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: At least as strict as what the server sends: our pages may not use inline code or styles.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class WithCSP:
    """ASGI wrapper adding `CSP` to every HTTP response of the app it wraps."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def send_with_csp(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"content-security-policy", CSP.encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_csp if scope["type"] == "http" else send)


@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    """One Chromium for every browser test; each test opens its own context (a fresh profile)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium-headless-shell)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="package")
def live_server() -> Iterator[str]:
    """One real server for the pages, behind the strict CSP; without a token or cookie each
    browser context gets a session of its own."""
    with serve_in_thread(WithCSP(live_app(retry_backoff_ms=0))) as url:
        yield url

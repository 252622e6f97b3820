"""``GET /admin``: the admin page (``dashboard/admin.html``, ``admin.js``), served when
ADMIN_API_KEYS is set. The page itself holds nothing secret: it asks for an admin key
and calls the admin API (`async_tasks.web.api.admin`) with it."""

from __future__ import annotations

import functools
import html

from litestar import MediaType, Response, get
from litestar.di import NamedDependency
from litestar.types import Scope

from async_tasks import __version__
from async_tasks.web.api.dashboard import ASSETS_PATH, DASHBOARD_DIR, NO_CACHE
from async_tasks.web.middleware import NO_SESSION_OPT_KEY


@functools.cache
def _template() -> str:
    return (DASHBOARD_DIR / "admin.html").read_text(encoding="utf-8")


def render_admin(api_base: str, root: str = "") -> str:
    root = html.escape(root, quote=True)
    return (
        _template()
        .replace("{{API_BASE}}", html.escape(api_base, quote=True))
        .replace("{{ASSETS}}", root + ASSETS_PATH)
        .replace("{{ROOT}}", root)
        .replace("{{VERSION}}", html.escape(__version__, quote=True))
    )


@get(
    "/admin",
    media_type=MediaType.HTML,
    include_in_schema=False,
    cache_control=NO_CACHE,
    name="admin",
    opt={NO_SESSION_OPT_KEY: True},  # the page holds no session's data: none is issued to it
)
async def admin_page(scope: Scope, api_path: NamedDependency[str]) -> Response[str]:
    return Response(render_admin(api_path, str(scope.get("root_path", ""))), media_type=MediaType.HTML)

"""The live dashboard: ``GET /`` (the page) and ``/dashboard/*`` (its assets).

A single page of vanilla JS split into ES modules (no build step) kept in
``async_tasks/web/dashboard/``; ``main.js`` is the entry point.
`create_app` mounts it; embedding apps using only `AsyncTasksPlugin` keep their
own ``/``. The page talks to the API under the plugin's path (``/api/v1``
by default), which is written into the page as ``<meta name="api-base">``.
"""

from __future__ import annotations

import functools
import html
import mimetypes
from pathlib import Path
from typing import Any

from litestar import MediaType, Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.static_files import create_static_files_router
from litestar.types import Scope

from async_tasks import __version__

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
ASSETS_PATH = "/dashboard"
#: Demo pages change while people iterate on them: always revalidate.
NO_CACHE = CacheControlHeader(no_cache=True)


def register_asset_types() -> None:
    """Serve ``.js`` as JavaScript wherever the server runs.

    Static files take their type from `mimetypes`, which on Windows reads the registry,
    where ``.js`` is sometimes ``text/plain``: browsers refuse ES modules served so.
    """
    mimetypes.add_type("text/javascript", ".js")
    mimetypes.add_type("text/css", ".css")


@functools.cache
def _index_template() -> str:
    return (DASHBOARD_DIR / "index.html").read_text(encoding="utf-8")


def render_index(api_base: str, root: str = "") -> str:
    """The page, its links under `root` (the mount in a host app, see `async_tasks.web.asgi`)."""
    root = html.escape(root, quote=True)
    return (
        _index_template()
        .replace("{{API_BASE}}", html.escape(api_base, quote=True))
        .replace("{{ASSETS}}", root + ASSETS_PATH)
        .replace("{{ROOT}}", root)
        .replace("{{VERSION}}", html.escape(__version__, quote=True))
    )


@get("/", media_type=MediaType.HTML, include_in_schema=False, cache_control=NO_CACHE, name="dashboard")
async def dashboard_page(scope: Scope, api_path: NamedDependency[str]) -> Response[str]:
    return Response(render_index(api_path, str(scope.get("root_path", ""))), media_type=MediaType.HTML)


def dashboard_route_handlers() -> list[Any]:
    """The handlers to pass to `create_app(route_handlers=...)` / `Litestar(route_handlers=...)`."""
    register_asset_types()
    assets: Router = create_static_files_router(
        path=ASSETS_PATH, directories=[DASHBOARD_DIR], name="dashboard-assets", cache_control=NO_CACHE
    )
    return [dashboard_page, assets]

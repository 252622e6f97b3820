"""The API reference at ``/schema``: Swagger UI served from the package, so it renders offline.

Litestar's own render plugins load their UI from a CDN and boot it with an inline
``<script>``: a demo room without internet gets a blank page, and a page served under
``Content-Security-Policy: script-src 'self'`` refuses the inline code. This plugin
serves a vendored copy of Swagger UI (``async_tasks/web/reference/swagger-ui``,
Apache-2.0, licence beside it) under ``<openapi path>/assets`` and boots it with the
same-origin ``schema-init.js``, which reads the spec URL from a data attribute.

    OpenAPIConfig(..., render_plugins=[OfflineSwaggerRenderPlugin()], openapi_router=reference_router())
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from litestar import Request, Response, Router
from litestar.exceptions import NoRouteMatchFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.static_files import create_static_files_router

from async_tasks import __version__
from async_tasks.web.api.dashboard import NO_CACHE, register_asset_types
from async_tasks.web.errors import error_response

REFERENCE_DIR = Path(__file__).resolve().parent.parent / "reference"
#: The route name of the assets, for `Litestar.route_reverse`.
ASSETS_ROUTE = "api-reference-assets"

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title} · API reference</title>
  {icon}
  <link rel="stylesheet" href="{swagger_css}">
  <link rel="stylesheet" href="{page_css}">
  <script defer src="{swagger_js}"></script>
  <script defer src="{init_js}"></script>
</head>
<body>
  <nav class="reference-bar" aria-label="API reference">
    {back}
    <span class="spec-links">OpenAPI document: <a href="{spec}">{spec}</a></span>
  </nav>
  <main id="swagger-ui" data-spec-url="{spec}"{csrf}></main>
  <noscript><p class="reference-bar">This page needs JavaScript. The OpenAPI document is at
    <a href="{spec}">{spec}</a>.</p></noscript>
</body>
</html>
"""


class OfflineSwaggerRenderPlugin(OpenAPIRenderPlugin):
    """Swagger UI from the package's own files: no CDN, no inline script."""

    def __init__(self, path: str | Sequence[str] = ("/", "/swagger")) -> None:
        super().__init__(path=path, favicon="", style="")
        register_asset_types()

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        app = request.app

        def asset(name: str) -> str:
            return html.escape(f"{app.route_reverse(ASSETS_ROUTE, file_path=name)}?v={__version__}", quote=True)

        try:  # the dashboard's link and icon, when the app has the dashboard
            dashboard = html.escape(app.route_reverse("dashboard"), quote=True)
            icon_url = html.escape(app.route_reverse("dashboard-assets", file_path="favicon.svg"), quote=True)
            back = f'<a href="{dashboard}">← Live dashboard</a>'
            icon = f'<link rel="icon" href="{icon_url}?v={__version__}" type="image/svg+xml">'
        except NoRouteMatchFoundException:
            back = icon = ""
        csrf = ""
        config = app.csrf_config
        if config is not None and not config.cookie_httponly:
            csrf = (
                f' data-csrf-cookie="{html.escape(config.cookie_name, quote=True)}"'
                f' data-csrf-header="{html.escape(config.header_name, quote=True)}"'
            )
        page = _PAGE.format(
            title=html.escape(str(openapi_schema.get("info", {}).get("title", "API"))),
            swagger_css=asset("swagger-ui/swagger-ui.css"),
            swagger_js=asset("swagger-ui/swagger-ui-bundle.js"),
            page_css=asset("schema.css"),
            init_js=asset("schema-init.js"),
            spec=html.escape(self.get_openapi_json_route(request), quote=True),
            back=back,
            icon=icon,
            csrf=csrf,
        )
        return page.encode()

    def receive_router(self, router: Router) -> None:
        """Serve the page's assets from the package under ``<openapi path>/assets``."""
        router.register(
            create_static_files_router(
                path="/assets", directories=[REFERENCE_DIR], name=ASSETS_ROUTE, cache_control=NO_CACHE
            )
        )


def reference_router(path: str = "/schema") -> Router:
    """The router Litestar serves the reference from, with the contract's JSON error body for
    a page it does not have (Litestar's own answer there is an HTML "Error 404")."""

    def json_not_found(response: Response[Any]) -> Response[Any]:
        if response.status_code != 404 or response.media_type != "text/html":
            return response
        return error_response(404, "not_found", f"The API reference has no such page: it is at {path}.")

    return Router(path, route_handlers=[], include_in_schema=False, after_request=json_not_found)

"""The front-end kit's files: ``/client.js`` (an ES module any allowed page imports as it
is), ``/client.d.ts`` (its types) and ``/kit/*`` (the share page's script and style).

They live in ``async_tasks/web/kit/`` and need no build step. The plugin mounts them at
the app's root, so every server that has the API serves its client too; a page on
another origin imports ``http://<server>/client.js`` (CORS_ALLOW_ORIGINS lists that
origin: module scripts are fetched with CORS). No session is resolved for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

from async_tasks.web.api.dashboard import register_asset_types
from async_tasks.web.middleware import NO_SESSION_OPT_KEY

KIT_DIR = Path(__file__).resolve().parent.parent / "kit"
KIT_PATH = "/kit"
#: Always revalidated: a page picks up a new server's client at once.
NO_CACHE = CacheControlHeader(no_cache=True)
_NO_SESSION = {NO_SESSION_OPT_KEY: True}


def _file(name: str, media_type: str) -> Response[bytes]:
    return Response((KIT_DIR / name).read_bytes(), media_type=media_type)


@get("/client.js", include_in_schema=False, cache_control=NO_CACHE, opt=_NO_SESSION, sync_to_thread=False)
def client_module() -> Response[bytes]:
    return _file("client.js", "text/javascript; charset=utf-8")


@get("/client.d.ts", include_in_schema=False, cache_control=NO_CACHE, opt=_NO_SESSION, sync_to_thread=False)
def client_types() -> Response[bytes]:
    return _file("client.d.ts", "application/typescript; charset=utf-8")


def kit_route_handlers() -> list[Any]:
    """``/client.js``, ``/client.d.ts`` and the ``/kit`` assets."""
    register_asset_types()
    assets: Router = create_static_files_router(
        path=KIT_PATH, directories=[KIT_DIR], name="kit-assets", cache_control=NO_CACHE, opt=dict(_NO_SESSION)
    )
    return [client_module, client_types, assets]

"""The dashboard and the API reference as files: what the pages load, and that a wheel
ships them. (Chromium renders them in tests/browser/.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import httpx


async def test_pages_load_only_same_origin_script_files_served_as_javascript(
    session_client: httpx.AsyncClient,
) -> None:
    """No inline script or handler in our pages; each script is JavaScript (browsers refuse modules otherwise)."""
    http = session_client
    for path in ("/", "/schema"):
        page = (await http.get(path)).text
        assert re.findall(r"<script(?![^>]*\bsrc=)", page) == [], path
        assert re.findall(r"<[^>]+\son[a-z]+=", page) == [], path
        scripts = re.findall(r'<script[^>]*\bsrc="([^"]+)"', page)
        assert scripts, path
        for url in scripts:
            answer = await http.get(url)
            assert answer.status_code == 200, url
            assert answer.headers["content-type"].startswith("text/javascript"), url
    assert (await http.get("/schema/openapi.json")).json()["openapi"].startswith("3.")
    licence = await http.get("/schema/assets/swagger-ui/LICENSE")
    assert licence.status_code == 200 and "Apache License" in licence.text


def test_every_page_asset_is_package_data() -> None:
    """A wheel carries every file of the dashboard and the API reference (pyproject's package data)."""
    root = Path(__file__).parent.parent
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["async_tasks"]
    package = root / "async_tasks"
    shipped = {path for pattern in globs for path in package.glob(pattern) if path.is_file()}
    for folder in ("web/dashboard", "web/reference"):
        files = {path for path in (package / folder).rglob("*") if path.is_file() and "__pycache__" not in path.parts}
        assert files and files <= shipped, sorted(str(path.relative_to(package)) for path in files - shipped)

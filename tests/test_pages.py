"""The dashboard and the API reference as files: what the pages load, and that a wheel
ships them. (Chromium renders them in tests/browser/.)"""

from __future__ import annotations

import re
import subprocess
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


async def test_a_page_the_reference_lacks_is_the_contract_s_404(session_client: httpx.AsyncClient) -> None:
    """/schema/<anything else> answers the JSON error body, not Litestar's HTML "Error 404"."""
    for path in ("/schema/nothing", "/schema/assets/nothing.js", "/schema/openapi.yml"):
        answer = await session_client.get(path)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "not_found", path
    assert "such page" in (await session_client.get("/schema/nothing")).json()["error"]["message"]


def test_every_page_asset_ships_in_the_wheel() -> None:
    """A wheel carries every file of the dashboard and the API reference: hatchling ships
    whole packages except what git ignores, so no asset may be ignored or excluded."""
    root = Path(__file__).parent.parent
    wheel = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    assert "async_tasks" in wheel["targets"]["wheel"]["packages"]
    assert not {"exclude", "only-include"} & ({*wheel, *wheel["targets"]["wheel"]})
    folders = ["async_tasks/web/dashboard", "async_tasks/web/reference"]
    assert all((root / folder).is_dir() for folder in folders)
    ignored = subprocess.run(
        ["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", *folders],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [path for path in ignored if "__pycache__" not in path] == []

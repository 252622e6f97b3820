"""The documentation pages whose examples the suite runs or type-checks: the demo
script (DEMO_GUIDE.md) and everything under docs/. README.md is checked on its own."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "DEMO_GUIDE.md"
README = ROOT / "README.md"
#: The demo script first, then docs/ in path order: their curl blocks run in this order,
#: in one shell, so a page sets the variables its own blocks use.
PAGES = (GUIDE, *sorted((ROOT / "docs").rglob("*.md")))


def blocks(language: str, pages: tuple[Path, ...] = PAGES) -> list[str]:
    """The fenced code blocks of `language` (```bash, ```python...), page after page."""
    fence = re.compile(rf"```{re.escape(language)}\n(.*?)```", re.S)
    return [block for page in pages for block in fence.findall(page.read_text(encoding="utf-8"))]

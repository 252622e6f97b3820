"""Write the Python examples of README.md, DEMO_GUIDE.md and every page under docs/ out
as modules, so that ``mypy --strict`` checks them as a user would copy them; and their
TSX examples (the React recipe), beside the client module saved as the docs say
(``async-tasks.js`` and ``async-tasks.d.ts``), for ``tsc`` (tests/frontend/tsconfig.json).

    python scripts/doc_examples.py build/doc-examples && mypy build/doc-examples
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = (ROOT / "README.md", ROOT / "DEMO_GUIDE.md", *sorted((ROOT / "docs").rglob("*.md")))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
TSX_BLOCK = re.compile(r"```tsx\n(.*?)```", re.S)
KIT = ROOT / "async_tasks" / "web" / "kit"


def main(target: str) -> int:
    out = Path(target)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    count = 0
    for document in DOCUMENTS:
        # docs/guides/executors.md -> docs_guides_executors: a module name of its own.
        stem = "_".join(document.relative_to(ROOT).with_suffix("").parts).lower().replace("-", "_")
        text = document.read_text(encoding="utf-8")
        for index, block in enumerate(BLOCK.findall(text), 1):
            (out / f"{stem}_example_{index}.py").write_text(block, encoding="utf-8")
            count += 1
        for index, block in enumerate(TSX_BLOCK.findall(text), 1):
            (out / f"{stem}_example_{index}.tsx").write_text(block, encoding="utf-8")
            count += 1
    # The TSX examples import the client module as the guide saves it.
    shutil.copy(KIT / "client.js", out / "async-tasks.js")
    shutil.copy(KIT / "client.d.ts", out / "async-tasks.d.ts")
    print(f"{count} examples written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "build/doc-examples"))

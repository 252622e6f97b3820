"""Write the Python examples of README.md and DEMO_GUIDE.md out as modules, so that
``mypy --strict`` checks them as a user would copy them; and the guide's TSX examples
(the React recipe), beside the client module saved as the guide says
(``async-tasks.js`` and ``async-tasks.d.ts``), for ``tsc`` (tests/frontend/tsconfig.json).

    python scripts/doc_examples.py build/doc-examples && mypy build/doc-examples
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "DEMO_GUIDE.md")
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
TSX_BLOCK = re.compile(r"```tsx\n(.*?)```", re.S)
KIT = ROOT / "async_tasks" / "web" / "kit"


def main(target: str) -> int:
    out = Path(target)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    count = 0
    for document in DOCUMENTS:
        stem = Path(document).stem.lower().replace("-", "_")
        for index, block in enumerate(BLOCK.findall((ROOT / document).read_text(encoding="utf-8")), 1):
            (out / f"{stem}_example_{index}.py").write_text(block, encoding="utf-8")
            count += 1
        for index, block in enumerate(TSX_BLOCK.findall((ROOT / document).read_text(encoding="utf-8")), 1):
            (out / f"{stem}_example_{index}.tsx").write_text(block, encoding="utf-8")
            count += 1
    # The TSX examples import the client module as the guide saves it.
    shutil.copy(KIT / "client.js", out / "async-tasks.js")
    shutil.copy(KIT / "client.d.ts", out / "async-tasks.d.ts")
    print(f"{count} examples written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "build/doc-examples"))

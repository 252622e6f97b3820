#!/usr/bin/env bash
# Strict mypy over everything CI type-checks: the package, executors, demos, tests and
# the docs' Python examples (written out by scripts/doc_examples.py). It runs the
# project's .venv (scripts/test.sh creates it), activated or not, so the pre-commit
# hook works from any shell; mypy needs the project's dependencies to check it.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
if [ ! -x "$python" ]; then
    echo "scripts/typecheck.sh: no .venv here yet; run bash scripts/test.sh once, it creates it" >&2
    exit 1
fi
"$python" scripts/doc_examples.py build/doc-examples >/dev/null
"$python" -m mypy async_tasks executors demos tests build/doc-examples

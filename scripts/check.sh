#!/usr/bin/env bash
# Every check: lint, types, then the whole test suite (installing what it needs).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q -e ".[test,dev]"
ruff check .
mypy async_tasks executors
bash scripts/test.sh "$@"

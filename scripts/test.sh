#!/usr/bin/env bash
# Install everything the tests need on a fresh machine, then run the whole suite.
#   bash scripts/test.sh            # any extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: curl (DEMO_GUIDE examples run as written), Debian's Chromium
# (the dashboard's browser test; Playwright drives it, it never downloads a browser)
# and redis-server (the Redis backend's tests start their own, without persistence).
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v chromium >/dev/null || missing+=(chromium)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[test]"

python -m pytest "$@"

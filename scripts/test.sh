#!/usr/bin/env bash
# Everything CI checks, on a fresh machine or again after a change: install what is
# missing (once), then lint, format, strict types (package, executors, demos, tests and
# the docs' examples) and the whole test suite. Any failure fails the script.
#   bash scripts/test.sh            # everything; extra arguments go to pytest
#   bash scripts/test.sh --fast     # the inner loop: unit and in-process API tests
# The tests run in parallel (pytest-xdist): the whole suite with one worker more than
# cores (browser and real-process tests spend seconds waiting on other processes,
# which another worker fills), the inner loop with one per core (it only computes).
# TEST_WORKERS=N chooses, 0 for none.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: curl (DEMO_GUIDE examples run as written), Debian's headless Chromium
# (browser tests; Playwright drives it, it never downloads a browser),
# redis-server (the Redis backend's tests start their own, without persistence),
# PostgreSQL (the PostgreSQL backend's tests make their own throwaway cluster with initdb;
# Debian keeps its programs in /usr/lib/postgresql/<version>/bin) and Node with npm
# (TypeScript checks the front-end kit's JavaScript).
# Installed without asking as root, in CI (CI set, as CI sets it) or with INSTALL_SYSTEM_PACKAGES=1;
# otherwise asked for on a terminal, or the one command to run is printed and the
# script stops: it never runs sudo on a developer's machine unasked.
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v npm >/dev/null || missing+=(nodejs npm)
command -v chromium-headless-shell >/dev/null || missing+=(chromium-headless-shell)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo "; fi
    command="${sudo}apt-get update && ${sudo}apt-get install -y ${missing[*]}"
    case "${CI:-}" in "" | false | 0) ci="" ;; *) ci=1 ;; esac
    if [ "$(id -u)" = 0 ] || [ -n "$ci" ] || [ "${INSTALL_SYSTEM_PACKAGES:-}" = 1 ]; then
        answer=y
    elif [ -t 0 ] && [ -t 1 ]; then
        read -r -p "The tests need ${missing[*]}. Install now ($command)? [y/N] " answer || answer=n
    else
        answer=n
    fi
    if [ "$answer" != y ] && [ "$answer" != Y ]; then
        echo "scripts/test.sh: the tests need ${missing[*]}; install them with:" >&2
        echo "    $command" >&2
        echo "(or run again with INSTALL_SYSTEM_PACKAGES=1)" >&2
        exit 1
    fi
    ${sudo}apt-get update -qq
    DEBIAN_FRONTEND=noninteractive ${sudo}apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The venv is (re)installed only when pyproject.toml changed since the last install.
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    python -m pip install -q --upgrade pip
    python -m pip install -q -e ".[test,dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# The compiled modules (and pytest's assert-rewritten test modules) are kept in
# __pycache__ between runs: without them every test process compiles them again.
unset PYTHONDONTWRITEBYTECODE

# The front-end kit's npm packages (TypeScript; axe-core, React and esbuild for the
# browser tests), pinned in tests/frontend/package.json: installed once, again only when
# that file changes.
frontend=tests/frontend
frontend_stamp="$frontend/node_modules/.installed-$(sha256sum $frontend/package.json | cut -c1-16)"
if [ ! -f "$frontend_stamp" ]; then
    (cd "$frontend" && npm install --no-audit --no-fund --prefer-offline --loglevel=error >/dev/null)
    rm -f "$frontend"/node_modules/.installed-*
    touch "$frontend_stamp"
fi

ruff check .
ruff format --check .
# On a fresh clone __pycache__ is empty, and each pytest worker would compile the package
# and rewrite the test modules' asserts itself (2.5 s of CPU a worker). One collection run
# beside mypy (which uses one core) writes them once for every worker and server process.
python -m pytest --collect-only -q -p no:xdist -p no:cacheprovider >/dev/null 2>&1 &
collecting=$!
bash scripts/typecheck.sh
# The dashboard's and the client module's JavaScript (// @ts-check, JSDoc types), checked
# against /client.d.ts with the docs' React recipe.
"$frontend/node_modules/.bin/tsc" -p "$frontend"

wait "$collecting" || true # a collection error is reported by the run below

workers=$(($(nproc) + 1))
if [ "${1:-}" = "--fast" ]; then
    shift
    workers=auto
    # What the markers leave; tests/browser and tests/battery hold only e2e and battery
    # tests, so they are not even collected.
    set -- -m "not e2e and not battery" --ignore=tests/browser --ignore=tests/battery "$@"
fi
python -m pytest -n "${TEST_WORKERS:-$workers}" "$@"

"""Launcher for the shutdown tests: ``python -m tests.serve_with_stubborn``.

The same server as ``async-tasks serve`` (settings from the environment, the same
`run_server` shutdown path), with the test-only stubborn executors registered too.
"""

from __future__ import annotations

import sys

from async_tasks.server import run_server
from async_tasks.settings import Settings
from async_tasks.web.app import create_app
from tests.stubborn import STUBBORN_EXECUTORS


def main() -> int:
    settings = Settings.from_env()
    return run_server(create_app(settings, STUBBORN_EXECUTORS), settings)


if __name__ == "__main__":
    sys.exit(main())

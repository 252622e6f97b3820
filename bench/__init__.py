"""The benchmark suite: ``python -m bench`` (see bench/README.md). Not collected by pytest."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar import Litestar

#: The task server's app factory, ``module:function`` as uvicorn's ``--factory`` takes it.
#: Every server and in-process measurement of the task server goes through it: if the
#: factory moves, this is the one line to change.
TASK_APP_FACTORY = "async_tasks.web:create_app"


def task_app_factory() -> Callable[..., Litestar]:
    """Import and return the function named by `TASK_APP_FACTORY`."""
    module, _, name = TASK_APP_FACTORY.partition(":")
    factory: Callable[..., Litestar] = getattr(importlib.import_module(module), name)
    return factory

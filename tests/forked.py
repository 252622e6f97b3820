"""Run ``async-tasks`` commands as real processes without paying Python's start-up each time.

The first command starts a fork server (`multiprocessing`'s ``forkserver``) that imports
the project and its libraries once; every command is then a fresh process forked from
it, with its own environment, PID and output file, that runs the same entry point as
the ``async-tasks`` console script (`async_tasks.cli.main`) with the command's
arguments. A restart in a test costs the command's own start-up (building the app,
connecting), not a second or more of imports on a busy machine.

This module stays light: the fork server imports it to find `_run`.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import shlex
import sys
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from pathlib import Path

#: Imported once by the fork server: everything an API server or a worker loads.
PRELOAD = [
    "async_tasks.cli",
    "async_tasks.server",
    "async_tasks.worker",
    "async_tasks.web.app",
    "async_tasks.backends.redis",
    "async_tasks.backends.redis.channels",
    "async_tasks.backends.redis.worker",
    "executors.sample",
    "executors.api_call",
    "executors.file_processing",
    "executors.batch",
    "uvicorn",
    "uvicorn.lifespan.on",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.protocols.websockets.websockets_impl",
    "saq",
    "saq.queue.redis",
    "redis.asyncio",
    "hiredis",
]


def context() -> ForkServerContext:
    ctx = multiprocessing.get_context("forkserver")
    assert isinstance(ctx, ForkServerContext)
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def warm_up() -> None:
    """Start the fork server now (it imports in the background while other things start)."""
    context()
    multiprocessing.forkserver.ensure_running()


def split(line: str) -> tuple[dict[str, str], list[str]]:
    """``NAME=value ... async-tasks <args>`` as (the variables, the command's arguments)."""
    words = shlex.split(line)
    variables: dict[str, str] = {}
    while words and "=" in words[0] and words[0].split("=", 1)[0].isidentifier():
        name, _, value = words.pop(0).partition("=")
        variables[name] = value
    if not words or words[0] != "async-tasks":
        raise ValueError(f"not an async-tasks command: {line!r}")
    return variables, words[1:]


def start(line: str, env: dict[str, str], log: Path) -> BaseProcess:
    """Start the ``async-tasks`` command `line` (with its leading variables over `env`),
    its output appended to `log`."""
    variables, argv = split(line)
    process = context().Process(target=_run, args=(argv, {**env, **variables}, str(log)), name=line)
    process.start()
    return process


def _run(argv: list[str], env: dict[str, str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["async-tasks", *argv]
    from async_tasks.cli import main

    sys.exit(main(argv))

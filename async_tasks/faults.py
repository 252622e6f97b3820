"""Crash points: places where a test can have this process killed, exactly there.

Every hand-off between processes or round trips (a create answered, a job dequeued and
not yet started, an attempt done and not yet recorded, ...) calls `crash_point` with
the hand-off's name, so the fault suite can prove nothing is lost whatever dies there:

    task = await execution.create(task, ...)
    crash_point("create.after_store")

Normally that does nothing (one global read). A process started with
``ASYNC_TASKS_CRASH_POINT=create.after_store`` (or ``create.after_store:3``, the third
time there) kills itself with SIGKILL at that point: no cleanup, no ``finally``, no
other thread running on, as with the OOM killer or a pulled plug. With
``ASYNC_TASKS_CRASH_MARKER=<file>`` it first appends ``<pid> <point>`` to the file, so
the test tells that death from any other (`tests.faults.crash_points`).

The environment is read at the first crash point a process passes (and again in a
forked child), not at import: a fork server that imported this module hands its
children their environment after forking.
"""

from __future__ import annotations

import os
import signal
from typing import Literal

POINT = "ASYNC_TASKS_CRASH_POINT"
MARKER = "ASYNC_TASKS_CRASH_MARKER"

#: (point, passes until the crash), None when unarmed, False before the environment is read.
_armed: tuple[str, int] | Literal[False] | None = False


def crash_point(name: str) -> None:
    """Die here (SIGKILL) if this process was started to crash at `name`."""
    if _armed is not None:
        _reached(name)


def _reached(name: str) -> None:
    global _armed
    if _armed is False:
        point, _, passes = os.environ.get(POINT, "").partition(":")
        _armed = (point, int(passes or 1)) if point else None
    if not _armed or _armed[0] != name:
        return
    if _armed[1] > 1:
        _armed = (name, _armed[1] - 1)
        return
    marker = os.environ.get(MARKER)
    if marker:
        descriptor = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(descriptor, f"{os.getpid()} {name}\n".encode())
        os.close(descriptor)
    os.kill(os.getpid(), signal.SIGKILL)


def _forget() -> None:
    global _armed
    _armed = False


os.register_at_fork(after_in_child=_forget)

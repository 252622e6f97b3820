"""The test's side of crash points (`async_tasks.faults`): start a child armed to die at
a named point, then tell that it died there and nowhere else.

    crash = CrashPoint("create.after_store", tmp_path / "crashed")
    api = subprocess.Popen(command, env=crash.environ())
    ...                                  # send the request that reaches the point
    crash.wait(api)                      # returns once it died there; CrashMissed otherwise

A death counts only if the process ended by SIGKILL *and* wrote the marker line with
its own PID and this point just before: a kill from elsewhere, an exit, a crash at
another point all fail with a sentence saying which.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
from collections.abc import Mapping
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from async_tasks.faults import MARKER, POINT


class CrashMissed(AssertionError):
    """The child did not die at its crash point."""


class CrashPoint:
    """Arms a child process to die at `point` (the `passes`-th time it gets there),
    writing its marker line to the file `marker`."""

    def __init__(self, point: str, marker: Path, *, passes: int = 1) -> None:
        if not point or ":" in point or passes < 1:
            raise ValueError(f"a crash point is a name without ':' reached at least once, not {point!r} x {passes}")
        self.point = point
        self.marker = marker
        self.passes = passes

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The child's environment: `base` (this process's by default) and the two variables."""
        armed = self.point if self.passes == 1 else f"{self.point}:{self.passes}"
        return {**(os.environ if base is None else base), POINT: armed, MARKER: str(self.marker)}

    def reached(self, pid: int) -> bool:
        """Whether the process `pid` wrote that it is about to die at this point."""
        lines = self.marker.read_text().splitlines() if self.marker.exists() else []
        return f"{pid} {self.point}" in lines

    def check(self, pid: int, returncode: int | None) -> None:
        """Raise `CrashMissed` unless the process `pid`, ended with `returncode`
        (negative: the signal, as `subprocess` and `multiprocessing` give it), died here."""
        reached = self.reached(pid)
        if returncode == -signal.SIGKILL and reached:
            return
        if returncode is None:
            problem = "is still running"
        elif returncode == -signal.SIGKILL:
            problem = "was killed by SIGKILL, but not at its crash point"
        elif returncode < 0:
            problem = f"died of {signal.Signals(-returncode).name}"
        else:
            problem = f"exited with status {returncode}"
        where = "after writing its marker" if reached else "without reaching it"
        raise CrashMissed(f"process {pid}, armed to die at {self.point!r}, {problem} ({where})")

    def wait(self, process: subprocess.Popen[Any] | BaseProcess, timeout: float = 10) -> None:
        """Wait (on the process's exit, no polling) until `process` has ended, at most
        `timeout` s, and `check` that it died here."""
        pid = process.pid
        assert pid is not None, "the process was never started"
        if isinstance(process, BaseProcess):
            process.join(timeout)
        elif process.poll() is None:
            exited = os.pidfd_open(pid)
            try:
                select.select([exited], [], [], timeout)
            finally:
                os.close(exited)
        returncode = process.poll() if isinstance(process, subprocess.Popen) else process.exitcode
        self.check(pid, returncode)

    async def wait_async(self, process: subprocess.Popen[Any] | BaseProcess, limit: float = 10) -> None:
        """`wait` (with `limit` as its timeout) from an async test, in a worker thread so
        that the test's loop keeps running."""
        import anyio.to_thread

        await anyio.to_thread.run_sync(self.wait, process, limit, abandon_on_cancel=True)

"""Crash points on a toy child: it dies exactly at the point it was armed for, and any
other ending is told apart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from async_tasks.faults import MARKER, POINT
from tests.faults.crash_points import CrashMissed, CrashPoint

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
#: Three rounds of two hand-offs, each announced on stdout before its crash point.
TOY = """
from async_tasks.faults import crash_point
for round in range(3):
    for step in "ab":
        print(f"{step}{round}", flush=True)
        crash_point(f"step.{step}")
input()
print("done", flush=True)
"""


def run_toy(environ: dict[str, str]) -> subprocess.Popen[str]:
    """The toy child, started (it waits for a line on stdin at the end)."""
    command = [sys.executable, "-c", TOY]
    return subprocess.Popen(command, cwd=ROOT, env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def output(child: subprocess.Popen[str]) -> list[str]:
    return child.communicate("\n", timeout=10)[0].split()


def test_the_child_dies_exactly_at_its_point(tmp_path: Path) -> None:
    """Armed for step.b, the child dies there the first time: nothing after it runs."""
    crash = CrashPoint("step.b", tmp_path / "crashed")
    child = run_toy(crash.environ())
    crash.wait(child)
    assert output(child) == ["a0", "b0"]
    assert crash.reached(child.pid)


def test_passes_choose_which_time_it_dies(tmp_path: Path) -> None:
    """Armed for the third pass at step.a, it runs two rounds first."""
    crash = CrashPoint("step.a", tmp_path / "crashed", passes=3)
    child = run_toy(crash.environ())
    crash.wait(child)
    assert output(child) == ["a0", "b0", "a1", "b1", "a2"]


def test_unarmed_the_points_do_nothing(tmp_path: Path) -> None:
    """Without the variable the child runs through; a check for a crash says it never got there."""
    environ = {name: value for name, value in os.environ.items() if name not in (POINT, MARKER)}
    child = run_toy(environ)
    assert output(child) == ["a0", "b0", "a1", "b1", "a2", "b2", "done"]
    with pytest.raises(CrashMissed, match="exited with status 0 \\(without reaching it\\)"):
        CrashPoint("step.b", tmp_path / "crashed").wait(child)


def test_a_kill_elsewhere_is_not_taken_for_the_crash(tmp_path: Path) -> None:
    """A child SIGKILLed by someone else, while armed for a point it never reached, is a miss."""
    crash = CrashPoint("step.never", tmp_path / "crashed")
    child = run_toy(crash.environ())
    assert child.stdout is not None and child.stdout.readline() == "a0\n"
    child.kill()
    with pytest.raises(CrashMissed, match="killed by SIGKILL, but not at its crash point"):
        crash.wait(child)
    child.communicate()


def test_a_child_other_than_the_one_armed_is_not_taken_for_it(tmp_path: Path) -> None:
    """The marker names the PID that wrote it: another process's crash does not count."""
    crash = CrashPoint("step.b", tmp_path / "crashed")
    child = run_toy(crash.environ())
    crash.wait(child)
    with pytest.raises(CrashMissed, match="killed by SIGKILL, but not at its crash point"):
        crash.check(child.pid + 1, -signal.SIGKILL)
    output(child)


#: Passes a point unarmed, then forks a child that is handed its environment after the
#: fork (as `tests.forked` does) and passes it again; prints the child's PID and exit code.
FORKING = """
import os, sys
from async_tasks.faults import crash_point
crash_point("step.a")
child = os.fork()
if child == 0:
    os.environ.update(dict(pair.split("=", 1) for pair in sys.argv[1:]))
    crash_point("step.a")
    os._exit(0)
print(child, os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), flush=True)
"""


def test_a_forked_child_reads_its_own_environment(tmp_path: Path) -> None:
    """The variable is read again in a forked child, even when its parent, unarmed, already
    passed a point (a fork server hands its children their environment after the fork)."""
    crash = CrashPoint("step.a", tmp_path / "crashed")
    environ = {name: value for name, value in os.environ.items() if name not in (POINT, MARKER)}
    armed = [f"{POINT}=step.a", f"{MARKER}={crash.marker}"]
    parent = subprocess.run(
        [sys.executable, "-c", FORKING, *armed], cwd=ROOT, env=environ, capture_output=True, text=True, check=True
    )
    child, returncode = map(int, parent.stdout.split())
    crash.check(child, returncode)

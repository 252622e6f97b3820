"""How long a task should still take ("3rd in line · about 12 s"): an estimate from its
executor's recent run times and, once it runs, its own pace.

The rule (`estimate`), stated once for every client:

- **Typical run time**: the median of the executor's last completed attempts
  (`RECENT_DURATIONS` of them, kept by the store for every process, `TaskStore.recent_durations`).
- **A task waiting in its session's line** at place `k`: the session works through its line
  `lanes` tasks at a time (the tasks it runs now, at least one); the task starts after
  ``ceil(k / lanes)`` typical runs and finishes one typical run later. Without a typical run
  time (the executor never completed here) there is no estimate.
- **A running task** at progress `p` % after `elapsed` ms: the typical time left
  (``typical - elapsed``, not below 0) blended toward the task's own pace
  (``elapsed * (100 - p) / p``) as its progress grows (weight ``p / 100``), so an unusually
  long or short run corrects itself. Without a typical run time, its own pace alone once
  it has reached `MIN_PACE_PERCENT`.
- Anything else (a task not started, delayed, finished) has no estimate.

Estimates are relative to when they are made (milliseconds from then), so clients count
down on their own clock.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Final

import msgspec

from async_tasks.task import Task, TaskStatus

#: Progress (%) from which a running task's own pace is trusted without a typical run time.
MIN_PACE_PERCENT: Final = 5


class Estimate(msgspec.Struct, rename="camel", kw_only=True):
    """When a waiting or running task should start and finish, in ms from when it was made."""

    #: Until it starts (a task waiting in line); None once it runs.
    starts_in_ms: int | None = None
    #: Until it finishes.
    finishes_in_ms: int
    #: The executor's typical run time (the median of its recent completed runs); None when
    #: it has none yet and the estimate is the task's own pace.
    typical_ms: int | None = None
    #: How many recent runs that median is of.
    samples: int = 0


def typical(durations: Sequence[int]) -> int | None:
    """The median of `durations` (ms), or None without any."""
    return round(statistics.median(durations)) if durations else None


def estimate(
    task: Task,
    *,
    now_ms: int,
    durations: Sequence[int],
    position: int | None = None,
    lanes: int = 1,
) -> Estimate | None:
    """The estimate for `task` (see the module docstring); `position` is its place in its
    session's line (pending tasks), `lanes` how many of the session's tasks run at once."""
    usual = typical(durations)
    if task.status is TaskStatus.PENDING:
        if position is None or usual is None:
            return None
        starts = math.ceil(position / max(1, lanes)) * usual
        return Estimate(starts_in_ms=starts, finishes_in_ms=starts + usual, typical_ms=usual, samples=len(durations))
    if task.status is not TaskStatus.RUNNING or task.started_at is None:
        return None
    elapsed = max(0, now_ms - task.started_at)
    percent = min(max(float(task.progress), 0.0), 100.0)
    pace = elapsed * (100 - percent) / percent if percent > 0 else None
    if usual is None:
        if pace is None or percent < MIN_PACE_PERCENT:
            return None
        return Estimate(finishes_in_ms=round(pace))
    left = max(usual - elapsed, 0)
    if pace is not None:
        weight = percent / 100
        left = round((1 - weight) * left + weight * pace)
    return Estimate(finishes_in_ms=left, typical_ms=usual, samples=len(durations))

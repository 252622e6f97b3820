"""What the ``async-tasks`` command shows in a terminal (with rich): statuses in colour,
a task followed to its end with a progress bar (`watch_task`: its step, the run time, what
it waits for and its latest log lines), durations and JSON kept to one line.

The commands themselves, and what they ask the server, are `async_tasks.cli`'s.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.progress import Progress

    from async_tasks.client import TaskClient

STATUS_STYLES = {
    "pending": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


def consoles() -> tuple[Console, Console]:
    from rich.console import Console

    # soft_wrap: a message stays one line (a terminal wraps it, a pipe or a log keeps it whole).
    return Console(highlight=False, soft_wrap=True), Console(stderr=True, highlight=False, soft_wrap=True)


def escape(text: Any) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))


def status_text(status: str) -> str:
    return f"[bold {STATUS_STYLES.get(status, 'white')}]{escape(status)}[/]"


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def short_json(data: Any, limit: int = 400) -> str:
    text = json.dumps(data, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 1] + "…"


#: Width of the progress line's step column: the bar stays put as step names change.
STEP_WIDTH = 22
BAR_WIDTH = 24


def format_duration(seconds: float) -> str:
    """``4.2s``, ``1m15s``, ``2h03m07s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s"


class RunTime:
    """How long the watched task has run: from the server's ``startedAt`` (to its
    ``completedAt`` once it ended), ticking on this machine's clock while it runs."""

    def __init__(self) -> None:
        self.started_ms: float | None = None
        self.ended_ms: float | None = None

    def observe(self, times: Mapping[str, Any]) -> None:
        """Take ``startedAt`` and ``completedAt`` from a status or a task (absent: not started)."""
        self.started_ms, self.ended_ms = _epoch_ms(times.get("startedAt")), _epoch_ms(times.get("completedAt"))

    def seconds(self) -> float | None:
        if self.started_ms is None:
            return None
        end = self.ended_ms if self.ended_ms is not None else time.time() * 1000
        return max(0.0, (end - self.started_ms) / 1000)


def _epoch_ms(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


#: Log lines shown under the progress bar (the latest).
LOG_TAIL = 6


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``11th``, ``22nd``."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def about(seconds: float) -> str:
    """``about 12 s``, ``about 3 min``, ``about 2 h``."""
    if seconds < 60:
        return f"about {round(seconds)} s"
    if seconds < 3600:
        return f"about {round(seconds / 60)} min"
    return f"about {round(seconds / 3600)} h"


class Outlook:
    """Where the watched task stands: its place in line and the server's estimate, counted
    down on this machine's clock from when it arrived."""

    def __init__(self) -> None:
        self.status = ""
        self.position: int | None = None
        self.starts_at: float | None = None
        self.finishes_at: float | None = None

    def observe(self, update: Mapping[str, Any]) -> None:
        self.status = str(update.get("status") or "")
        position = update.get("queuePosition")
        self.position = position if isinstance(position, int) and not isinstance(position, bool) else None
        eta = update.get("eta")
        eta = eta if isinstance(eta, dict) else {}
        now = time.monotonic()
        starts, finishes = _epoch_ms(eta.get("startsInMs")), _epoch_ms(eta.get("finishesInMs"))
        self.starts_at = None if starts is None else now + starts / 1000
        self.finishes_at = None if finishes is None else now + finishes / 1000

    def text(self) -> str:
        """``3rd in line · starts in about 12 s``, ``about 8 s left``, or ``""``."""
        now = time.monotonic()
        parts = []
        if self.status == "pending" and self.position:
            parts.append(f"{ordinal(self.position)} in line")
        if self.status == "pending" and self.starts_at is not None:
            wait = self.starts_at - now
            parts.append("starting any moment now" if wait < 1 else f"starts in {about(wait)}")
        elif self.status == "running" and self.finishes_at is not None:
            left = self.finishes_at - now
            parts.append("finishing any moment now" if left < 1 else f"{about(left)} left")
        return " · ".join(parts)


def log_text(line: Mapping[str, Any]) -> str:
    """A log line as the watch shows it: its time (this machine's zone), message and data."""
    at = _epoch_ms(line.get("at"))
    clock = time.strftime("%H:%M:%S", time.localtime(at / 1000)) if at is not None else "--:--:--"
    text = f"{clock}  {line.get('message', '')}"
    if line.get("data") is not None:
        text += "  " + short_json(line["data"], 80)
    return text


def progress_bar(
    console: Console, run_time: RunTime, outlook: Outlook | None = None, log: Sequence[str] = ()
) -> Progress:
    """The progress line of `watch`: spinner, step, bar, percent, run time, where the task
    stands (place in line, time left), step description; the latest log lines under it.
    Every column but the last has a fixed width, so the bar stays put as steps change."""
    from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, TaskProgressColumn, TextColumn
    from rich.progress import Task as Bar
    from rich.table import Column
    from rich.text import Text

    class RunTimeColumn(ProgressColumn):
        def render(self, task: Bar) -> Text:
            seconds = run_time.seconds()
            return Text("-" if seconds is None else format_duration(seconds), style="progress.elapsed")

    class OutlookColumn(ProgressColumn):
        def render(self, task: Bar) -> Text:
            return Text(outlook.text() if outlook is not None else "", style="yellow")

    class WithLog(Progress):
        def get_renderables(self) -> Iterable[RenderableType]:
            yield self.make_tasks_table(self.tasks)
            for line in log:
                yield Text(f"  {line}", style="dim", no_wrap=True, overflow="ellipsis")

    return WithLog(
        SpinnerColumn(),
        TextColumn(
            "[bold]{task.fields[step]}",
            table_column=Column(width=STEP_WIDTH, no_wrap=True, overflow="ellipsis"),
        ),
        BarColumn(bar_width=BAR_WIDTH),
        TaskProgressColumn(),
        RunTimeColumn(table_column=Column(min_width=7, justify="right")),
        OutlookColumn(table_column=Column(no_wrap=True)),
        # The description takes what is left of the line (and is cut short), never the bar.
        TextColumn("[dim]{task.fields[detail]}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
        console=console,
        expand=True,
    )


def _end_reason(task: Mapping[str, Any] | None, status: str) -> str:
    """Why the task ended as `status`, from its last history entry: `` (shutdown)``."""
    history = (task or {}).get("history") or []
    entry = history[-1] if isinstance(history, list) and history else None
    if not isinstance(entry, dict) or entry.get("status") != status or not entry.get("reason"):
        return ""
    reason = str(entry["reason"])
    if reason.startswith(status + " "):
        reason = reason[len(status) + 1 :]
    return "" if reason == status else f" ({escape(reason)})"


def _final_task(client: TaskClient, task_id: str) -> dict[str, Any] | None:
    """The task as it ended, or None when the server cannot say (it is shutting down)."""
    import httpx

    from async_tasks.client import TaskApiError

    try:
        return client.get_task(task_id)
    except (TaskApiError, httpx.TransportError):
        return None


def watch_task(client: TaskClient, task_id: str, name: str | None = None) -> int:
    """Show a progress bar until the task ends: 0 when it completed, 1 when it failed or was cancelled.

    The run time shown is the server's (``startedAt``, ``completedAt``); while the
    task runs it ticks on this machine's clock.
    """
    out, err = consoles()
    run_time = RunTime()
    outlook = Outlook()
    log: deque[str] = deque(maxlen=LOG_TAIL)
    last: dict[str, Any] = {}
    task: dict[str, Any] | None = None
    try:
        with progress_bar(out, run_time, outlook, log) as progress:
            bar = progress.add_task(name or task_id, total=100, step="waiting", detail="")
            for update in client.watch(task_id):
                if "startedAt" in update:
                    run_time.observe(update)
                elif update.get("status") != last.get("status"):
                    # A stream event has no times: ask once per attempt.
                    run_time.observe(client.status(task_id) if update.get("status") == "running" else {})
                last = update
                outlook.observe(update)
                log.extend(log_text(line) for line in update.get("lines") or ())
                progress.update(
                    bar,
                    completed=float(update.get("progress") or 0),
                    step=escape(update.get("currentStep") or update.get("status") or ""),
                    detail=escape(update.get("currentStepDescription") or ""),
                )
            task = _final_task(client, task_id)
            if task is not None:
                run_time.observe(task)
    except KeyboardInterrupt:
        err.print(f"Stopped watching; the task keeps running (async-tasks cancel {task_id} to stop it).")
        return 130
    status = str(last.get("status", "unknown"))
    seconds = run_time.seconds()
    if status == "completed":
        took = f" in {format_duration(seconds)}" if seconds is not None else ""
        out.print(f"[bold green]✔[/] Task {task_id} {status_text(status)}{took}")
        if task is not None and task.get("result") is not None:
            out.print(f"Result: {escape(short_json(task['result']))}")
        return 0
    error = (task or last).get("error")
    detail = f": {escape(error)}" if error else ""
    err.print(f"[bold red]✘[/] Task {task_id} {status_text(status)}{_end_reason(task, status)}{detail}")
    return 1

"""The ``async-tasks`` command.

``async-tasks serve`` runs the server with uvicorn, honouring HOST, PORT and every
other setting; a bad setting stops it with one line naming the variable. ``--app
module:attribute`` (serve and worker) adds executors defined in code, or serves a
`TaskSystem` or an app of one (`async_tasks.loading`). With a
Redis backend (``--backend redis://...``), ``async-tasks worker`` runs the tasks.

The other commands talk to a running server (``--url``, before or after the
command, default $ASYNC_TASKS_URL or http://localhost:3000):
``submit EXECUTOR --param key=value ... [--watch]``,
``list``, ``status ID``, ``watch ID``, ``cancel ID``, ``retry ID``, ``delete ID``,
``executors`` and ``session``. They keep one session per server: its token is
stored in ~/.cache/async-tasks/session-<host>.json (or $ASYNC_TASKS_SESSION_FILE),
so ``submit`` and a later ``status`` see the same tasks. For a server with API_KEYS,
set $ASYNC_TASKS_API_KEY.

The help texts are plain (argparse shows them as written): no markup there.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from async_tasks.client.tokens import SESSION_FILE_ENV, load_session_token, save_session_token, session_file

if TYPE_CHECKING:
    import httpx
    from rich.console import Console, RenderableType
    from rich.progress import Progress

    from async_tasks.client import TaskClient


def serve(args: argparse.Namespace) -> int:
    from async_tasks.server import serve as serve_app

    return serve_app(
        host=args.host,
        port=args.port,
        backend=args.backend,
        with_worker=args.with_worker,
        concurrency=args.concurrency,
        app=args.app,
    )


def worker(args: argparse.Namespace) -> int:
    from async_tasks.worker import run_worker

    return run_worker(backend=args.backend, concurrency=args.concurrency, app=args.app, executors=args.executors)


# -- client commands (talk to a running server) ------------------------------------

URL_ENV = "ASYNC_TASKS_URL"
API_KEY_ENV = "ASYNC_TASKS_API_KEY"
DEFAULT_URL = "http://localhost:3000"
STATUS_STYLES = {
    "pending": "yellow",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


def default_url() -> str:
    return os.environ.get(URL_ENV) or DEFAULT_URL


def parse_params(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; a value is JSON when it parses (``2000``, ``true``, ``["a"]``), else a string."""
    params: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--param takes key=value, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def _consoles() -> tuple[Console, Console]:
    from rich.console import Console

    # soft_wrap: a message stays one line (a terminal wraps it, a pipe or a log keeps it whole).
    return Console(highlight=False, soft_wrap=True), Console(stderr=True, highlight=False, soft_wrap=True)


def _open_client(args: argparse.Namespace) -> TaskClient:
    from async_tasks.client import TaskClient

    url = args.url
    return TaskClient(
        url,
        token=load_session_token(url),
        on_token=lambda token: save_session_token(url, token),
        transport=args.transport,
        api_key=os.environ.get(API_KEY_ENV) or None,
    )


Command = Callable[[argparse.Namespace], int]


def _client_command(func: Callable[[argparse.Namespace, TaskClient], int]) -> Command:
    """Open a client for the command; turn API and connection errors into one line and exit 1."""

    @functools.wraps(func)
    def run(args: argparse.Namespace) -> int:
        import httpx

        from async_tasks.client import TaskApiError

        _, err = _consoles()
        try:
            with _open_client(args) as client:
                return func(args, client)
        except UsageError as exc:
            err.print(f"async-tasks {args.command}: {exc}", markup=False)
            return 2
        except TaskApiError as exc:
            err.print(f"[bold red]error:[/] {_escape(exc.message)} [dim]({exc.code}, HTTP {exc.status})[/]")
            return 1
        except httpx.TransportError as exc:
            err.print(
                f"[bold red]error:[/] cannot reach the server at {_escape(args.url)}: "
                f"{_escape(str(exc) or type(exc).__name__)}"
            )
            return 1

    return run


def _escape(text: Any) -> str:
    from rich.markup import escape

    return escape(str(text))


def _status_text(status: str) -> str:
    return f"[bold {STATUS_STYLES.get(status, 'white')}]{_escape(status)}[/]"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def _short_json(data: Any, limit: int = 400) -> str:
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
        text += "  " + _short_json(line["data"], 80)
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
    return "" if reason == status else f" ({_escape(reason)})"


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
    out, err = _consoles()
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
                    step=_escape(update.get("currentStep") or update.get("status") or ""),
                    detail=_escape(update.get("currentStepDescription") or ""),
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
        out.print(f"[bold green]✔[/] Task {task_id} {_status_text(status)}{took}")
        if task is not None and task.get("result") is not None:
            out.print(f"Result: {_escape(_short_json(task['result']))}")
        return 0
    error = (task or last).get("error")
    detail = f": {_escape(error)}" if error else ""
    err.print(f"[bold red]✘[/] Task {task_id} {_status_text(status)}{_end_reason(task, status)}{detail}")
    return 1


def _seconds(text: str) -> float:
    """A number of seconds from now, 0 or more."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return seconds


@_client_command
def submit(args: argparse.Namespace, client: TaskClient) -> int:
    params = parse_params(args.param)
    if args.description is not None:
        params["description"] = args.description
    if args.start_in is not None:
        params["startAt"] = int(time.time() * 1000 + args.start_in * 1000)
    task = client.demo(args.executor, **params)
    if args.json and not args.watch:
        _print_json(task)
        return 0
    out, _ = _consoles()
    out.print(
        f"Created task [bold]{task['id']}[/] ({_escape(task.get('name', ''))}) "
        f"in session {_escape(task.get('sessionKey', '?'))}"
    )
    if "startAt" in params:
        at = time.strftime("%H:%M:%S", time.localtime(params["startAt"] / 1000))
        out.print(f"It waits until {at} ({args.start_in:g} s from now), then starts.")
    if not args.watch:
        out.print(f"[dim]Follow it with: async-tasks watch {task['id']}[/]")
        return 0
    return watch_task(client, task["id"], task.get("name"))


@_client_command
def list_tasks(args: argparse.Namespace, client: TaskClient) -> int:
    from rich.table import Table

    tasks = client.list_tasks(args.status, executor=args.executor, limit=args.limit)
    if args.json:
        _print_json(tasks)
        return 0
    out, _ = _consoles()
    if not tasks:
        out.print("No tasks in this session" + (f" with status {args.status}." if args.status else "."))
        return 0
    table = Table(title=f"{len(tasks)} task(s)", title_justify="left")
    table.add_column("ID", no_wrap=True, style="bold")
    table.add_column("Name")
    table.add_column("Executor")
    table.add_column("Status")
    table.add_column("Progress", justify="right")
    table.add_column("Step")
    for t in tasks:
        table.add_row(
            t["id"] if args.full_ids else t["id"][:8],
            _escape(t.get("name", "")),
            _escape(t.get("executor", "")),
            _status_text(t["status"]),
            f"{float(t.get('progress') or 0):.0f}%",
            _escape(t.get("currentStep") or ""),
        )
    out.print(table)
    return 0


UUID_LENGTH = 36


def resolve_id(client: TaskClient, task_id: str) -> str:
    """A full task id from an id or a unique prefix of one (as `list` shows them)."""
    task_id = task_id.strip()
    if len(task_id) >= UUID_LENGTH or not task_id:
        return task_id
    matches = [t["id"] for t in client.list_tasks(limit=1000) if t["id"].startswith(task_id)]
    if len(matches) > 1:
        raise UsageError(f"{task_id!r} matches {len(matches)} tasks: give more of the id")
    return matches[0] if matches else task_id


@_client_command
def show_status(args: argparse.Namespace, client: TaskClient) -> int:
    args.id = resolve_id(client, args.id)
    status = client.status(args.id)
    if args.json:
        _print_json(status)
        return 0
    out, _ = _consoles()
    step = status.get("currentStep") or "—"
    if status.get("currentStepDescription"):
        step += f" — {status['currentStepDescription']}"
    out.print(f"Task {args.id}: {_status_text(status['status'])} {float(status.get('progress') or 0):.0f}%")
    out.print(f"  step:  {_escape(step)}")
    if status.get("error"):
        out.print(f"  error: [red]{_escape(status['error'])}[/]")
    return 0


@_client_command
def watch(args: argparse.Namespace, client: TaskClient) -> int:
    return watch_task(client, resolve_id(client, args.id))


def _action(name: str, past: str) -> Command:
    def command(args: argparse.Namespace, client: TaskClient) -> int:
        args.id = resolve_id(client, args.id)
        task = getattr(client, name)(args.id)
        if getattr(args, "json", False):
            _print_json(task)
            return 0
        out, _ = _consoles()
        out.print(f"{past} task {args.id}: now {_status_text(task['status'])}")
        if getattr(args, "watch", False):
            return watch_task(client, args.id, task.get("name"))
        return 0

    command.__name__ = name
    return _client_command(command)


cancel = _action("cancel", "Cancelled")
retry = _action("retry", "Retried")
start = _action("start", "Started")


@_client_command
def delete(args: argparse.Namespace, client: TaskClient) -> int:
    args.id = resolve_id(client, args.id)
    client.delete(args.id)
    out, _ = _consoles()
    out.print(f"Deleted task {args.id}")
    return 0


@_client_command
def executors(args: argparse.Namespace, client: TaskClient) -> int:
    from rich.table import Table

    found = client.executors()
    if args.json:
        _print_json(found)
        return 0
    out, _ = _consoles()
    table = Table(title="Executors", title_justify="left")
    table.add_column("Name", no_wrap=True, style="bold")
    table.add_column("Title")
    table.add_column("Params (default)")
    for executor in found:
        schema = executor.get("paramsSchema") or {}
        body = schema.get("$defs", {}).get(schema.get("$ref", "").rpartition("/")[2], schema)
        required = set(body.get("required") or [])
        params = []
        for key, prop in (body.get("properties") or {}).items():
            if key in required:
                params.append(f"{key} (required)")
            elif prop.get("default") is not None:
                params.append(f"{key}={json.dumps(prop['default'])}")
            else:
                params.append(key)
        table.add_row(_escape(executor["name"]), _escape(executor.get("title", "")), _escape(", ".join(params)))
    out.print(table)
    return 0


@_client_command
def session(args: argparse.Namespace, client: TaskClient) -> int:
    out, _ = _consoles()
    if args.forget:
        save_session_token(args.url, None)
        out.print(f"Forgot the stored session for {_escape(args.url)}")
        return 0
    info = client.new_session() if args.new else client.session()
    if args.json:
        _print_json({"sessionKey": info.get("sessionKey"), "sessionFile": str(session_file(args.url))})
        return 0
    out.print(f"Session {_escape(info.get('sessionKey'))}{' (new)' if args.new else ''}")
    out.print(
        f"[dim]token stored in {_escape(session_file(args.url))}[/]"
        if client.token
        else "[dim]no token: the server maps this client by its IP address[/]"
    )
    return 0


def _add_client_commands(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a --url given before the command (build_parser) is kept when none follows it.
    common.add_argument("--url", default=argparse.SUPPRESS, help=URL_HELP)
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print the raw JSON answer")

    cmd = commands.add_parser(
        "submit",
        parents=[common, as_json],
        help="create and start a task",
        description="Create and start a task of EXECUTOR (POST /demo/tasks/EXECUTOR).",
    )
    cmd.add_argument("executor", help="executor name (see: async-tasks executors)")
    cmd.add_argument(
        "--param",
        "-p",
        action="append",
        metavar="KEY=VALUE",
        help='a param; VALUE is JSON when it parses (2000, true, \'["a","b"]\'), else a string',
    )
    cmd.add_argument("--description", "-d", help="task description")
    cmd.add_argument(
        "--start-in",
        type=_seconds,
        metavar="SECONDS",
        help="start it this many seconds from now (the task waits pending until then)",
    )
    cmd.add_argument(
        "--watch",
        "-w",
        action="store_true",
        help="show a progress bar until the task ends; exit 1 if it fails or is cancelled",
    )
    cmd.set_defaults(func=submit)

    cmd = commands.add_parser("list", parents=[common, as_json], help="list this session's tasks")
    cmd.add_argument("--status", choices=list(STATUS_STYLES), help="only tasks in this status")
    cmd.add_argument("--executor", help="only tasks of this executor")
    cmd.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    cmd.add_argument(
        "--full-ids",
        action="store_true",
        help="show whole task ids (by default the first 8 characters, which commands accept)",
    )
    cmd.set_defaults(func=list_tasks)

    for name, func, text in (
        ("status", show_status, "show a task's status and current step"),
        ("watch", watch, "follow a task with a progress bar until it ends"),
        ("cancel", cancel, "cancel a pending or running task"),
        ("retry", retry, "run a failed or cancelled task again"),
        ("start", start, "start a pending task"),
        ("delete", delete, "delete a task that is not running"),
    ):
        parents = [common] if name in ("watch", "delete") else [common, as_json]
        cmd = commands.add_parser(name, parents=parents, help=text)
        cmd.add_argument("id", help="the task id, or a unique prefix of it (as the list command shows ids)")
        if name in ("retry", "start"):
            cmd.add_argument("--watch", "-w", action="store_true", help="then follow it with a progress bar")
        cmd.set_defaults(func=func)

    cmd = commands.add_parser("executors", parents=[common, as_json], help="list the executors and their params")
    cmd.set_defaults(func=executors)

    cmd = commands.add_parser("session", parents=[common, as_json], help="show (or renew) the CLI's session")
    group = cmd.add_mutually_exclusive_group()
    group.add_argument("--new", action="store_true", help="start a new, empty session and keep its token")
    group.add_argument("--forget", action="store_true", help="forget the stored token")
    cmd.set_defaults(func=session)


DESCRIPTION = "Run the async-tasks server, or submit, follow and manage tasks on a running one."
EPILOG = (
    "The client commands talk to the server at --url (given before or after the command). "
    "They keep one session per server: its token is stored in "
    f"~/.cache/async-tasks/ (or ${SESSION_FILE_ENV}), so consecutive commands see the same tasks. "
    "Run async-tasks COMMAND --help for a command's options."
)
URL_HELP = f"the server (default: ${URL_ENV} or {DEFAULT_URL})"
APP_HELP = (
    "executors defined in code, imported from the current directory (as uvicorn does): an executor class "
    "or a list of them, a TaskSystem, a Litestar app with AsyncTasksPlugin, or a function returning one"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="async-tasks", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--url", default=default_url(), help=URL_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser("serve", help="run the server (settings from the environment)")
    serve_cmd.add_argument("--host", help="bind address (default: $HOST or 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port (default: $PORT or 3000)")
    backend_help = "memory, or redis://host:port/db to share tasks between processes (default: $TASK_BACKEND or memory)"
    serve_cmd.add_argument("--backend", help=backend_help)
    serve_cmd.add_argument(
        "--with-worker", action="store_true", help="also run tasks in this process (Redis backend: a one-box setup)"
    )
    serve_cmd.add_argument("--concurrency", type=int, help="with --with-worker: tasks at once (default 10)")
    serve_cmd.add_argument("--app", metavar="MODULE:ATTRIBUTE", help=APP_HELP)
    serve_cmd.set_defaults(func=serve)
    worker_cmd = commands.add_parser(
        "worker",
        help="run tasks from a Redis backend's queue",
        description="Run tasks from the queue of TASK_BACKEND=redis://... until SIGTERM.",
    )
    worker_cmd.add_argument("--backend", help="redis://host:port/db (default: $TASK_BACKEND)")
    worker_cmd.add_argument(
        "--concurrency", type=int, help="tasks at once in this worker (default: $WORKER_CONCURRENCY or 10)"
    )
    worker_cmd.add_argument("--app", metavar="MODULE:ATTRIBUTE", help=APP_HELP)
    worker_cmd.add_argument(
        "--executors",
        metavar="NAME,NAME",
        help="run only these executors: tasks of others wait for a worker that runs them "
        "(default: $WORKER_EXECUTORS, or every registered executor)",
    )
    worker_cmd.set_defaults(func=worker)
    _add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None, *, transport: httpx.BaseTransport | None = None) -> int:
    """Run the command in `argv` (default: the process's arguments); its exit status.

    `transport` is the httpx transport of the client commands (tests run the app
    in-process through one); by default they connect to ``--url``.
    """
    args = build_parser().parse_args(argv)
    args.transport = transport
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

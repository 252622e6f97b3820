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

What they show in a terminal (colours, the progress bar of a followed task) is
`async_tasks.console`'s. The help texts are plain (argparse shows them as written): no
markup there.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from async_tasks.client.tokens import SESSION_FILE_ENV, load_session_token, save_session_token, session_file
from async_tasks.console import STATUS_STYLES, consoles, escape, print_json, status_text, watch_task

if TYPE_CHECKING:
    import httpx

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

        _, err = consoles()
        try:
            with _open_client(args) as client:
                return func(args, client)
        except UsageError as exc:
            err.print(f"async-tasks {args.command}: {exc}", markup=False)
            return 2
        except TaskApiError as exc:
            err.print(f"[bold red]error:[/] {escape(exc.message)} [dim]({exc.code}, HTTP {exc.status})[/]")
            return 1
        except httpx.TransportError as exc:
            err.print(
                f"[bold red]error:[/] cannot reach the server at {escape(args.url)}: "
                f"{escape(str(exc) or type(exc).__name__)}"
            )
            return 1

    return run


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
        print_json(task)
        return 0
    out, _ = consoles()
    out.print(
        f"Created task [bold]{task['id']}[/] ({escape(task.get('name', ''))}) "
        f"in session {escape(task.get('sessionKey', '?'))}"
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
        print_json(tasks)
        return 0
    out, _ = consoles()
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
            escape(t.get("name", "")),
            escape(t.get("executor", "")),
            status_text(t["status"]),
            f"{float(t.get('progress') or 0):.0f}%",
            escape(t.get("currentStep") or ""),
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
        print_json(status)
        return 0
    out, _ = consoles()
    step = status.get("currentStep") or "—"
    if status.get("currentStepDescription"):
        step += f" — {status['currentStepDescription']}"
    out.print(f"Task {args.id}: {status_text(status['status'])} {float(status.get('progress') or 0):.0f}%")
    out.print(f"  step:  {escape(step)}")
    if status.get("error"):
        out.print(f"  error: [red]{escape(status['error'])}[/]")
    return 0


@_client_command
def watch(args: argparse.Namespace, client: TaskClient) -> int:
    return watch_task(client, resolve_id(client, args.id))


def _action(name: str, past: str) -> Command:
    def command(args: argparse.Namespace, client: TaskClient) -> int:
        args.id = resolve_id(client, args.id)
        task = getattr(client, name)(args.id)
        if getattr(args, "json", False):
            print_json(task)
            return 0
        out, _ = consoles()
        out.print(f"{past} task {args.id}: now {status_text(task['status'])}")
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
    out, _ = consoles()
    out.print(f"Deleted task {args.id}")
    return 0


@_client_command
def executors(args: argparse.Namespace, client: TaskClient) -> int:
    from rich.table import Table

    found = client.executors()
    if args.json:
        print_json(found)
        return 0
    out, _ = consoles()
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
        table.add_row(escape(executor["name"]), escape(executor.get("title", "")), escape(", ".join(params)))
    out.print(table)
    return 0


@_client_command
def session(args: argparse.Namespace, client: TaskClient) -> int:
    out, _ = consoles()
    if args.forget:
        save_session_token(args.url, None)
        out.print(f"Forgot the stored session for {escape(args.url)}")
        return 0
    info = client.new_session() if args.new else client.session()
    if args.json:
        print_json({"sessionKey": info.get("sessionKey"), "sessionFile": str(session_file(args.url))})
        return 0
    out.print(f"Session {escape(info.get('sessionKey'))}{' (new)' if args.new else ''}")
    out.print(
        f"[dim]token stored in {escape(session_file(args.url))}[/]"
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
    backend_help = (
        "memory, or redis://host:port/db or postgresql://user@host/db to share tasks between processes "
        "(default: $TASK_BACKEND or memory)"
    )
    serve_cmd.add_argument("--backend", help=backend_help)
    serve_cmd.add_argument(
        "--with-worker",
        action="store_true",
        help="also run tasks in this process (Redis or PostgreSQL backend: a one-box setup)",
    )
    serve_cmd.add_argument("--concurrency", type=int, help="with --with-worker: tasks at once (default 10)")
    serve_cmd.add_argument("--app", metavar="MODULE:ATTRIBUTE", help=APP_HELP)
    serve_cmd.set_defaults(func=serve)
    worker_cmd = commands.add_parser(
        "worker",
        help="run tasks from a shared backend's queue (Redis or PostgreSQL)",
        description="Run tasks from the queue of TASK_BACKEND (redis://... or postgresql://...) until SIGTERM.",
    )
    worker_cmd.add_argument(
        "--backend", help="redis://host:port/db or postgresql://user@host/db (default: $TASK_BACKEND)"
    )
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

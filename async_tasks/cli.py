"""The ``async-tasks`` command.

``async-tasks serve`` runs the server with uvicorn, honouring HOST, PORT and every
other setting; a bad setting stops it with one line naming the variable.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from async_tasks.errors import ExecutorRegistrationError, SettingsError
from async_tasks.settings import Settings


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from async_tasks.app import create_app

    try:
        settings = Settings.from_env()
        app = create_app(settings)
    except (SettingsError, ExecutorRegistrationError) as exc:
        print(f"async-tasks: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=args.host or settings.host,
        port=args.port or settings.port,
        proxy_headers=settings.trust_proxy_headers,
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=max(1, settings.shutdown_grace_ms // 1000 + 1),
    )
    print(f"async-tasks serving on http://{config.host}:{config.port} (docs at /schema)", file=sys.stderr)
    uvicorn.Server(config).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="async-tasks", description=__doc__.split("\n\n")[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the server (settings from the environment)")
    serve_cmd.add_argument("--host", help="bind address (default: $HOST or 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port (default: $PORT or 3000)")
    serve_cmd.set_defaults(func=serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

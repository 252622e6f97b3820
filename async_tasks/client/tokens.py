"""Where the ``async-tasks`` command keeps its session token, one per server.

``~/.cache/async-tasks/session-<host>.json`` (``$XDG_CACHE_HOME`` respected), or the
file ``$ASYNC_TASKS_SESSION_FILE`` names, holds ``{"sessions": {url: {"token": ...}}}``,
readable by the user only; so ``submit`` and a later ``status`` see the same tasks.
A missing or unreadable file is no token. Pass `save_session_token` as a client's
``on_token`` to keep each token the server issues.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

SESSION_FILE_ENV = "ASYNC_TASKS_SESSION_FILE"


def session_file(url: str) -> Path:
    """Where the CLI keeps its session token for the server at `url`."""
    override = os.environ.get(SESSION_FILE_ENV)
    if override:
        return Path(override).expanduser()
    netloc = urlsplit(url).netloc or "default"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", netloc)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "async-tasks" / f"session-{safe}.json"


def _server_key(url: str) -> str:
    return url.rstrip("/")


def load_session_token(url: str) -> str | None:
    """The stored token for `url`, if any."""
    try:
        data = json.loads(session_file(url).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    entry = data.get("sessions", {}).get(_server_key(url)) if isinstance(data, dict) else None
    token = entry.get("token") if isinstance(entry, dict) else None
    return token if isinstance(token, str) and token else None


def save_session_token(url: str, token: str | None) -> None:
    """Store (or with None, forget) the token for `url`; the file is private to the user."""
    path = session_file(url)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    sessions = data.get("sessions") if isinstance(data, dict) else None
    if not isinstance(sessions, dict):
        sessions = {}
    if token:
        sessions[_server_key(url)] = {"token": token}
    else:
        sessions.pop(_server_key(url), None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump({"sessions": sessions}, out, indent=2)
    os.replace(tmp, path)

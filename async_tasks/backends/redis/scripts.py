"""The Lua scripts of the Redis backend: each is the prelude (`scripts/prelude.lua`:
settings, the record's JSON, events, clients, history; `prelude_delivery.lua`: delivery;
`prelude_changes.lua`: indexes, forgetting, the status change, Idempotency-Keys) followed
by its own file, whose first lines document its arguments: one text, one chunk for Redis.

Every script gets the same first six arguments (`Scripts.args`): the key prefix, the
channel prefix, the time (only a test clock passes one; otherwise Redis's ``TIME``), the
store's settings, whether the caller wants removed records back, and the operation id
that makes a re-sent write answer "done" instead of applying twice.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Final

#: The prelude's files, in the order they go before every script.
PRELUDE: Final = ("prelude", "prelude_delivery", "prelude_changes")
#: The scripts.
NAMES: Final = (
    "claim",
    "create",
    "deliver",
    "expire",
    "finish",
    "forget_worker",
    "get",
    "poll",
    "position",
    "progress",
    "promote",
    "query",
    "queues",
    "redeliver",
    "remove",
    "retire",
    "sessions",
    "snapshot",
    "token",
    "transition",
    "trim",
    "verify",
    "worker",
    "workers",
)


@cache
def source(name: str) -> str:
    """The full text of script `name`: the prelude, then its own file."""
    if name not in NAMES:
        raise KeyError(name)
    folder = files(__package__) / "scripts"
    return "\n".join((folder / f"{part}.lua").read_text() for part in (*PRELUDE, name))

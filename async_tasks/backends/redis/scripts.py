"""The Lua scripts of the Redis backend: each is `scripts/prelude.lua` (settings, the
record's JSON, events, history, the status change, delivery) followed by its own file,
whose first lines document its arguments.

Every script gets the same first six arguments (`Scripts.args`): the key prefix, the
channel prefix, the time (only a test clock passes one; otherwise Redis's ``TIME``), the
store's settings, whether the caller wants removed records back, and the operation id
that makes a re-sent write answer "done" instead of applying twice.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Final

NAMES: Final = (
    "claim",
    "create",
    "deliver",
    "expire",
    "finish",
    "forget_worker",
    "get",
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
    return (folder / "prelude.lua").read_text() + "\n" + (folder / f"{name}.lua").read_text()

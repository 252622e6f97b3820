"""Which commands a fault applies to: predicates over a command as sent,
``[b"SET", b"key", b"value"]``.

    proxy.lose_reply(script(CREATE_LUA))          # our create script, as EVAL or EVALSHA
    proxy.lose_reply(command("SET", "INCR"), times=2)
    proxy.lose_reply(lambda c: c[0].upper() == b"SET" and c[1].startswith(b"test:"))
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

#: Tells whether a fault applies to this command (its name and arguments as sent).
Match = Callable[[list[bytes]], bool]

_EVAL = frozenset({b"EVAL", b"EVAL_RO"})
_EVALSHA = frozenset({b"EVALSHA", b"EVALSHA_RO"})
_SCRIPTS = _EVAL | _EVALSHA | {b"FCALL", b"FCALL_RO"}


def name(command: list[bytes]) -> str:
    """The command's name in capitals (``"EVALSHA"``), as the proxy counts it."""
    return command[0].upper().decode(errors="replace") if command else ""


def command(*names: str) -> Match:
    """Any command with one of these names (any case)."""
    wanted = frozenset(n.upper().encode() for n in names)
    return lambda sent: bool(sent) and sent[0].upper() in wanted


def script(body: str) -> Match:
    """The Lua script `body` run however redis-py sends it: EVAL with the body, or
    EVALSHA with its SHA1 (what `register_script` sends first). `body` is the exact text
    registered, prelude included."""
    source = body.encode()
    sha = hashlib.sha1(source).hexdigest().encode()

    def match(sent: list[bytes]) -> bool:
        if len(sent) < 2:
            return False
        verb = sent[0].upper()
        return (verb in _EVAL and sent[1] == source) or (verb in _EVALSHA and sent[1].lower() == sha)

    return match


def any_script(sent: list[bytes]) -> bool:
    """Any script or function run (EVAL, EVALSHA, FCALL and their read-only forms)."""
    return bool(sent) and sent[0].upper() in _SCRIPTS

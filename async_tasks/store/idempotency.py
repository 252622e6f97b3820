"""The memory store's Idempotency-Keys: which task each key of a session created.

Each session's keys, oldest first: key -> (task id, the request's fingerprint, when). They
outlive their tasks (and sessions) for the policy's window (IDEMPOTENCY_WINDOW_MS), and a
session keeps at most the policy's number of them (IDEMPOTENCY_KEYS): the oldest go first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from async_tasks.errors import IdempotentTaskRemoved
from async_tasks.store.base import idempotency_conflict

if TYPE_CHECKING:
    from async_tasks.store.base import Idempotency, StorePolicy
    from async_tasks.task import StoredTask


class IdempotencyKeys(dict[str, dict[str, tuple[str, bytes, int]]]):
    """Session key -> that session's keys (see the module docstring)."""

    def replay(
        self,
        session_key: str,
        idempotency: Idempotency,
        task_of: Callable[[str], StoredTask | None],
        now: int,
        policy: StorePolicy,
    ) -> StoredTask | None:
        """The task the key created, if it is still held (`task_of`); None when the key is
        free. `IdempotencyConflict` for another request under the same key,
        `IdempotentTaskRemoved` when its task is gone within the window."""
        keys = self.get(session_key)
        seen = keys.get(idempotency.key) if keys is not None else None
        if seen is None:
            return None
        task_id, fingerprint, at = seen
        task = task_of(task_id)
        window = policy.idempotency_window_ms
        if task is None and (window is None or at <= now - window):
            return None  # its task is gone and its window over (or there is none): the key is free
        if fingerprint != idempotency.fingerprint:
            raise idempotency_conflict(idempotency.key, task_id)
        if task is None:
            raise IdempotentTaskRemoved(idempotency.key, task_id)
        return task

    def remember(self, session_key: str, idempotency: Idempotency, task_id: str, now: int, policy: StorePolicy) -> None:
        keys = self.setdefault(session_key, {})
        keys.pop(idempotency.key, None)  # a key whose window ended starts again at the end
        keys[idempotency.key] = (task_id, idempotency.fingerprint, now)
        self.prune(session_key, now, policy)

    def prune(self, session_key: str, now: int, policy: StorePolicy) -> None:
        """Forget the session's keys past the window, and the oldest beyond the cap."""
        keys = self.get(session_key)
        if keys is None:
            return
        window, kept = policy.idempotency_window_ms, policy.idempotency_keys
        while keys:
            oldest = next(iter(keys))
            if len(keys) <= kept and (window is None or keys[oldest][2] > now - window):
                break
            del keys[oldest]
        if not keys:
            del self[session_key]

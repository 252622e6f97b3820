"""The operator's view across sessions: every session, every task, bulk cancel and retry,
the workers and the queues.

Sessions never see each other; this is the one door that sees them all, for whoever
runs the deployment (the web layer opens it only to ADMIN_API_KEYS, see
`async_tasks.web.api.admin`). It reads through the store's cross-session methods
(`TaskStore.list_sessions`, `query_all`, `find`) and the execution backend's
`workers` and `load_by_executor`; changes go through the same transitions as a
session's own cancel and retry, so the state machine, history and events are the same.

A bulk action names its tasks by id, or by a filter (the filters of ``GET /tasks``,
plus one session) of which it takes at most `limit`, newest first: the result says
which changed, which were skipped and why (a completed task cannot be cancelled), and
how many more matched. Each action is logged with who did it (`actor`: a key's name or
fingerprint, never the key); the task's history says only "by an administrator".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import msgspec

from async_tasks.errors import ShuttingDown, TaskSystemError
from async_tasks.execution.base import ExecutionLoad, WorkerInfo
from async_tasks.store.base import SessionPage, TaskFilter, TaskPage
from async_tasks.system import TaskSystem
from async_tasks.task import ACTIVE, RETRYABLE, Task

logger = logging.getLogger("async_tasks.admin")

#: Most tasks one bulk action changes (a filter matching more leaves the rest: `BulkResult.more`).
MAX_BULK = 1000
#: What a task's history says of an administrator's action (who it was is in the logs only).
CANCEL_REASON = "cancelled by an administrator"
RETRY_REASON = "retry requested by an administrator"


class Skipped(msgspec.Struct, rename="camel", kw_only=True):
    """A task a bulk action left as it was, and why (the contract's error code and sentence)."""

    id: str
    code: str
    message: str


class BulkResult(msgspec.Struct, rename="camel", kw_only=True):
    """What a bulk cancel or retry did."""

    #: The ids of the tasks it changed.
    changed: list[str]
    skipped: list[Skipped]
    #: Tasks the filter matched beyond `limit` (not looked at; run the action again).
    more: int = 0


class Admin:
    """The cross-session view of one `TaskSystem`."""

    def __init__(self, system: TaskSystem) -> None:
        self.system = system

    async def sessions(self, *, limit: int = 100, offset: int = 0) -> SessionPage:
        """Every session holding tasks, the most recently active first."""
        return await self.system.store.list_sessions(limit=limit, offset=offset)

    async def tasks(
        self,
        where: TaskFilter,
        *,
        session_key: str | None = None,
        limit: int | None = 100,
        offset: int = 0,
        cursor: str | None = None,
    ) -> TaskPage:
        """Tasks of every session (or of `session_key`) matching `where`, newest first."""
        if session_key is not None:
            return await self.system.store.query(session_key, where, limit=limit, offset=offset, cursor=cursor)
        return await self.system.store.query_all(where, limit=limit, offset=offset, cursor=cursor)

    async def task(self, task_id: str) -> Task:
        """A task of any session (`TaskNotFound` otherwise)."""
        return await self.system.store.find(task_id)

    async def workers(self) -> list[WorkerInfo]:
        return await self.system.execution.workers()

    async def queues(self) -> dict[str, ExecutionLoad]:
        """Running and waiting attempts by executor."""
        return await self.system.execution.load_by_executor()

    async def cancel(
        self,
        *,
        actor: str,
        ids: Sequence[str] | None = None,
        where: TaskFilter | None = None,
        session_key: str | None = None,
        limit: int = MAX_BULK,
    ) -> BulkResult:
        """Cancel the pending and running tasks named by `ids`, or matching `where`."""
        return await self._bulk("cancel", actor, ids, where, session_key, limit)

    async def retry(
        self,
        *,
        actor: str,
        ids: Sequence[str] | None = None,
        where: TaskFilter | None = None,
        session_key: str | None = None,
        limit: int = MAX_BULK,
    ) -> BulkResult:
        """Run the failed and cancelled tasks named by `ids`, or matching `where`, again (a
        fresh attempt each, as a session's own retry; the sessions' create rate is not
        charged: the operator is not one of the clients it protects against)."""
        return await self._bulk("retry", actor, ids, where, session_key, limit)

    async def _bulk(
        self,
        action: Literal["cancel", "retry"],
        actor: str,
        ids: Sequence[str] | None,
        where: TaskFilter | None,
        session_key: str | None,
        limit: int,
    ) -> BulkResult:
        limit = max(0, min(limit, MAX_BULK))
        if action == "retry" and not self.system.accepting:
            raise ShuttingDown()
        targets: list[Task | str]
        more = 0
        if ids is not None:
            unique = list(dict.fromkeys(ids))
            targets, more = list(unique[:limit]), max(0, len(unique) - limit)
        else:
            wanted = where or TaskFilter()
            if wanted.status is None:  # only the statuses the action applies to are looked at
                statuses = ACTIVE if action == "cancel" else RETRYABLE
                pages = [
                    await self.tasks(
                        msgspec.structs.replace(wanted, status=status), session_key=session_key, limit=limit
                    )
                    for status in sorted(statuses)
                ]
                found = sorted((t for page in pages for t in page.tasks), key=lambda t: t.created_at, reverse=True)
                targets = list(found[:limit])
                more = sum(page.total for page in pages) - len(targets)
            else:
                page = await self.tasks(wanted, session_key=session_key, limit=limit)
                targets, more = list(page.tasks), page.total - len(page.tasks)
        result = BulkResult(changed=[], skipped=[], more=more)
        for target in targets:
            task_id = target if isinstance(target, str) else target.id
            try:
                task = target if isinstance(target, Task) else await self.system.store.find(task_id)
                if action == "cancel":
                    await self.system.cancel_task(task.session_key, task.id, reason=CANCEL_REASON, decode=False)
                else:
                    await self._retry(task)
            except TaskSystemError as exc:
                result.skipped.append(Skipped(id=task_id, code=exc.code, message=exc.message))
            else:
                result.changed.append(task_id)
        if result.changed or result.skipped:
            verb = "cancelled" if action == "cancel" else "retried"
            changed = len(result.changed)
            logger.info(
                "Admin %s %s %d %s (%d skipped%s): %s",
                actor,
                verb,
                changed,
                "task" if changed == 1 else "tasks",
                len(result.skipped),
                f", {result.more} more matched" if result.more else "",
                " ".join(result.changed[:20]) + (" ..." if len(result.changed) > 20 else ""),
                extra={"reason": f"admin {action}"},
            )
        return result

    async def _retry(self, task: Task) -> None:
        if not self.system.accepting:
            raise ShuttingDown()
        await self.system.execution.retry(task.session_key, task.id, reason=RETRY_REASON)

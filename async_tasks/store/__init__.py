"""Where tasks live: the `TaskStore` seam and its implementations."""

from __future__ import annotations

from async_tasks.store.base import (
    CreateLimits,
    Idempotency,
    Retention,
    SessionCounts,
    StoreTotals,
    TaskFilter,
    TaskPage,
    TaskStore,
    TrimResult,
)
from async_tasks.store.memory import MemoryTaskStore

__all__ = [
    "CreateLimits",
    "Idempotency",
    "MemoryTaskStore",
    "Retention",
    "SessionCounts",
    "StoreTotals",
    "TaskFilter",
    "TaskPage",
    "TaskStore",
    "TrimResult",
]

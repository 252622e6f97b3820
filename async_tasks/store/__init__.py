"""Where tasks live: the `TaskStore` seam and its implementations."""

from __future__ import annotations

from async_tasks.store.base import (
    CreateLimits,
    Expiry,
    ExpiryResult,
    Idempotency,
    Retention,
    SessionCounts,
    SessionPage,
    SessionSummary,
    StorePolicy,
    StoreTotals,
    TaskFilter,
    TaskPage,
    TaskStore,
    TrimResult,
)
from async_tasks.store.memory import MemoryTaskStore

__all__ = [
    "CreateLimits",
    "Expiry",
    "ExpiryResult",
    "Idempotency",
    "MemoryTaskStore",
    "Retention",
    "SessionCounts",
    "SessionPage",
    "SessionSummary",
    "StorePolicy",
    "StoreTotals",
    "TaskFilter",
    "TaskPage",
    "TaskStore",
    "TrimResult",
]

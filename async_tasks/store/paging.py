"""Pages of tasks, newest first, by filter and cursor (the memory store's `query` and
`query_all`).

A page walks the tasks newest first with their creation sequence numbers (what a cursor
names), skips to the cursor, and filters as it goes: without a filter, or by status only,
the total is a counter and the walk stops at the page's end; another filter counts every
task (bounded by MAX_TASKS).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

from async_tasks.errors import InvalidParams
from async_tasks.store.base import TaskFilter, TaskPage
from async_tasks.task import Task, TaskStatus


def page_of(
    newest_first: Iterator[tuple[int, Task]],
    where: TaskFilter,
    *,
    total: int,
    by_status: Callable[[TaskStatus], int],
    every: Callable[[], Iterable[Task]],
    limit: int | None,
    offset: int,
    cursor: str | None,
) -> TaskPage:
    """One page of `newest_first` (``(sequence number, task)`` pairs): `total` is how many
    there are, `by_status` how many of a status, `every` all of them (to count a filter)."""
    end = None if limit is None else offset + limit
    if cursor is not None:
        below = cursor_number(cursor)
        newest_first = itertools.dropwhile(lambda pair: pair[0] >= below, newest_first)
    if where.is_empty:
        count = total
    elif where.executor is None and where.tag is None and where.dead_letter is None:
        # Status only: the total is a counter, and the walk stops at the page's end.
        assert where.status is not None
        count = by_status(where.status)
        newest_first = (pair for pair in newest_first if matches(pair[1], where))
    else:
        count = sum(1 for task in every() if matches(task, where))
        newest_first = (pair for pair in newest_first if matches(pair[1], where))
    page = list(itertools.islice(newest_first, offset, None if end is None else end + 1))
    more = end is not None and len(page) > end - offset
    page = page[: None if end is None else end - offset]
    next_cursor = str(page[-1][0]) if more and page else None
    return TaskPage([task for _, task in page], count, next_cursor)


def matches(task: Task, where: TaskFilter) -> bool:
    if where.status is not None and task.status is not where.status:
        return False
    if where.executor is not None and task.executor != where.executor:
        return False
    if where.tag is not None and where.tag not in task.tags:
        return False
    return where.dead_letter is None or task.dead_lettered is where.dead_letter


def cursor_number(cursor: str) -> int:
    """A page's cursor as the sequence number it names (the API checks its shape)."""
    try:
        return int(cursor)
    except ValueError:
        raise InvalidParams(f"cursor {cursor!r} is not one a page gave.", field="cursor") from None

"""Per-client budgets and fair shares of the shared pools, on every store (issue 20).

A session belongs to the client that created it. At its own budget a client gives up its
least recently changed idle session, or its oldest finished task; in a full pool, room
comes from a client holding more than the newcomer (its oldest never-started task, its
least recently changed session where nothing runs), an idle session never blocks a new
one, and when nothing can go the create is refused and changes nothing.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from async_tasks.errors import CapacityExceeded, QuotaExceeded
from async_tasks.store.base import CreateLimits, TaskStore
from async_tasks.task import Task, TaskStatus
from async_tasks.testing import FakeClock
from tests.store.conftest import MakeStore
from tests.store.test_contract import new_task


class Books:
    """A store on a fake clock, and what it removed by itself (task id -> cause)."""

    def __init__(self, make_store: MakeStore) -> None:
        self.clock = FakeClock()
        self.store: TaskStore = make_store(self.clock)
        self.removed: dict[str, str | None] = {}
        self.store.events.on_removed.append(lambda task, cause: self.removed.__setitem__(task.id, cause))

    async def create(self, session: str, client: str, limits: CreateLimits, **status: Any) -> Task:
        """A task of `session` created by `client`, moved to `status` if given; a second later."""
        self.clock.advance(1)
        task, _ = await self.store.create(new_task(session), limits=msgspec.structs.replace(limits, client=client))
        target = status.get("status")
        if target is TaskStatus.RUNNING or target in (TaskStatus.COMPLETED, TaskStatus.FAILED):
            task = await self.store.transition(session, task.id, TaskStatus.RUNNING)
        if target not in (None, TaskStatus.PENDING, TaskStatus.RUNNING):
            task = await self.store.transition(session, task.id, target)
        return task

    async def held(self) -> tuple[int, int]:
        totals = await self.store.totals()
        return sum(totals.by_status.values()), totals.sessions


@pytest.fixture
def books(request: pytest.FixtureRequest, make_store: MakeStore) -> Books:
    if request.node.callspec.params.get("make_store") == "postgres":
        pytest.skip("per-client budgets and fair shares are written for the memory and Redis stores only")
    return Books(make_store)


def limits(**caps: int) -> CreateLimits:
    return msgspec.convert({"max_active_per_session": 100, **caps}, CreateLimits)


async def test_a_new_session_at_the_clients_budget_replaces_its_least_recent_idle_one(books: Books) -> None:
    """Budget of 3 sessions: the oldest idle one makes way; with none idle, 429 and no change."""
    caps = limits(max_sessions_per_client=3)
    old = await books.create("a1", "A", caps, status=TaskStatus.CANCELLED)
    await books.create("a2", "A", caps)
    newer = await books.create("a3", "A", caps, status=TaskStatus.COMPLETED)
    await books.create("a4", "A", caps)
    assert books.removed == {old.id: "evicted"} and (await books.store.counts("a1")).total == 0
    assert (await books.store.counts("a3")).total == 1  # the more recent idle session stays
    await books.create("a3", "A", caps)  # a3 busy now: nothing of A is idle
    before = await books.held()
    with pytest.raises(QuotaExceeded) as refused:
        await books.create("a5", "A", caps)
    assert refused.value.details["setting"] == "MAX_SESSIONS_PER_CLIENT"
    assert await books.held() == before and newer.id not in books.removed
    await books.create("b1", "B", caps)  # another client has its own budget


async def test_a_task_at_the_clients_budget_replaces_its_oldest_finished_one(books: Books) -> None:
    """Budget of 3 tasks across the client's sessions: its oldest finished task makes way; with
    nothing finished, 429 and no change."""
    caps = limits(max_tasks_per_client=3)
    done = await books.create("a1", "A", caps, status=TaskStatus.COMPLETED)
    await books.create("a2", "A", caps)
    await books.create("a2", "A", caps)
    await books.create("a1", "A", caps)  # in the session the finished task was in
    assert books.removed == {done.id: "evicted"} and (await books.store.counts("a1")).total == 1
    before = await books.held()
    with pytest.raises(QuotaExceeded) as refused:
        await books.create("a3", "A", caps)
    assert refused.value.details["setting"] == "MAX_TASKS_PER_CLIENT"
    assert await books.held() == before


async def test_a_full_task_pool_takes_from_the_largest_holder_never_the_newcomer(books: Books) -> None:
    """MAX_TASKS 6, A holding 4 never started and B 2: newcomer C takes A's oldest, then its
    next, until nobody holds more than C would; then C is refused and so is A."""
    caps = limits(max_tasks=6)
    a = [await books.create(f"a{n}", "A", caps) for n in range(4)]
    await books.create("b", "B", caps)
    await books.create("b", "B", caps)
    await books.create("c", "C", caps)
    await books.create("c", "C", caps)
    assert books.removed == {a[0].id: "evicted", a[1].id: "evicted"}
    before = await books.held()
    with pytest.raises(CapacityExceeded):
        await books.create("c", "C", caps)  # every client holds 2: equal shares
    with pytest.raises(CapacityExceeded):
        await books.create("a9", "A", caps)
    assert await books.held() == before == (6, 4)


async def test_a_full_task_pool_takes_finished_tasks_but_never_running_ones(books: Books) -> None:
    caps = limits(max_tasks=4)
    running = [await books.create("a", "A", caps, status=TaskStatus.RUNNING) for _ in range(2)]
    done = await books.create("a", "A", caps, status=TaskStatus.FAILED)
    await books.create("b", "B", caps)
    await books.create("c", "C", caps)  # A holds 3 > 0 + 1: its finished task goes
    assert books.removed == {done.id: "evicted"}
    with pytest.raises(CapacityExceeded):
        await books.create("d", "D", caps)  # A's others run
    statuses = [(await books.store.get("a", task.id)).status for task in running]
    assert statuses == [TaskStatus.RUNNING, TaskStatus.RUNNING]


async def test_a_full_session_pool_takes_the_largest_holders_least_recent_unwatched_session(books: Books) -> None:
    """MAX_SESSIONS 4, A holding 3: newcomer C takes A's least recently changed session where
    nothing runs or was started (a running task's session, or a retried one's, is kept)."""
    caps = limits(max_sessions=4)
    await books.create("a-running", "A", caps, status=TaskStatus.RUNNING)
    unstarted = await books.create("a-unstarted", "A", caps)
    await books.create("a-later", "A", caps)
    await books.create("b", "B", caps)
    await books.create("c", "C", caps)
    assert books.removed == {unstarted.id: "evicted"}
    assert (await books.held())[1] == 4


async def test_an_idle_session_never_blocks_a_new_one(books: Books) -> None:
    """With no larger holder, the least recently changed idle session of anyone makes way;
    with none idle, a new session is refused and nothing changes."""
    caps = limits(max_sessions=2)
    idle = await books.create("a", "A", caps, status=TaskStatus.COMPLETED)
    await books.create("b", "B", caps)
    await books.create("c", "C", caps)
    assert books.removed == {idle.id: "evicted"}
    before = await books.held()
    with pytest.raises(CapacityExceeded):
        await books.create("d", "D", caps)
    await books.create("c", "C", caps)  # an existing session is never refused by MAX_SESSIONS
    assert (await books.held())[1] == before[1]


async def test_a_session_belongs_to_the_client_that_made_it(books: Books) -> None:
    """Creates by another client in a session count against the session's client."""
    caps = limits(max_tasks_per_client=2)
    await books.create("s", "A", caps)
    await books.create("s", "B", caps)
    with pytest.raises(QuotaExceeded):
        await books.create("s", "C", caps)
    await books.create("other", "B", caps)


async def test_the_largest_holder_cannot_take_an_idle_session_of_a_smaller_one(books: Books) -> None:
    """An idle session makes way only for a client holding fewer sessions than its own."""
    caps = limits(max_sessions=3)
    await books.create("a1", "A", caps)
    await books.create("a2", "A", caps)
    await books.create("b", "B", caps, status=TaskStatus.COMPLETED)
    with pytest.raises(CapacityExceeded):
        await books.create("a3", "A", caps)
    assert books.removed == {}

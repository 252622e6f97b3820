"""The task-store contract, run against every implementation (`store` fixture).

Each test pins one promise of `async_tasks.store.base.TaskStore`: the state machine
and its history, compare-and-set on status and attempt, progress accepted only from
the running attempt, idempotent and quota-checked creation, counts kept without
scans, pages, removal and retention; and the store's own bounds: server-wide caps
checked with the insert, retention as a task finishes, capped histories, the
time limits of `expire` (on the store's clock), and task logs kept within their bounds
(lines and bytes per task: the oldest dropped and counted), with the run times that
estimates read.
"""

from __future__ import annotations

import itertools
import uuid

import anyio
import msgspec
import pytest

from async_tasks.errors import (
    CapacityExceeded,
    IdempotencyConflict,
    IdempotentTaskRemoved,
    InvalidTransition,
    QuotaExceeded,
    TaskNotFound,
)
from async_tasks.events import Event, LogEvent, TaskEvent
from async_tasks.store.base import (
    HISTORY_HEAD,
    RECENT_DURATIONS,
    CreateLimits,
    Expiry,
    Finish,
    Idempotency,
    Retention,
    StorePolicy,
    TaskFilter,
    TaskStore,
)
from async_tasks.task import TRANSITIONS, StoredTask, Task, TaskStatus, can_transition
from async_tasks.task_log import RECENT_LINES, LogLimits, LogLine
from async_tasks.testing import FakeClock
from tests.store.conftest import MakeStore

UNLIMITED = CreateLimits(max_active_per_session=1_000_000)
# In TaskStatus order (not a frozenset's, which varies between processes): pytest-xdist's
# workers must collect the same tests in the same order.
LEGAL = [(s, t) for s, t in itertools.product(TaskStatus, TaskStatus) if t in TRANSITIONS[s]]
ILLEGAL = [(s, t) for s, t in itertools.product(TaskStatus, TaskStatus) if t not in TRANSITIONS[s]]
# How to bring a fresh task into each status through legal moves only.
PATHS = {
    TaskStatus.PENDING: [],
    TaskStatus.RUNNING: [TaskStatus.RUNNING],
    TaskStatus.COMPLETED: [TaskStatus.RUNNING, TaskStatus.COMPLETED],
    TaskStatus.FAILED: [TaskStatus.RUNNING, TaskStatus.FAILED],
    TaskStatus.CANCELLED: [TaskStatus.CANCELLED],
}


def new_task(session: str = "s", *, executor: str = "x", tags: list[str] | None = None) -> Task:
    return Task(
        id=str(uuid.uuid4()), session_key=session, executor=executor, name="t", params={"n": 1}, tags=tags or []
    )


async def add(store: TaskStore, session: str = "s", status: TaskStatus = TaskStatus.PENDING, **fields: object) -> Task:
    task, replayed = await store.create(new_task(session, **fields), limits=UNLIMITED)  # type: ignore[arg-type]
    assert not replayed
    for step in PATHS[status]:
        task = await store.transition(session, task.id, step)
    return task


def test_transition_table_matches_the_design() -> None:
    """pending→running|cancelled, running→completed|failed|cancelled, failed|cancelled→pending."""
    assert set(LEGAL) == {
        (TaskStatus.PENDING, TaskStatus.RUNNING),
        (TaskStatus.PENDING, TaskStatus.CANCELLED),
        (TaskStatus.RUNNING, TaskStatus.COMPLETED),
        (TaskStatus.RUNNING, TaskStatus.FAILED),
        (TaskStatus.RUNNING, TaskStatus.CANCELLED),
        (TaskStatus.FAILED, TaskStatus.PENDING),
        (TaskStatus.CANCELLED, TaskStatus.PENDING),
    }


async def test_create_makes_a_pending_task_with_a_created_entry(store: TaskStore) -> None:
    task = await add(store)
    fetched = await store.get("s", task.id)
    assert fetched.status is TaskStatus.PENDING and isinstance(fetched, StoredTask)
    assert bytes(fetched.params) == b'{"n":1}' and fetched.decoded().params == {"n": 1}
    assert fetched.created_at > 0 and fetched.updated_at == fetched.created_at
    assert [(h.status, h.reason) for h in fetched.history] == [(TaskStatus.PENDING, "created")]


async def test_a_task_is_found_only_in_its_own_session(store: TaskStore) -> None:
    task = await add(store, "a")
    with pytest.raises(TaskNotFound):
        await store.get("b", task.id)
    with pytest.raises(TaskNotFound):
        await store.transition("b", task.id, TaskStatus.CANCELLED)
    with pytest.raises(TaskNotFound):
        await store.remove("b", task.id)
    assert not await store.report_progress("b", task.id, 0, 50, None, None)


@pytest.mark.parametrize(("source", "target"), LEGAL, ids=lambda s: s.value)
async def test_legal_transition_is_applied_and_recorded(
    store: TaskStore, source: TaskStatus, target: TaskStatus
) -> None:
    task = await add(store, status=source)
    before = len(task.history)
    moved = await store.transition("s", task.id, target, reason="because")
    assert moved.status is target and (await store.get("s", task.id)).status is target
    assert len(moved.history) == before + 1
    entry = moved.history[-1]
    assert (entry.previous, entry.status, entry.reason) == (source, target, "because")
    assert entry.at == moved.updated_at >= task.updated_at
    counts = (await store.counts("s")).by_status
    assert counts[target] == 1 and counts[source] == (1 if source is target else 0)


@pytest.mark.parametrize(("source", "target"), ILLEGAL, ids=lambda s: s.value)
async def test_illegal_transition_is_refused_and_changes_nothing(
    store: TaskStore, source: TaskStatus, target: TaskStatus
) -> None:
    task = await add(store, status=source)
    with pytest.raises(InvalidTransition) as caught:
        await store.transition("s", task.id, target)
    assert caught.value.code == "invalid_transition"
    after = await store.get("s", task.id)
    assert after.status is source and after.history == task.history


async def test_transition_is_a_compare_and_set_on_status_and_attempt(store: TaskStore) -> None:
    task = await add(store, status=TaskStatus.RUNNING)
    assert task.attempts == 1
    with pytest.raises(InvalidTransition):  # legal, but not from the status the caller saw
        await store.transition("s", task.id, TaskStatus.CANCELLED, expect={TaskStatus.PENDING})
    with pytest.raises(InvalidTransition):  # an older attempt cannot finish the task
        await store.transition("s", task.id, TaskStatus.COMPLETED, attempt=0)
    assert (await store.get("s", task.id)).status is TaskStatus.RUNNING
    done = await store.transition("s", task.id, TaskStatus.COMPLETED, expect={TaskStatus.RUNNING}, attempt=1)
    assert done.status is TaskStatus.COMPLETED and done.progress == 100


async def test_concurrent_finishes_of_one_attempt_leave_one_winner(store: TaskStore) -> None:
    task = await add(store, status=TaskStatus.RUNNING)
    outcomes: list[str] = []

    async def finish(target: TaskStatus) -> None:
        try:
            await store.transition("s", task.id, target, expect={TaskStatus.RUNNING}, attempt=1)
            outcomes.append(target.value)
        except InvalidTransition:
            outcomes.append("refused")

    async with anyio.create_task_group() as tg:
        for target in (TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.FAILED) * 3:
            tg.start_soon(finish, target)
    assert sorted(outcomes).count("refused") == 8
    final = await store.get("s", task.id)
    assert final.status.value in outcomes and len(final.history) == 3


async def test_running_stamps_attempts_and_times(store: TaskStore) -> None:
    task = await add(store, status=TaskStatus.RUNNING)
    assert task.attempts == 1 and task.started_at is not None and task.completed_at is None
    failed = await store.transition("s", task.id, TaskStatus.FAILED, error="Boom: it broke", dead_letter=True)
    assert failed.error == "Boom: it broke" and failed.completed_at is not None and failed.dead_lettered


async def test_retry_resets_the_attempt_and_keeps_history(store: TaskStore) -> None:
    task = await add(store, status=TaskStatus.RUNNING)
    assert await store.report_progress("s", task.id, 1, 60, "Working", "halfway")
    await store.transition("s", task.id, TaskStatus.FAILED, error="boom")
    retried = await store.transition("s", task.id, TaskStatus.PENDING, automatic=True)
    assert retried.auto_retries == 1
    again = await store.transition("s", task.id, TaskStatus.RUNNING)
    assert (again.progress, again.current_step, again.error, again.attempts) == (0, None, None, 2)
    assert [h.status for h in again.history] == [
        TaskStatus.PENDING,
        TaskStatus.RUNNING,
        TaskStatus.FAILED,
        TaskStatus.PENDING,
        TaskStatus.RUNNING,
    ]
    await store.transition("s", task.id, TaskStatus.CANCELLED)
    manual = await store.transition("s", task.id, TaskStatus.PENDING)
    assert manual.auto_retries == 0  # a manual retry gives the retry policy its budget back


async def test_a_failed_attempts_history_entry_keeps_its_error(store: TaskStore) -> None:
    """The retry clears the task's error; the history entry of the failure still says what went wrong."""
    task = await add(store, status=TaskStatus.RUNNING)
    await store.transition("s", task.id, TaskStatus.FAILED, error="RuntimeError: boom", reason="attempt failed")
    await store.transition("s", task.id, TaskStatus.PENDING, automatic=True)
    again = await store.transition("s", task.id, TaskStatus.RUNNING)
    assert again.error is None
    failures = [h for h in again.history if h.status is TaskStatus.FAILED]
    assert [(h.attempt, h.error, h.reason) for h in failures] == [(1, "RuntimeError: boom", "attempt failed")]
    assert all(h.error is None for h in again.history if h.status is not TaskStatus.FAILED)


async def test_progress_is_accepted_only_from_the_running_attempt(store: TaskStore) -> None:
    task = await add(store, status=TaskStatus.RUNNING)
    assert await store.report_progress("s", task.id, 1, 45, "Loading", "reading")
    seen = await store.get("s", task.id)
    assert (seen.progress, seen.current_step, seen.current_step_description) == (45, "Loading", "reading")
    assert await store.report_progress("s", task.id, 1, 50, None, "still reading")
    assert (await store.get("s", task.id)).current_step == "Loading"
    assert not await store.report_progress("s", task.id, 2, 90, None, None)  # not this attempt
    await store.transition("s", task.id, TaskStatus.CANCELLED)
    assert not await store.report_progress("s", task.id, 1, 80, "late", None)
    frozen = await store.get("s", task.id)
    assert frozen.progress == 50 and frozen.status is TaskStatus.CANCELLED


async def test_cancel_of_a_completed_task_says_why(store: TaskStore) -> None:
    task = await add(store, status=TaskStatus.COMPLETED)
    with pytest.raises(InvalidTransition, match="A completed task cannot be cancelled"):
        await store.transition("s", task.id, TaskStatus.CANCELLED)


async def test_an_idempotency_key_replays_its_task_and_refuses_another_request(store: TaskStore) -> None:
    key = Idempotency("key-1", b"fingerprint-a")
    first, replayed = await store.create(new_task(), limits=UNLIMITED, idempotency=key)
    assert not replayed
    again, replayed = await store.create(new_task(), limits=UNLIMITED, idempotency=key)
    assert replayed and again.id == first.id
    assert (await store.replay("s", key)) is not None
    assert await store.replay("other", key) is None  # keys are per session
    with pytest.raises(IdempotencyConflict):
        await store.create(new_task(), limits=UNLIMITED, idempotency=Idempotency("key-1", b"fingerprint-b"))
    with pytest.raises(IdempotencyConflict):
        await store.replay("s", Idempotency("key-1", b"fingerprint-b"))
    assert (await store.counts("s")).total == 1


async def test_concurrent_creates_with_one_key_make_one_task(store: TaskStore) -> None:
    key = Idempotency("same", b"f")
    made: list[tuple[str, bool]] = []

    async def create() -> None:
        task, replayed = await store.create(new_task(), limits=UNLIMITED, idempotency=key)
        made.append((task.id, replayed))

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(create)
    assert len({task_id for task_id, _ in made}) == 1
    assert sum(1 for _, replayed in made if not replayed) == 1
    assert (await store.counts("s")).total == 1


async def test_the_active_quota_is_checked_with_the_insert(store: TaskStore) -> None:
    limits = CreateLimits(max_active_per_session=2)
    await store.create(new_task(), limits=limits)
    second, _ = await store.create(new_task(), limits=limits)
    with pytest.raises(QuotaExceeded) as caught:
        await store.create(new_task(), limits=limits)
    assert caught.value.details == {"limit": 2, "active": 2}
    await store.create(new_task("other"), limits=limits)  # per session
    await store.transition("s", second.id, TaskStatus.CANCELLED)
    await store.create(new_task(), limits=limits)  # finished tasks do not count


async def test_concurrent_creates_never_exceed_the_quota(store: TaskStore) -> None:
    limits = CreateLimits(max_active_per_session=3)
    refused = 0

    async def create() -> None:
        nonlocal refused
        try:
            await store.create(new_task(), limits=limits)
        except QuotaExceeded:
            refused += 1

    async with anyio.create_task_group() as tg:
        for _ in range(10):
            tg.start_soon(create)
    assert refused == 7 and (await store.counts("s")).active == 3


async def test_counts_follow_every_change(store: TaskStore) -> None:
    for status in TaskStatus:
        await add(store, status=status)
    await add(store, "other", TaskStatus.RUNNING)
    counts = await store.counts("s")
    assert counts.by_status == dict.fromkeys(TaskStatus, 1) and counts.total == 5 and counts.active == 2
    totals = await store.totals()
    assert totals.sessions == 2 and totals.by_status[TaskStatus.RUNNING] == 2
    assert (await store.counts("nobody")).total == 0


async def test_average_duration_counts_completed_tasks_only(store: TaskStore) -> None:
    assert (await store.counts("s")).average_duration_ms == 0
    done = await add(store, status=TaskStatus.COMPLETED)
    await add(store, status=TaskStatus.FAILED)
    assert (await store.counts("s")).average_duration_ms == (done.completed_at or 0) - (done.started_at or 0)


async def test_query_pages_newest_first_with_filters(store: TaskStore) -> None:
    made = [await add(store, executor="a" if i % 2 else "b", tags=["odd"] if i % 2 else []) for i in range(7)]
    await store.transition("s", made[0].id, TaskStatus.CANCELLED)
    await store.transition("s", made[3].id, TaskStatus.CANCELLED)
    newest_first = [t.id for t in reversed(made)]

    page = await store.query("s", TaskFilter(), limit=3, offset=2)
    assert [t.id for t in page.tasks] == newest_first[2:5] and page.total == 7
    cancelled = await store.query("s", TaskFilter(status=TaskStatus.CANCELLED), limit=1)
    assert [t.id for t in cancelled.tasks] == [made[3].id] and cancelled.total == 2
    by_executor = await store.query("s", TaskFilter(executor="a"))
    assert [t.id for t in by_executor.tasks] == [made[5].id, made[3].id, made[1].id] and by_executor.total == 3
    tagged = await store.query("s", TaskFilter(tag="odd", status=TaskStatus.PENDING))
    assert [t.id for t in tagged.tasks] == [made[5].id, made[1].id] and tagged.total == 2
    assert (await store.query("s", TaskFilter(dead_letter=True))).total == 0
    assert (await store.query("nobody", TaskFilter())).total == 0


async def test_remove_forgets_a_task_but_never_a_running_one(store: TaskStore) -> None:
    running = await add(store, status=TaskStatus.RUNNING)
    with pytest.raises(InvalidTransition, match="Cancel it first"):
        await store.remove("s", running.id)
    key = Idempotency("k", b"f")
    done, _ = await store.create(new_task(), limits=UNLIMITED, idempotency=key)
    await store.transition("s", done.id, TaskStatus.CANCELLED)
    removed = await store.remove("s", done.id)
    assert removed.id == done.id
    with pytest.raises(TaskNotFound):
        await store.get("s", done.id)
    assert (await store.counts("s")).total == 1


async def test_an_idempotency_key_outlives_its_task_for_its_window(make_store: MakeStore) -> None:
    """A request re-sent with the key of a task that is gone is refused, never run twice,
    until the key's window ends; then the key is free."""
    clock = FakeClock()
    store = make_store(clock)
    store.policy = StorePolicy(idempotency_window_ms=60_000)
    key = Idempotency("k", b"f")
    done, _ = await store.create(new_task(), limits=UNLIMITED, idempotency=key)
    await store.transition("s", done.id, TaskStatus.CANCELLED)
    await store.remove("s", done.id)
    with pytest.raises(IdempotentTaskRemoved, match=done.id):
        await store.replay("s", key)
    with pytest.raises(IdempotentTaskRemoved):
        await store.create(new_task(), limits=UNLIMITED, idempotency=key)
    clock.advance(61)
    assert await store.replay("s", key) is None
    again, replayed = await store.create(new_task(), limits=UNLIMITED, idempotency=key)
    assert not replayed and again.id != done.id


async def test_trim_keeps_the_newest_finished_per_status_and_session(store: TaskStore) -> None:
    done = [await add(store, status=TaskStatus.COMPLETED) for _ in range(5)]
    failed = [await add(store, status=TaskStatus.FAILED) for _ in range(3)]
    [await add(store, status=TaskStatus.CANCELLED) for _ in range(2)]
    active = [await add(store, status=TaskStatus.RUNNING) for _ in range(2)]
    active += [await add(store) for _ in range(2)]
    other = [await add(store, "other", TaskStatus.COMPLETED) for _ in range(2)]

    result = await store.trim(Retention(max_completed=2, max_failed=1, max_cancelled=0))

    assert (result.completed, result.failed, result.cancelled, result.total) == (3, 2, 2, 7)
    remaining = {t.id for t in (await store.query("s", TaskFilter())).tasks}
    assert remaining == {t.id for t in done[-2:] + failed[-1:] + active}
    assert {t.id for t in (await store.query("other", TaskFilter())).tasks} == {t.id for t in other}
    assert (await store.counts("s")).by_status[TaskStatus.COMPLETED] == 2


async def test_trim_keeps_the_most_recently_finished(store: TaskStore) -> None:
    first = await add(store, status=TaskStatus.RUNNING)
    second = await add(store, status=TaskStatus.RUNNING)
    await store.transition("s", second.id, TaskStatus.COMPLETED)
    await store.transition("s", first.id, TaskStatus.COMPLETED)  # created first, finished last
    await store.trim(Retention(max_completed=1, max_failed=1, max_cancelled=1))
    assert [t.id for t in (await store.query("s", TaskFilter())).tasks] == [first.id]


async def test_trim_of_one_session_leaves_the_others(store: TaskStore) -> None:
    for session in ("a", "b"):
        for _ in range(2):
            await add(store, session, TaskStatus.COMPLETED)
    result = await store.trim(Retention(max_completed=0, max_failed=0, max_cancelled=0), "a")
    assert result.total == 2
    assert (await store.counts("a")).total == 0 and (await store.counts("b")).total == 2
    assert (await store.totals()).sessions == 1


async def test_every_change_is_published_to_the_event_source(store: TaskStore) -> None:
    events: list[Event] = []
    unsubscribe = store.events.subscribe(events.append)
    task = await add(store, status=TaskStatus.RUNNING)
    await store.report_progress("s", task.id, 1, 30, "Step", None)
    await store.transition("s", task.id, TaskStatus.COMPLETED, result={"ok": True})
    await store.remove("s", task.id)
    unsubscribe()
    assert [(e.type.value, e.status) for e in events] == [
        ("transition", "pending"),
        ("transition", "running"),
        ("progress", "running"),
        ("transition", "completed"),
        ("removed", "completed"),
    ]
    completed = events[3]
    assert isinstance(completed, TaskEvent)
    assert msgspec.json.decode(msgspec.json.encode(completed.result)) == {"ok": True}
    assert completed.attempt == 1 and completed.name == "t"


async def test_token_buckets_refill_at_their_rate(store: TaskStore) -> None:
    # 10 per second: a token every 100 ms, far more than four round trips to a store
    # on another machine take (on a busy machine too), so none refills between the takes.
    assert [await store.take_token("b", 10.0, 3) for _ in range(3)] == [0, 0, 0]
    wait = await store.take_token("b", 10.0, 3)
    assert 0 < wait <= 0.1
    assert await store.take_token("another", 10.0, 3) == 0


# -- the store's own bounds -------------------------------------------------------------


async def test_the_server_wide_task_cap_is_checked_with_the_insert(store: TaskStore) -> None:
    limits = CreateLimits(max_active_per_session=100, max_tasks=3)
    key = Idempotency("k", b"f")
    first, _ = await store.create(new_task("a"), limits=limits, idempotency=key)
    await store.create(new_task("b"), limits=limits)
    await store.create(new_task("c"), limits=limits)
    with pytest.raises(CapacityExceeded) as caught:
        await store.create(new_task("a"), limits=limits)
    assert caught.value.code == "capacity_exceeded" and caught.value.retry_after > 0
    assert caught.value.details["limit"] == 3 and "MAX_TASKS" in caught.value.message
    replayed, was_replay = await store.create(new_task("a"), limits=limits, idempotency=key)
    assert was_replay and replayed.id == first.id  # a replay adds nothing and is never refused
    assert sum((await store.totals()).by_status.values()) == 3
    await store.transition("a", first.id, TaskStatus.CANCELLED)
    await store.remove("a", first.id)
    await store.create(new_task("d"), limits=limits)  # room again


async def test_the_session_cap_refuses_only_new_sessions(store: TaskStore) -> None:
    limits = CreateLimits(max_active_per_session=100, max_sessions=2)
    await store.create(new_task("a"), limits=limits)
    await store.create(new_task("b"), limits=limits)
    with pytest.raises(CapacityExceeded, match="MAX_SESSIONS"):
        await store.create(new_task("c"), limits=limits)
    await store.create(new_task("a"), limits=limits)  # an existing session may still create
    assert (await store.totals()).sessions == 2


async def test_concurrent_creates_in_fresh_sessions_never_exceed_the_caps(store: TaskStore) -> None:
    """Every create is stored or refused, and the store ends full, never over its caps. (A
    store running the creates side by side, PostgreSQL's, may take one in another order, in
    which a client holding none makes room from one holding two: a create more, a task of
    that client's fewer.)"""
    limits = CreateLimits(max_active_per_session=100, max_sessions=5, max_tasks=8)
    created = refused = 0

    async def create(session: str) -> None:
        nonlocal created, refused
        try:
            await store.create(new_task(session), limits=limits)
            created += 1
        except CapacityExceeded:
            refused += 1

    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(create, f"s{i % 10}")
    totals = await store.totals()
    assert totals.sessions <= 5 and sum(totals.by_status.values()) == 8
    assert created + refused == 40 and created >= 8


async def test_retention_applies_when_a_task_finishes(store: TaskStore) -> None:
    store.policy = StorePolicy(retention=Retention(max_completed=2, max_failed=1, max_cancelled=0))
    events: list[Event] = []
    store.events.subscribe(events.append)
    done = [await add(store, status=TaskStatus.COMPLETED) for _ in range(4)]
    assert {t.id for t in (await store.query("s", TaskFilter())).tasks} == {done[2].id, done[3].id}
    assert [e.task_id for e in events if e.type.value == "removed"] == [done[0].id, done[1].id]
    cancelled = [await add(store, status=TaskStatus.CANCELLED) for _ in range(3)]
    # With a limit of 0 the task that just finished stays (until the next trim).
    assert [t.id for t in (await store.query("s", TaskFilter(status=TaskStatus.CANCELLED))).tasks] == [cancelled[-1].id]
    running = await add(store, status=TaskStatus.RUNNING)
    pending = await add(store)
    await add(store, "other", TaskStatus.COMPLETED)
    await add(store, "other", TaskStatus.COMPLETED)
    await add(store, "other", TaskStatus.COMPLETED)
    counts = (await store.counts("s")).by_status
    assert counts[TaskStatus.RUNNING] == 1 and counts[TaskStatus.PENDING] == 1  # never touched
    assert (await store.get("s", running.id)) and (await store.get("s", pending.id))
    assert (await store.counts("other")).by_status[TaskStatus.COMPLETED] == 2  # per session


async def test_a_failed_task_kept_by_retention_can_still_be_retried(store: TaskStore) -> None:
    store.policy = StorePolicy(retention=Retention(max_completed=0, max_failed=0, max_cancelled=0))
    task = await add(store, status=TaskStatus.FAILED)
    retried = await store.transition("s", task.id, TaskStatus.PENDING, automatic=True)
    assert retried.status is TaskStatus.PENDING


async def test_history_keeps_the_first_and_latest_entries_and_counts_the_rest(store: TaskStore) -> None:
    store.policy = StorePolicy(max_history=20)
    task = await add(store, status=TaskStatus.CANCELLED)
    for _ in range(100):  # retry and cancel, again and again
        await store.transition("s", task.id, TaskStatus.PENDING, reason="retry")
        await store.transition("s", task.id, TaskStatus.CANCELLED, reason="cancel")
    history = (await store.get("s", task.id)).history
    assert len(history) == 20
    head = min(HISTORY_HEAD, 20 // 2)
    assert history[0].reason == "created" and all(not h.omitted for h in history[:head])
    marker = history[head]
    total = 2 + 200  # created + first cancel + 100 x (retry, cancel)
    assert marker.omitted == total - 19 and str(marker.omitted) in (marker.reason or "")
    assert sum(max(h.omitted, 1) for h in history) == total
    assert history[-1].reason == "cancel" and history[-2].reason == "retry"
    for before, entry in itertools.pairwise(history):  # still a chain of statuses
        assert entry.previous is before.status
        assert entry.omitted or can_transition(before.status, entry.status)


async def test_expire_removes_finished_tasks_after_their_ttl(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock)
    old = await add(store, status=TaskStatus.COMPLETED)
    clock.advance(30)
    young = await add(store, status=TaskStatus.FAILED)
    running = await add(store, status=TaskStatus.RUNNING)
    clock.advance(35)  # old finished 65 s ago, young 35 s ago
    result = await store.expire(Expiry(finished_ttl_ms=60_000))
    assert result.finished == 1
    assert {t.id for t in (await store.query("s", TaskFilter())).tasks} == {young.id, running.id}
    assert old.id not in {t.id for t in (await store.query("s", TaskFilter())).tasks}


async def test_expire_cancels_tasks_never_started_within_their_lifetime(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock)
    never = await add(store)
    retried = await add(store, status=TaskStatus.FAILED)
    await store.transition("s", retried.id, TaskStatus.PENDING)  # pending again, but it ran once
    clock.advance(50)
    fresh = await add(store)
    clock.advance(20)
    result = await store.expire(Expiry(pending_ttl_ms=60_000))
    assert [t.id for t in result.pending] == [never.id]
    expired = await store.get("s", never.id)
    assert expired.status is TaskStatus.CANCELLED and "expired" in (expired.history[-1].reason or "")
    assert (await store.get("s", fresh.id)).status is TaskStatus.PENDING
    assert (await store.get("s", retried.id)).status is TaskStatus.PENDING
    started = await store.transition("s", fresh.id, TaskStatus.RUNNING)
    clock.advance(3600)
    assert (await store.expire(Expiry(pending_ttl_ms=60_000))).pending == []  # a retry or a run is not "never started"
    assert (await store.get("s", started.id)).status is TaskStatus.RUNNING


async def test_expire_forgets_idle_sessions_and_frees_their_slot(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock)
    limits = CreateLimits(max_active_per_session=10, max_sessions=3)
    for session in ("idle", "busy", "recent"):
        task, _ = await store.create(new_task(session), limits=limits)
        if session != "busy":
            await store.transition(session, task.id, TaskStatus.CANCELLED)
    clock.advance(100)
    await add(store, "recent", TaskStatus.COMPLETED)  # a change resets the idle time
    clock.advance(10)
    result = await store.expire(Expiry(session_idle_ms=60_000))
    assert (result.sessions, result.session_tasks) == (1, 1)
    assert (await store.counts("idle")).total == 0
    assert (await store.counts("busy")).active == 1  # a session with active tasks is never idle
    assert (await store.counts("recent")).total == 2
    await store.create(new_task("newcomer"), limits=limits)


async def test_expire_of_one_session_leaves_the_others(make_store: MakeStore) -> None:
    clock = FakeClock()
    store = make_store(clock)
    await add(store, "a", TaskStatus.COMPLETED)
    await add(store, "b", TaskStatus.COMPLETED)
    clock.advance(120)
    result = await store.expire(Expiry(finished_ttl_ms=60_000), "a")
    assert result.finished == 1 and (await store.counts("b")).total == 1


# -- task logs: numbered lines within the log bounds ----------------------------------


def line(message: str, at: int = 1, data: object = None) -> LogLine:
    return LogLine(at=at, message=message, data=data)


def log_of(task: Task) -> list[tuple[int, str]]:
    return [(entry.n, entry.message) for entry in task.logs]


async def test_log_lines_are_numbered_kept_and_published_as_one_event(store: TaskStore) -> None:
    """An attempt's lines are kept on the task in order, numbered from 1, with their time and
    data, and published as one `log` event."""
    task = await add(store, status=TaskStatus.RUNNING)
    events: list[Event] = []
    unsubscribe = store.events.subscribe(events.append)
    assert await store.add_logs("s", task.id, 1, [line("one", 5), line("two", 6, {"rows": [1, 2]})])
    assert await store.add_logs("s", task.id, 1, [line("three", 7)])
    unsubscribe()
    kept = await store.get("s", task.id)
    assert kept.logs == [
        LogLine(n=1, at=5, message="one"),
        LogLine(n=2, at=6, message="two", data={"rows": [1, 2]}),
        LogLine(n=3, at=7, message="three"),
    ]
    assert kept.logs_dropped == 0 and kept.status is TaskStatus.RUNNING
    assert [(type(e).__name__, e.type.value) for e in events] == [("LogEvent", "log"), ("LogEvent", "log")]
    first = events[0]
    assert isinstance(first, LogEvent)
    assert [entry.n for entry in first.lines] == [1, 2] and first.attempt == 1 and first.status == "running"


async def test_a_log_keeps_its_newest_lines_and_counts_those_dropped(store: TaskStore) -> None:
    """Beyond TASK_LOG_LINES the oldest lines go, counted in `logsDropped`; numbering goes on."""
    store.policy = StorePolicy(logs=LogLimits(lines=3, line_bytes=100, task_bytes=10_000))
    task = await add(store, status=TaskStatus.RUNNING)
    events: list[Event] = []
    unsubscribe = store.events.subscribe(events.append)
    await store.add_logs("s", task.id, 1, [line(f"l{i}") for i in range(1, 3)])
    await store.add_logs("s", task.id, 1, [line(f"l{i}") for i in range(3, 8)])  # more than the bound at once
    unsubscribe()
    kept = await store.get("s", task.id)
    assert log_of(kept) == [(5, "l5"), (6, "l6"), (7, "l7")] and kept.logs_dropped == 4
    last = events[-1]
    assert isinstance(last, LogEvent)
    assert [entry.n for entry in last.lines] == [5, 6, 7] and last.logs_dropped == 4  # only lines still kept


async def test_a_log_keeps_within_its_byte_bound_and_always_its_newest_line(store: TaskStore) -> None:
    """Beyond TASK_LOG_BYTES (each line counted as its JSON) the oldest lines go; the newest
    line stays even when it alone is over."""
    one = len(msgspec.json.encode(LogLine(n=1, at=1, message="x" * 50)))
    store.policy = StorePolicy(logs=LogLimits(lines=100, line_bytes=100, task_bytes=3 * one))
    task = await add(store, status=TaskStatus.RUNNING)
    await store.add_logs("s", task.id, 1, [line("x" * 50) for _ in range(5)])
    kept = await store.get("s", task.id)
    assert [n for n, _ in log_of(kept)] == [3, 4, 5] and kept.logs_dropped == 2
    await store.add_logs("s", task.id, 1, [line("y" * 500)])
    kept = await store.get("s", task.id)
    assert log_of(kept) == [(6, "y" * 500)] and kept.logs_dropped == 5


async def test_log_lines_are_accepted_only_from_the_running_attempt(store: TaskStore) -> None:
    """As late progress: lines of an attempt that is over, of another attempt or of another
    session's task are refused and change nothing."""
    task = await add(store, status=TaskStatus.RUNNING)
    assert await store.add_logs("s", task.id, 1, [line("kept")])
    assert not await store.add_logs("s", task.id, 2, [line("other attempt")])
    assert not await store.add_logs("other", task.id, 1, [line("other session")])
    await store.transition("s", task.id, TaskStatus.CANCELLED)
    assert not await store.add_logs("s", task.id, 1, [line("late")])
    assert log_of(await store.get("s", task.id)) == [(1, "kept")]
    pending = await add(store)
    assert not await store.add_logs("s", pending.id, 0, [line("not started")])


async def test_a_log_outlives_a_retry_and_summaries_carry_its_latest_lines(store: TaskStore) -> None:
    """A retry keeps the log (the next attempt's lines follow on); a page's summaries carry
    at least the latest RECENT_LINES lines."""
    task = await add(store, status=TaskStatus.RUNNING)
    await store.add_logs("s", task.id, 1, [line(f"first {i}") for i in range(4)])
    await store.transition("s", task.id, TaskStatus.FAILED, error="boom")
    await store.transition("s", task.id, TaskStatus.PENDING)
    await store.transition("s", task.id, TaskStatus.RUNNING)
    assert await store.add_logs("s", task.id, 2, [line("second")])
    assert log_of(await store.get("s", task.id))[-2:] == [(4, "first 3"), (5, "second")]
    listed = (await store.query("s", TaskFilter())).tasks[0]
    assert log_of(listed)[-RECENT_LINES:] == [(3, "first 2"), (4, "first 3"), (5, "second")]


async def test_finish_stores_the_last_lines_before_the_outcome(store: TaskStore) -> None:
    """Lines held back to the end are stored with the outcome, published before it; not when
    the finish is refused."""
    task = await add(store, status=TaskStatus.RUNNING)
    events: list[Event] = []
    unsubscribe = store.events.subscribe(events.append)
    done = await store.finish("s", task.id, 1, Finish(kind="completed", reason="completed"), lines=[line("last")])
    unsubscribe()
    assert log_of(done) == [(1, "last")] and done.status is TaskStatus.COMPLETED
    assert [e.type.value for e in events] == ["log", "transition"]
    with pytest.raises(InvalidTransition):
        await store.finish("s", task.id, 1, Finish(kind="failed", reason="x"), lines=[line("too late")])
    assert log_of(await store.get("s", task.id)) == [(1, "last")]


# -- run times, for estimates --------------------------------------------------------------


async def test_recent_durations_keep_each_executors_latest_completed_runs(make_store: MakeStore) -> None:
    """The run times of completed attempts, per executor, newest first, at most RECENT_DURATIONS,
    kept after their tasks are gone; failures do not count."""
    clock = FakeClock()
    store = make_store(clock)

    async def run(executor: str, seconds: float, *, fail: bool = False) -> Task:
        task = await add(store, status=TaskStatus.RUNNING, executor=executor)
        clock.advance(seconds)
        outcome = Finish(kind="failed", reason="x", error="e") if fail else Finish(kind="completed", reason="ok")
        return await store.finish("s", task.id, 1, outcome)

    assert await store.recent_durations(["a"]) == {}
    for seconds in range(1, RECENT_DURATIONS + 3):
        done = await run("a", seconds)
    await run("a", 99, fail=True)
    await run("b", 0.25)
    await store.remove("s", done.id)
    found = await store.recent_durations(["a", "b", "c"])
    assert found["a"] == [s * 1000 for s in range(RECENT_DURATIONS + 2, 2, -1)]
    assert found["b"] == [250] and "c" not in found


async def test_the_admin_reads_see_every_session(make_store: MakeStore) -> None:
    """Across sessions: the sessions by their last change with their counts, every task
    newest first with the filters of `query` and its cursor, and a task found by its id alone."""
    clock = FakeClock()
    store = make_store(clock)
    a1 = await add(store, "a", executor="x")
    clock.advance(1)
    b1 = await add(store, "b", TaskStatus.COMPLETED, executor="y", tags=["t"])
    clock.advance(1)
    a2 = await add(store, "a", TaskStatus.CANCELLED, executor="y")
    clock.advance(1)
    c1 = await add(store, "c", executor="x")

    sessions = await store.list_sessions(limit=2)
    assert [s.key for s in sessions.sessions] == ["c", "a"] and sessions.total == 3
    a = sessions.sessions[1]
    assert (a.by_status[TaskStatus.PENDING], a.by_status[TaskStatus.CANCELLED], a.total) == (1, 1, 2)
    assert a.last_active_ms == clock.now_ms() - 1000
    assert [s.key for s in (await store.list_sessions(limit=2, offset=2)).sessions] == ["b"]

    first = await store.query_all(TaskFilter(), limit=2)
    assert [t.id for t in first.tasks] == [c1.id, a2.id] and first.total == 4 and first.next_cursor
    rest = await store.query_all(TaskFilter(), limit=2, cursor=first.next_cursor)
    assert [t.id for t in rest.tasks] == [b1.id, a1.id] and rest.next_cursor is None
    assert [t.id for t in (await store.query_all(TaskFilter(), limit=2, offset=3)).tasks] == [a1.id]
    pending = await store.query_all(TaskFilter(status=TaskStatus.PENDING))
    assert [t.id for t in pending.tasks] == [c1.id, a1.id] and pending.total == 2
    assert [t.id for t in (await store.query_all(TaskFilter(executor="y"))).tasks] == [a2.id, b1.id]
    assert [t.id for t in (await store.query_all(TaskFilter(tag="t"))).tasks] == [b1.id]
    both = await store.query_all(TaskFilter(executor="x", status=TaskStatus.PENDING))
    assert [t.id for t in both.tasks] == [c1.id, a1.id] and both.total == 2
    assert [(t.id, t.session_key) for t in (await store.query_all(TaskFilter(executor="y"), limit=1)).tasks] == [
        (a2.id, "a")
    ]

    found = await store.find(b1.id)
    assert (found.session_key, found.status) == ("b", TaskStatus.COMPLETED) and found.history
    with pytest.raises(TaskNotFound):
        await store.find("no-such-task")
    await store.remove("b", b1.id)
    assert (await store.list_sessions(limit=10)).total == 2
    assert (await store.query_all(TaskFilter())).total == 3
    with pytest.raises(TaskNotFound):
        await store.find(b1.id)

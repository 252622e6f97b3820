"""What the Redis store promises beyond the shared contract: changes published on the
session's channel in the push streams' envelope, the same JSON as the memory store,
snapshots with the sequence they reflect, stores in several processes agreeing, and a
clear error when Redis cannot be reached."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import msgspec
import pytest
from redis.asyncio import Redis

from async_tasks.backends.redis import reads as redis_reads
from async_tasks.backends.redis import upkeep as redis_upkeep
from async_tasks.backends.redis.store import RedisTaskStore
from async_tasks.errors import StoreUnavailable
from async_tasks.events import EventType, TaskEvent
from async_tasks.executor import TaskParams
from async_tasks.store.base import CreateLimits, Expiry, Idempotency, Retention, StorePolicy, TaskFilter
from async_tasks.store.memory import MemoryTaskStore
from async_tasks.task import Task, TaskStatus
from async_tasks.testing import FakeClock
from tests.servers import free_port

UNLIMITED = CreateLimits(max_active_per_session=1_000_000)


class Params(TaskParams):
    who: str = "world"
    times: int = 2


def new_task(session: str = "s", **fields: object) -> Task:
    return Task(
        id=str(uuid.uuid4()),
        session_key=session,
        executor="greet",
        name="Greeting",
        params=Params(who="Ada"),
        metadata={"a": [1, 2.5, None]},
        tags=["x"],
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisTaskStore]:
    made = RedisTaskStore(Redis.from_url(redis_url), prefix=redis_prefix)
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
async def other(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisTaskStore]:
    """A second store on the same keys: what another process sees."""
    made = RedisTaskStore(Redis.from_url(redis_url), prefix=redis_prefix)
    try:
        yield made
    finally:
        await made.aclose()


async def test_a_task_reads_back_as_the_same_json_as_in_memory(store: RedisTaskStore) -> None:
    """Params come back as their JSON and the task encodes exactly as the memory store's."""
    memory = MemoryTaskStore()
    task = new_task()
    in_memory, _ = await memory.create(msgspec.structs.replace(task), limits=UNLIMITED)
    in_redis, _ = await store.create(task, limits=UNLIMITED)
    assert in_redis.decoded().params == {"who": "Ada", "times": 2}
    for target in (TaskStatus.RUNNING,):
        in_memory = await memory.transition("s", task.id, target)
        in_redis = await store.transition("s", task.id, target)
    assert await memory.report_progress("s", task.id, 1, 45, "Loading", None)
    assert await store.report_progress("s", task.id, 1, 45, "Loading", None)
    in_memory = await memory.transition("s", task.id, TaskStatus.COMPLETED, result={"n": [1, "two"]}, reason="done")
    in_redis = await store.transition("s", task.id, TaskStatus.COMPLETED, result={"n": [1, "two"]}, reason="done")
    stored = await store.get("s", task.id)

    def comparable(t: Task) -> dict[str, object]:
        data: dict[str, object] = msgspec.json.decode(msgspec.json.encode(t))
        for key in ("createdAt", "updatedAt", "startedAt", "completedAt"):
            data.pop(key)
        for entry in data["history"]:  # type: ignore[attr-defined]
            entry.pop("at")
        return data

    assert comparable(stored) == comparable(in_redis) == comparable(in_memory)
    assert b'"progress":100,' in msgspec.json.encode(stored)


async def test_every_change_is_published_on_the_session_channel(store: RedisTaskStore, redis_url: str) -> None:
    """Each change reaches Redis subscribers as the envelope the push streams read, in order."""
    listener = Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(store.channel_prefix + "s")
    await pubsub.get_message(timeout=1)  # the subscription's confirmation
    try:
        task, _ = await store.create(new_task(), limits=UNLIMITED)
        await store.transition("s", task.id, TaskStatus.RUNNING)
        await store.report_progress("s", task.id, 1, 12.5, "Step", "first")
        done = await store.transition("s", task.id, TaskStatus.COMPLETED, result=[1])
        await store.remove("s", task.id)
        envelopes: list[Any] = []
        with anyio.fail_after(5):
            while len(envelopes) < 5:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is not None:
                    envelopes.append(msgspec.json.decode(message["data"]))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await listener.aclose()
    seqs = [envelope[0] for envelope in envelopes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    assert [(e[2], e[3], e[4]) for e in envelopes] == [
        ("transition", "pending", 0),
        ("transition", "running", 1),
        ("progress", "running", 1),
        ("transition", "completed", 1),
        ("removed", "completed", 1),
    ]
    expected = msgspec.json.decode(msgspec.json.encode(TaskEvent.of(done, EventType.TRANSITION, TaskStatus.RUNNING)))
    assert envelopes[3][5] == expected
    assert envelopes[2][5]["progress"] == 12.5 and envelopes[2][5]["currentStepDescription"] == "first"


async def test_a_snapshot_carries_the_sequence_it_reflects(store: RedisTaskStore) -> None:
    """Changes after a snapshot get higher sequence numbers than the snapshot's."""
    first, _ = await store.create(new_task(), limits=UNLIMITED)
    seq, events = await store.snapshot("s")
    assert [msgspec.json.decode(e)["taskId"] for e in events] == [first.id]
    await store.transition("s", first.id, TaskStatus.RUNNING)
    later, events = await store.snapshot("s", first.id)
    assert later > seq and msgspec.json.decode(events[0])["status"] == "running"
    assert (await store.snapshot("other", first.id))[1] == []


async def test_a_session_snapshot_is_bounded_in_count_and_bytes(
    store: RedisTaskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session stream starts from its newest tasks only, without large results; one task's carries its result."""
    monkeypatch.setattr(redis_reads, "SNAPSHOT_TASKS", 3)
    monkeypatch.setattr(redis_reads, "SNAPSHOT_RESULT_BYTES", 10)
    made = [(await store.create(new_task(), limits=UNLIMITED))[0] for _ in range(5)]
    await store.transition("s", made[-1].id, TaskStatus.RUNNING)
    await store.transition("s", made[-1].id, TaskStatus.COMPLETED, result={"big": "x" * 50})
    _, events = await store.snapshot("s")
    decoded = [msgspec.json.decode(e) for e in events]
    assert [e["taskId"] for e in decoded] == [t.id for t in reversed(made[2:])]
    assert decoded[0]["status"] == "completed" and decoded[0]["result"] is None
    _, (one,) = await store.snapshot("s", made[-1].id)
    assert msgspec.json.decode(one)["result"] == {"big": "x" * 50}


async def test_two_processes_see_one_state(store: RedisTaskStore, other: RedisTaskStore) -> None:
    """A task made through one store is found, counted, moved and refused through another."""
    key = Idempotency("k", b"f")
    made: list[tuple[str, bool]] = []

    async def create(where: RedisTaskStore) -> None:
        task, replayed = await where.create(new_task(), limits=UNLIMITED, idempotency=key)
        made.append((task.id, replayed))

    async with anyio.create_task_group() as tg:
        for i in range(10):
            tg.start_soon(create, store if i % 2 else other)
    assert len({task_id for task_id, _ in made}) == 1 and sum(not replayed for _, replayed in made) == 1
    task_id = made[0][0]
    await other.transition("s", task_id, TaskStatus.RUNNING)
    assert (await store.get("s", task_id)).status is TaskStatus.RUNNING
    assert (await store.counts("s")).by_status[TaskStatus.RUNNING] == 1
    assert (await other.totals()).sessions == 1


async def test_trim_of_every_session_works_in_batches(store: RedisTaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention over many sessions removes everything beyond the limits, a batch per script."""
    monkeypatch.setattr(redis_upkeep, "TRIM_BATCH", 3)
    monkeypatch.setattr(redis_upkeep, "TRIM_SESSIONS", 2)
    for session in ("a", "b", "c"):
        for _ in range(4):
            task, _ = await store.create(new_task(session), limits=UNLIMITED)
            await store.transition(session, task.id, TaskStatus.CANCELLED)
    result = await store.trim(Retention(max_completed=0, max_failed=0, max_cancelled=1))
    assert result.cancelled == 9
    assert [(await store.counts(s)).total for s in ("a", "b", "c")] == [1, 1, 1]
    assert (await store.query("a", TaskFilter(status=TaskStatus.CANCELLED))).total == 1


async def test_an_unreachable_redis_is_a_store_unavailable_error() -> None:
    """No Redis: the store raises StoreUnavailable (a 503 at the HTTP edge), not a crash."""
    unreachable = RedisTaskStore(Redis.from_url(f"redis://127.0.0.1:{free_port()}/0"), prefix="x:")
    try:
        with pytest.raises(StoreUnavailable):
            await unreachable.get("s", "t")
        with pytest.raises(StoreUnavailable):
            await unreachable.counts("s")
        assert not await unreachable.ping()
    finally:
        await unreachable.aclose()


async def test_a_capped_history_reads_as_in_memory(store: RedisTaskStore) -> None:
    """The entry standing for the omitted transitions (built in Lua) is the memory store's, errors included."""
    memory = MemoryTaskStore()
    policy = StorePolicy(max_history=7)
    memory.policy = store.policy = policy
    task = new_task()
    await memory.create(msgspec.structs.replace(task), limits=UNLIMITED)
    await store.create(task, limits=UNLIMITED)
    for attempt in range(1, 6):
        for where in (memory, store):
            await where.transition("s", task.id, TaskStatus.RUNNING)
            await where.transition("s", task.id, TaskStatus.FAILED, error=f'Boom/{attempt}: é "quoted"')
            await where.transition("s", task.id, TaskStatus.PENDING, automatic=True, reason=f"retry {attempt}")

    def entries(t: Task) -> list[dict[str, object]]:
        data = msgspec.json.decode(msgspec.json.encode(t.history))
        for entry in data:
            entry.pop("at")
        return data  # type: ignore[no-any-return]

    in_memory, in_redis = await memory.get("s", task.id), await store.get("s", task.id)
    assert len(in_redis.history) == 7 and in_redis.history[3].omitted == 16 - 6
    assert entries(in_redis) == entries(in_memory)


async def test_what_the_store_removes_by_itself_reaches_the_hooks_with_its_cause(
    redis_url: str, redis_prefix: str
) -> None:
    """Retention, expiry and remove call `on_removed` with ``retention``, ``expired`` or None, as in memory."""
    clock = FakeClock()
    in_redis = RedisTaskStore(Redis.from_url(redis_url), prefix=redis_prefix, clock=clock)
    try:
        for store in (MemoryTaskStore(clock), in_redis):
            assert await removals(store, clock) == [
                ("completed", "retention"),
                ("cancelled", None),
                ("completed", "expired"),
                ("cancelled", "retention"),
            ], type(store)
    finally:
        await in_redis.aclose()


async def removals(store: MemoryTaskStore | RedisTaskStore, clock: FakeClock) -> list[tuple[str, str | None]]:
    causes: list[tuple[str, str | None]] = []
    store.events.on_removed.append(lambda task, cause: causes.append((task.status.value, cause)))
    store.policy = StorePolicy(retention=Retention(max_completed=1, max_failed=1, max_cancelled=5))
    for _ in range(2):
        task, _ = await store.create(new_task(), limits=UNLIMITED)
        await store.transition("s", task.id, TaskStatus.RUNNING)
        await store.transition("s", task.id, TaskStatus.COMPLETED)
    gone, _ = await store.create(new_task(), limits=UNLIMITED)
    await store.transition("s", gone.id, TaskStatus.CANCELLED)
    await store.remove("s", gone.id)
    await store.create(new_task(), limits=UNLIMITED)
    clock.advance(3600)
    expired = await store.expire(Expiry(pending_ttl_ms=60_000, finished_ttl_ms=60_000))
    assert len(expired.pending) == 1 and expired.finished == 1
    await store.trim(Retention(max_completed=0, max_failed=0, max_cancelled=0))
    return causes


async def test_verify_repairs_the_counts_by_executor_and_the_admin_indexes(store: RedisTaskStore) -> None:
    """The counter check covers what routing and the admin view keep: workers and tasks in
    delivery by executor, the sessions by their last change, the indexes across sessions."""
    waiting, _ = await store.create(new_task(), limits=UNLIMITED, deliver=True)
    await store.create(new_task(), limits=UNLIMITED, deliver=True, due_ms=store.clock.now_ms() + 60_000)
    await store.join("w", 2, 60_000, b'{"executors": ["greet", "other"]}')
    assert await store.verify() == []
    redis, key = cast(Any, store.redis), store.prefix
    await redis.hset(key + "offered", mapping={"greet": 7, "ghost": 1})
    await redis.hset(key + "xq", "greet", "0")
    await redis.zrem(key + "all", waiting.id)
    await redis.zrem(key + "changed", "s")

    repairs = {(label, field): (was, now) for label, field, was, now in await store.verify()}
    assert repairs == {
        ("executor greet", "workers"): (7, 1),
        ("executor ghost", "workers"): (1, 0),
        ("executor greet", "queued"): (0, 2),
        ("s", "indexed"): (1, 2),
        ("s", "changed"): (0, 1),
    }
    assert await store.verify() == []
    assert await redis.hgetall(key + "offered") == {b"greet": b"1", b"other": b"1"}
    assert waiting.id in {t.id for t in (await store.query_all(TaskFilter())).tasks}
    assert [s.key for s in (await store.list_sessions(limit=5)).sessions] == ["s"]


async def test_verify_repairs_what_a_client_holds(store: RedisTaskStore) -> None:
    """The per-client counters are covered by the counter verification: a drifted one is
    repaired (and logged by the reconciler), a right one left alone."""
    limits = CreateLimits(max_active_per_session=10, client="c-a")
    for session in ("a1", "a2", "a2"):
        await store.create(new_task(session), limits=limits)
    await store.create(new_task("b"), limits=msgspec.structs.replace(limits, client="c-b"))
    assert await store.verify() == []
    await store.redis.zadd(store.prefix + "ctasks", {"c-a": 7})
    await store.redis.zrem(store.prefix + "csessions", "c-b")
    await store.redis.zadd(store.prefix + "csessions", {"c-gone": 2})
    repairs = sorted(await store.verify())
    assert repairs == [
        ("client c-a", "tasks", 7, 3),
        ("client c-b", "sessions", 0, 1),
        ("client c-gone", "sessions", 2, 0),
    ]
    assert await store.verify() == []

"""Queue positions and estimates ("3rd in line · about 12 s"): the rule (`estimate`), and
where it shows: beside `queuePosition` in a task's answer and list items, and as `eta`
events on a task's stream. The run times it reads are pinned in the store contract
(tests/store), across processes on Redis in tests/test_redis_execution.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from litestar import Litestar

from async_tasks.estimates import Estimate, estimate, typical
from async_tasks.task import Task, TaskStatus
from async_tasks.testing import FakeClock, serve_in_loop
from async_tasks.web.frames import OPENED
from tests.helpers import ScriptExecutor, build_app, wait_for
from tests.test_streams import GUARD, bridge_of

API = "/api/v1"
NOW = 1_700_000_000_000


def task(status: TaskStatus, *, progress: float = 0, started_ago_ms: int | None = None) -> Task:
    started = None if started_ago_ms is None else NOW - started_ago_ms
    return Task(id="t", session_key="s", executor="x", name="t", params=None, status=status, progress=progress,
                started_at=started)  # fmt: skip


def test_the_typical_run_time_is_the_median_of_recent_runs() -> None:
    assert typical([4000, 9000, 5000]) == 5000
    assert typical([4000, 5000]) == 4500
    assert typical([]) is None


def test_a_waiting_task_starts_after_the_runs_ahead_of_it_in_its_lanes() -> None:
    """Place k with `lanes` of the session's tasks running: ceil(k / lanes) typical runs, then one more."""
    waiting = task(TaskStatus.PENDING)
    assert estimate(waiting, now_ms=NOW, durations=[4000, 4000, 5000], position=3) == Estimate(
        starts_in_ms=12_000, finishes_in_ms=16_000, typical_ms=4000, samples=3
    )
    assert estimate(waiting, now_ms=NOW, durations=[4000], position=3, lanes=2) == Estimate(
        starts_in_ms=8000, finishes_in_ms=12_000, typical_ms=4000, samples=1
    )
    assert estimate(waiting, now_ms=NOW, durations=[], position=1) is None  # never completed here
    assert estimate(waiting, now_ms=NOW, durations=[4000], position=None) is None  # not in line


def test_a_running_task_blends_the_typical_time_left_with_its_own_pace() -> None:
    """At 0 %: the typical time left; as progress grows, more and more its own pace."""
    assert estimate(task(TaskStatus.RUNNING, started_ago_ms=2000), now_ms=NOW, durations=[10_000]) == Estimate(
        finishes_in_ms=8000, typical_ms=10_000, samples=1
    )
    halfway = task(TaskStatus.RUNNING, progress=50, started_ago_ms=2000)  # its pace: 2 s more
    assert estimate(halfway, now_ms=NOW, durations=[10_000]).finishes_in_ms == 5000  # type: ignore[union-attr]
    slow = task(TaskStatus.RUNNING, progress=80, started_ago_ms=12_000)  # over the typical time
    assert estimate(slow, now_ms=NOW, durations=[10_000]).finishes_in_ms == 2400  # type: ignore[union-attr]


def test_without_recent_runs_a_running_task_is_estimated_from_its_own_pace_once_it_moved() -> None:
    assert estimate(task(TaskStatus.RUNNING, progress=2, started_ago_ms=1000), now_ms=NOW, durations=[]) is None
    assert estimate(task(TaskStatus.RUNNING, progress=20, started_ago_ms=2000), now_ms=NOW, durations=[]) == Estimate(
        finishes_in_ms=8000
    )
    assert estimate(task(TaskStatus.COMPLETED, progress=100, started_ago_ms=1), now_ms=NOW, durations=[1]) is None


# -- in the API and on a task's stream --------------------------------------------------------


@pytest.fixture
async def queued() -> AsyncIterator[tuple[Litestar, httpx.AsyncClient, FakeClock, list[dict[str, Any]]]]:
    """One slot, on a fake clock: a run that took 4 s completed; then one task runs (held) and
    two wait in line."""
    clock = FakeClock()
    app = build_app(clock=clock, max_concurrent_tasks=1)
    async with serve_in_loop(app) as http:
        first = await create(http)
        await wait_for(app, first["id"], "running")
        clock.advance(4)
        ScriptExecutor.release(first["id"])
        await wait_for(app, first["id"], "completed")
        tasks = [await create(http) for _ in range(3)]
        await wait_for(app, tasks[0]["id"], "running")
        yield app, http, clock, tasks
        for held in tasks:
            ScriptExecutor.release(held["id"])


async def create(http: httpx.AsyncClient) -> dict[str, Any]:
    body = {"executor": "script", "params": {"steps": 0, "hold": True}, "start": True}
    return (await http.post(f"{API}/tasks", json=body)).json()["task"]  # type: ignore[no-any-return]


async def test_a_task_answer_and_list_items_say_where_a_task_stands(queued: Any) -> None:
    """`queuePosition` and `eta` beside the task (in list items and /status): 1st in line starts after
    one typical run (4 s), 2nd after two; the running one has 3 s left a second in."""
    _, http, clock, (running, first, second) = queued
    clock.advance(1)
    answer = (await http.get(f"{API}/tasks/{first['id']}")).json()
    assert answer["queuePosition"] == 1
    assert answer["eta"] == {"startsInMs": 4000, "finishesInMs": 8000, "typicalMs": 4000, "samples": 1}
    items = {item["id"]: item for item in (await http.get(f"{API}/tasks")).json()["tasks"]}
    assert (items[second["id"]]["queuePosition"], items[second["id"]]["eta"]["startsInMs"]) == (2, 8000)
    assert items[running["id"]]["queuePosition"] is None
    assert items[running["id"]]["eta"] == {"startsInMs": None, "finishesInMs": 3000, "typicalMs": 4000, "samples": 1}
    done = [item for item in items.values() if item["status"] == "completed"]
    assert done and all(item["eta"] is None and item["queuePosition"] is None for item in done)
    # /status, the polling endpoint, says the same (and nothing of it once the task ended).
    polled = (await http.get(f"{API}/tasks/{first['id']}/status")).json()
    assert (polled["queuePosition"], polled["eta"]) == (1, answer["eta"])
    polled = (await http.get(f"{API}/tasks/{running['id']}/status")).json()
    assert "queuePosition" not in polled and polled["eta"]["finishesInMs"] == 3000
    polled = (await http.get(f"{API}/tasks/{done[0]['id']}/status")).json()
    assert "queuePosition" not in polled and "eta" not in polled


async def test_a_task_stream_sends_eta_events_as_its_place_in_line_moves(queued: Any) -> None:
    """A waiting task's stream says where it stands after its snapshot, again when the task
    ahead starts, and once it runs; nothing when nothing moved."""
    app, http, clock, (running, first, second) = queued
    session_key = (await http.get(f"{API}/session")).json()["sessionKey"]
    frames = bridge_of(app).task_stream(session_key, second["id"])
    assert await anext(frames) is OPENED
    etas: list[dict[str, Any]] = []
    with anyio.fail_after(GUARD):
        async for frame in frames:
            if frame.type != "eta":
                continue
            data = msgspec.json.decode(frame.data)
            etas.append(data)
            clock.advance(4)  # each run takes 4 s: the typical run stays 4 s
            if len(etas) == 1:
                ScriptExecutor.release(running["id"])  # `first` starts: `second` is 1st in line
            elif len(etas) == 2:
                ScriptExecutor.release(first["id"])  # `second` starts
            else:
                break
    await frames.aclose()
    assert [(e["status"], e["queuePosition"]) for e in etas] == [("pending", 2), ("pending", 1), ("running", None)]
    assert [e["eta"]["startsInMs"] for e in etas] == [8000, 4000, None]
    assert etas[-1]["eta"]["finishesInMs"] == 4000 and etas[-1]["attempt"] == 1

"""The list route's encoded summaries of finished tasks: the same bytes as a fresh
encoding, never stale, bounded in bytes."""

from __future__ import annotations

import httpx
import msgspec
from litestar import Litestar

from async_tasks.task import Task, TaskStatus
from async_tasks.web.api.schemas import TaskSummary
from async_tasks.web.summaries import EncodedSummaries
from tests.helpers import wait_for

API = "/api/v1"


def finished(n: int, *, status: TaskStatus = TaskStatus.COMPLETED, attempts: int = 1, at: int = 5) -> Task:
    return Task(
        id=f"t{n}", session_key="s", executor="script", name=f"Task {n}", params=None, status=status,
        progress=100, attempts=attempts, created_at=1, updated_at=at, completed_at=at,
    )  # fmt: skip


def page_json(cache: EncodedSummaries, tasks: list[Task]) -> bytes:
    return msgspec.json.encode(cache.page(tasks, {}))


def test_a_page_is_the_same_json_as_its_summaries_encoded_afresh() -> None:
    """Served from the cache or not, a page's items are each task's `TaskSummary`, byte for byte."""
    cache = EncodedSummaries()
    tasks = [finished(n) for n in range(5)] + [
        Task(id="w", session_key="s", executor="script", name="Waits", params=None)
    ]
    fresh = msgspec.json.encode([TaskSummary.of(task) for task in tasks])
    assert page_json(cache, tasks) == fresh
    assert page_json(cache, tasks) == fresh
    assert len(cache) == 5  # the waiting task is never kept


def test_a_finished_task_that_changes_is_encoded_again() -> None:
    """A retried task (status, attempts or time of change moved) never shows its old summary."""
    cache = EncodedSummaries()
    task = finished(1, status=TaskStatus.FAILED)
    assert msgspec.json.decode(page_json(cache, [task]))[0]["status"] == "failed"
    again = finished(1, status=TaskStatus.COMPLETED, attempts=2, at=9)
    (item,) = msgspec.json.decode(page_json(cache, [again]))
    assert (item["status"], item["attempts"], item["updatedAt"]) == ("completed", 2, 9)


def test_the_cache_holds_at_most_its_bytes_and_lets_the_oldest_go() -> None:
    """Summaries beyond `max_bytes` push out the oldest; pages stay right throughout."""
    size = len(msgspec.json.encode(TaskSummary.of(finished(0))))
    cache = EncodedSummaries(max_bytes=size * 3)
    tasks = [finished(n) for n in range(10)]
    assert page_json(cache, tasks) == msgspec.json.encode([TaskSummary.of(task) for task in tasks])
    assert cache.bytes <= cache.max_bytes and len(cache) == 3
    assert page_json(cache, tasks[:2]) == msgspec.json.encode([TaskSummary.of(task) for task in tasks[:2]])


async def test_a_listed_task_retried_by_hand_is_listed_as_it_is_now(client: httpx.AsyncClient, app: Litestar) -> None:
    """A failed task in the list, retried, is listed with its new run, not the failure it had."""
    body = {"executor": "script", "start": True, "params": {"fail": "once"}, "maxRetries": 0}
    task_id = (await client.post(f"{API}/tasks", json=body)).json()["task"]["id"]
    await wait_for(app, task_id, "failed")
    (item,) = (await client.get(f"{API}/tasks")).json()["tasks"]
    assert item["status"] == "failed" and item["attempts"] == 1
    assert (await client.post(f"{API}/tasks/{task_id}/retry")).status_code == 200
    await wait_for(app, task_id, "failed")
    (item,) = (await client.get(f"{API}/tasks")).json()["tasks"]
    assert item["status"] == "failed" and item["attempts"] == 2

"""The task server's API and the peers' as the benchmarks drive them (not measured):
sessions, stats, Prometheus counters, and filling a session or a peer's store."""

from __future__ import annotations

import time
from typing import Any

import anyio
import httpx

POST_BODY = '{"delayMs": 0}'
API = "/api/v1"
CREATE_PATH = f"{API}/demo/tasks/sample"
LIST_PAGE = 50
LIST_PATH = f"{API}/tasks?limit={LIST_PAGE}"


def new_session(client: httpx.Client) -> str:
    response = client.post(f"{API}/session")
    response.raise_for_status()
    return str(response.json()["token"])


def session_stats(client: httpx.Client, token: str) -> dict[str, Any]:
    response = client.get(f"{API}/tasks/stats", headers={"X-Session-Token": token})
    response.raise_for_status()
    return dict(response.json()["stats"])


def wait_stats(client: httpx.Client, token: str, done: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        stats = session_stats(client, token)
        if done(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


def metric_value(client: httpx.Client, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{key}="{val}"' in head for key, val in labels.items()):
            total += float(value)
    return total


def create_sample_tasks(client: httpx.Client, token: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        response = client.post(
            f"{API}/demo/tasks/sample",
            headers={"X-Session-Token": token, "Content-Type": "application/json"},
            content=POST_BODY,
        )
        response.raise_for_status()
        ids.append(response.json()["task"]["id"])
    wait_stats(client, token, lambda s: s["completed"] == count)
    return ids


def post_many(base_url: str, count: int, token: str | None, concurrency: int = 16) -> list[str]:
    """`count` zero-delay sample tasks through `POST /demo/tasks/sample`, `concurrency` at a
    time (to fill a session or a peer's store quickly; not a measurement). Their ids."""
    headers = {"Content-Type": "application/json", **({"X-Session-Token": token} if token else {})}
    ids: list[str] = []

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        for _ in range(n):
            response = await client.post(CREATE_PATH, content=POST_BODY)
            response.raise_for_status()
            ids.append(response.json()["task"]["id"])

    async def main() -> None:
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60) as client:
            async with anyio.create_task_group() as group:
                for i in range(concurrency):
                    group.start_soon(worker, client, count // concurrency + (i < count % concurrency))

    anyio.run(main)
    return ids


# -- the peers' API (the three measured routes only) -------------------------------------------------


def peer_wait(base_url: str, at_least: int, timeout: float = 120) -> dict[str, int]:
    """Waits until a peer holds at least `at_least` tasks and the newest 1 000 of them (its
    page limit) are completed; returns its total and how many of those were completed."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{base_url}{API}/tasks", params={"limit": 1000}, timeout=30)
        response.raise_for_status()
        body = response.json()
        done = sum(task["status"] == "completed" for task in body["tasks"])
        state = {"total": int(body["total"]), "newest_completed": done, "newest_checked": len(body["tasks"])}
        if (state["total"] >= at_least and done == len(body["tasks"])) or time.monotonic() > deadline:
            return state
        time.sleep(0.2)

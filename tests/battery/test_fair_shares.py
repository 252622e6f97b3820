"""One address cannot lock the others out of the shared caps (issue 20), in memory and on Redis
(and on PostgreSQL, for the pools its store keeps: tasks and sessions).

Each flood runs at full speed from one address for a bounded time (FLOOD_SECONDS; longer
with BATTERY_EXAMPLES), while a victim with its own session on another address and
newcomers from fresh addresses go about their business, during the flood and after it
(the attacker holding what it took): at least 99 % of their requests must be served.
The shared pools are set smaller than one address's budgets (MAX_TASKS_PER_CLIENT,
MAX_SESSIONS_PER_CLIENT, MAX_STREAMS_PER_CLIENT keep their defaults), so the attacker
fills them and only the fair shares keep the others in. On Redis and PostgreSQL, two API
apps share the store, and the attacker spreads over both.

- tasks and sessions: new sessions with and without tokens, tokenless requests with
  untrusted ``X-Forwarded-For`` headers, never-started tasks across many sessions;
- streams, on a real uvicorn server (clients bound to their own loopback addresses): idle
  SSE streams opened with tokens, tickets (each used twice) and forwarding headers;
- memory: what a task of 64 KiB of ``[{},{},...]`` metadata adds to the process's RSS.

Each flood prints its figures (``pytest -s``): requests, duration, success rates.
"""

from __future__ import annotations

import gc
import itertools
import os
import random
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.lowlevel
import httpx
import pytest
from litestar import Litestar

from async_tasks.testing import serve_in_loop
from async_tasks.web.plugin import AsyncTasksPlugin
from tests.battery.test_memory_bounds import rss_bytes
from tests.helpers import TEST_HOST, system_of
from tests.test_streams import uvicorn_in_loop

pytestmark = pytest.mark.battery

API = "/api/v1"
#: How long each flood lasts, and how long the others go on after it.
FLOOD_SECONDS = 10.0 if os.environ.get("BATTERY_EXAMPLES") else 0.5
AFTER_SECONDS = FLOOD_SECONDS
ATTACKER = "203.0.113.66"
VICTIM = "198.51.100.7"
#: A dashboard's polling period, and how often a newcomer arrives (the attacker never waits).
VICTIM_PERIOD = 0.02
NEWCOMER_PERIOD = 0.05
NOT_STARTED = {"executor": "script", "start": False}


class Served:
    """The answers one kind of client got, and the first refusals (to say what went wrong)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ok = 0
        self.failed: list[str] = []

    def check(self, response: httpx.Response, status: int) -> bool:
        if response.status_code == status:
            self.ok += 1
            return True
        self.failed.append(f"{response.request.method} {response.request.url.path}: {response.status_code} "
                           f"{response.text[:200]}")  # fmt: skip
        return False

    @property
    def total(self) -> int:
        return self.ok + len(self.failed)

    @property
    def rate(self) -> float:
        return self.ok / self.total if self.total else 1.0

    def assert_served(self) -> None:
        assert self.total >= 4, f"{self.name}: only {self.total} requests"
        assert self.rate >= 0.99, f"{self.name}: {self.rate:.1%} of {self.total} served; {self.failed[:3]}"

    def __str__(self) -> str:
        return f"{self.name} {self.ok}/{self.total} ({self.rate:.1%})"


class Phases:
    """The flood, then the time after it; each client's answers tallied per phase.

    The flood goes on for FLOOD_SECONDS after the attacker has filled the pools (on a
    loaded machine the attacker is slower, not the test weaker; at most 30 s to fill)."""

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.filled_at: float | None = None
        self.flood_ended: float | None = None
        self.tallies: dict[str, Served] = {}

    def keep_flooding(self, filled: bool) -> bool:
        """The attacker's question: go on? (`filled`: the pools are full.)"""
        now = time.monotonic()
        if filled and self.filled_at is None:
            self.filled_at = now
        if self.flood_ended is None and (
            (self.filled_at is not None and now - self.filled_at >= FLOOD_SECONDS) or now - self.began > 30
        ):
            self.flood_ended = now
        return self.flood_ended is None

    @property
    def flooding(self) -> bool:
        return self.flood_ended is None

    @property
    def over(self) -> bool:
        return self.flood_ended is not None and time.monotonic() >= self.flood_ended + AFTER_SECONDS

    @property
    def duration(self) -> float:
        return (self.flood_ended or time.monotonic()) - self.began

    def served(self, who: str) -> Served:
        name = f"{who} {'during' if self.flooding else 'after'}"
        return self.tallies.setdefault(name, Served(name))

    def report(self, flood: str, attacker: dict[str, int]) -> None:
        print(f"\n[{flood}] attacker {sum(attacker.values())} requests in {self.duration:.1f} s (pools full after "
              f"{(self.filled_at or self.began) - self.began:.1f} s) {dict(attacker)}; "
              + "; ".join(str(tally) for tally in self.tallies.values()))  # fmt: skip
        assert self.filled_at is not None, "the flood never filled the pools"
        assert len(self.tallies) == 4, self.tallies.keys()
        for tally in self.tallies.values():
            tally.assert_served()


def cookieless(app: Litestar, ip: str) -> httpx.AsyncClient:
    """An in-process client from `ip` that keeps no cookie (each request stands alone)."""
    transport = httpx.ASGITransport(app=cast("Any", app), client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url=f"http://{TEST_HOST}", cookies=None)


@asynccontextmanager
async def apps(request: pytest.FixtureRequest, backend: str, **settings: Any) -> AsyncIterator[list[Litestar]]:
    """The app, or on Redis and PostgreSQL two apps on one store (two API processes), lifespans running."""
    from tests.helpers import build_app

    if backend == "redis":
        shared = {"task_backend": request.getfixturevalue("redis_url"),
                  "redis_key_prefix": request.getfixturevalue("redis_prefix")}  # fmt: skip
        made = [build_app(**settings, **shared), build_app(**settings, **shared)]
    elif backend == "postgres":
        shared = {"task_backend": request.getfixturevalue("postgres_url"),
                  "postgres_schema": request.getfixturevalue("postgres_schema")}  # fmt: skip
        made = [build_app(**settings, **shared), build_app(**settings, **shared)]
    else:
        made = [build_app(**settings)]
    async with AsyncExitStack() as stack:
        for app in made:
            await stack.enter_async_context(app.lifespan())
        yield made


def evictions(apps: list[Litestar]) -> list[str]:
    """Counts, in every app, what the stores removed to make room (cause ``evicted``)."""
    seen: list[str] = []
    for app in apps:
        system_of(app).store.events.on_removed.append(
            lambda task, cause: seen.append(task.session_key) if cause == "evicted" else None
        )
    return seen


# -- tasks and sessions ------------------------------------------------------------------------


def refused_by(sent: dict[str, int], setting: str) -> bool:
    """Whether the attacker was refused naming `setting` (a pool it filled)."""
    return any(key.endswith(" " + setting) for key in sent)


def refusal(response: httpx.Response) -> str:
    """The setting a refusal names ('' for a success)."""
    if response.status_code < 400:
        return ""
    details = response.json()["error"].get("details")
    return str(details.get("setting", "")) if isinstance(details, dict) else ""


async def attack_tasks_and_sessions(
    targets: list[Litestar], phases: Phases, full: Callable[[], Awaitable[bool]]
) -> dict[str, int]:
    """New sessions (with tokens, and tokenless with untrusted forwarding headers) and
    never-started tasks across them, round robin over every app, at full speed."""
    rng = random.Random(20)
    tokens: list[str] = []
    sent: dict[str, int] = {}
    filled = False
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(cookieless(app, ATTACKER)) for app in targets]
        for n in itertools.count():
            filled = filled or (n % 10 == 0 and await full())
            if not phases.keep_flooding(filled):
                return sent
            client = clients[n % len(clients)]
            kind = ("new session", "in a new session", "forwarded", "tokenless", "across sessions")[n % 5]
            if kind == "new session" or not tokens:
                response = await client.post(f"{API}/session")
                if response.status_code == 201:
                    tokens.append(response.json()["token"])
            elif kind == "in a new session":
                response = await client.post(f"{API}/tasks", json=NOT_STARTED, headers={"X-Session-Token": tokens[-1]})
            elif kind == "forwarded":
                spoofed = f"192.0.2.{rng.randrange(1, 255)}"
                response = await client.post(f"{API}/tasks", json=NOT_STARTED, headers={"X-Forwarded-For": spoofed})
            elif kind == "tokenless":
                response = await client.post(f"{API}/tasks", json=NOT_STARTED)
            else:
                token = rng.choice(tokens)
                response = await client.post(f"{API}/tasks", json=NOT_STARTED, headers={"X-Session-Token": token})
            count(sent, kind, response)
            await anyio.lowlevel.checkpoint()  # a server interleaves connections
    raise AssertionError("unreachable")


async def victim_polls(targets: list[Litestar], phases: Phases) -> None:
    """A dashboard on its own address, in its IP session: now and then creates a task (and
    deletes its oldest, keeping three), and polls its status and the list."""
    held: list[str] = []
    async with cookieless(targets[0], VICTIM) as client:
        for n in itertools.count():
            if phases.over:
                return
            served = phases.served("victim")
            if n % 5 == 0:
                created = await client.post(f"{API}/tasks", json=NOT_STARTED)
                if served.check(created, 201):
                    held.append(created.json()["task"]["id"])
                if len(held) > 3:
                    served.check(await client.delete(f"{API}/tasks/{held.pop(0)}"), 204)
            if held:
                served.check(await client.get(f"{API}/tasks/{held[-1]}/status"), 200)
                served.check(await client.get(f"{API}/tasks", params={"limit": 20}), 200)
            await anyio.sleep(VICTIM_PERIOD)


async def newcomers_arrive(targets: list[Litestar], phases: Phases, addresses: Callable[[], str]) -> None:
    """People arriving from fresh addresses: each starts a session, creates a task, reads it
    and deletes it (then leaves)."""
    for n in itertools.count():
        if phases.over:
            return
        async with cookieless(targets[n % len(targets)], addresses()) as client:
            served = phases.served("newcomers")
            session = await client.post(f"{API}/session")
            if served.check(session, 201):
                token = {"X-Session-Token": session.json()["token"]}
                created = await client.post(f"{API}/tasks", json=NOT_STARTED, headers=token)
                if served.check(created, 201):
                    task_id = created.json()["task"]["id"]
                    served.check(await client.get(f"{API}/tasks/{task_id}/status", headers=token), 200)
                    served.check(await client.delete(f"{API}/tasks/{task_id}", headers=token), 204)
        await anyio.sleep(NEWCOMER_PERIOD)


@pytest.mark.parametrize("backend", ["memory", "redis", "postgres"])
async def test_one_address_cannot_lock_others_out_of_tasks_and_sessions(
    request: pytest.FixtureRequest, backend: str
) -> None:
    """MAX_TASKS and MAX_SESSIONS full of one address's never-started tasks and sessions:
    the victim and newcomers are served (room is taken from the attacker, the largest holder)."""
    pools = {"max_tasks": 400, "max_sessions": 100} if backend == "memory" else {"max_tasks": 200, "max_sessions": 60}
    async with apps(request, backend, **pools) as targets:
        evicted = evictions(targets)
        phases = Phases()
        addresses = (f"10.20.{n // 250}.{n % 250 + 1}" for n in itertools.count())
        attacker: dict[str, int] = {}

        store = system_of(targets[0]).store

        async def full() -> bool:
            totals = await store.totals()
            return sum(totals.by_status.values()) >= pools["max_tasks"] and totals.sessions >= pools["max_sessions"]

        async def attack() -> None:
            attacker.update(await attack_tasks_and_sessions(targets, phases, full))

        async with anyio.create_task_group() as tg:
            tg.start_soon(attack)
            tg.start_soon(victim_polls, targets, phases)
            tg.start_soon(newcomers_arrive, targets, phases, lambda: next(addresses))
        totals = await system_of(targets[0]).store.totals()
    phases.report(f"tasks and sessions, {backend}", attacker)
    assert sum(totals.by_status.values()) <= pools["max_tasks"] and totals.sessions <= pools["max_sessions"]
    assert refused_by(attacker, "MAX_TASKS") or refused_by(attacker, "MAX_SESSIONS"), "the attacker was never refused"
    assert evicted, "nobody needed room taken from the attacker"


# -- streams ---------------------------------------------------------------------------------------

#: Loopback addresses of the stream flood: Linux routes all of 127.0.0.0/8 to this machine.
STREAM_ATTACKER, STREAM_VICTIM = "127.0.0.1", "127.0.0.2"
#: The stream attacker's requests in flight at once.
ATTACKER_CONNECTIONS = 4


def bound_to(url: str, address: str) -> httpx.AsyncClient:
    """A client of the real server at `url` whose connections come from `address` (as many
    as it likes: the attacker holds its streams)."""
    transport = httpx.AsyncHTTPTransport(local_address=address, limits=httpx.Limits(max_connections=None))
    return httpx.AsyncClient(transport=transport, base_url=url, timeout=10)


async def first_event(client: httpx.AsyncClient, path: str, served: Served, **kwargs: Any) -> None:
    """Open an SSE stream, count it served once it answers 200 and its first event arrives."""
    async with client.stream("GET", path, **kwargs) as response:
        if response.status_code != 200:
            await response.aread()
            served.check(response, 200)
            return
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                served.check(response, 200)
                return
    served.failed.append(f"GET {path}: the stream ended without an event")


async def attack_streams(url: str, phases: Phases, stack: AsyncExitStack, full: Callable[[], bool]) -> dict[str, int]:
    """Idle session streams, never read: with tokens, with tickets (each tried twice), and
    tokenless with untrusted forwarding headers; held open until `stack` closes."""
    sent: dict[str, int] = {}
    client = await stack.enter_async_context(bound_to(url, STREAM_ATTACKER))
    tokens: list[str] = []
    filled = False
    for n in itertools.count():
        filled = filled or full()
        if not phases.keep_flooding(filled):
            return sent
        kind = ("new session", "token", "ticket", "forwarded")[n % 4]
        if kind == "new session" or not tokens:
            response = await client.post(f"{API}/session")
            if response.status_code == 201:
                tokens.append(response.json()["token"])
            client.cookies.clear()
        else:
            headers = {"X-Session-Token": tokens[n % len(tokens)]}
            params: dict[str, str] = {}
            if kind == "ticket":
                params["ticket"] = (await client.post(f"{API}/session/ticket", headers=headers)).json()["ticket"]
                headers = {}
            elif kind == "forwarded":
                headers = {"X-Forwarded-For": f"192.0.2.{n % 250 + 1}"}
            for use in range(2 if kind == "ticket" else 1):
                opened = AsyncExitStack()
                response = await opened.enter_async_context(
                    client.stream("GET", f"{API}/tasks/events", headers=headers, params=params)
                )
                if response.status_code == 200:
                    stack.push_async_callback(opened.aclose)  # held, never read
                else:
                    await response.aread()
                    await opened.aclose()
                if use == 0 and kind == "ticket":
                    count(sent, "ticket", response)
                    kind = "ticket again"
        count(sent, kind, response)
    raise AssertionError("unreachable")


def count(sent: dict[str, int], kind: str, response: httpx.Response) -> None:
    key = f"{kind} {response.status_code} {refusal(response)}".rstrip()
    sent[key] = sent.get(key, 0) + 1


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_one_address_cannot_lock_others_out_of_streams(request: pytest.FixtureRequest, backend: str) -> None:
    """MAX_STREAMS full of one address's idle streams: the victim and newcomers still open
    theirs (the attacker's oldest end to make room), and poll as before."""
    from tests.helpers import build_app

    settings: dict[str, Any] = {"max_streams": 40}
    if backend == "redis":
        settings.update(task_backend=request.getfixturevalue("redis_url"),
                        redis_key_prefix=request.getfixturevalue("redis_prefix"))  # fmt: skip
    app = build_app(**settings)
    evicted_before = 0
    async with uvicorn_in_loop(app) as url, AsyncExitStack() as held:
        bridge = app.plugins.get(AsyncTasksPlugin).streams
        phases = Phases()
        addresses = (f"127.0.{n // 250 + 1}.{n % 250 + 1}" for n in itertools.count())
        attacker: dict[str, int] = {}

        async def attack() -> None:
            sent = await attack_streams(url, phases, held, lambda: bridge.open_streams >= 40)
            for key, count in sent.items():
                attacker[key] = attacker.get(key, 0) + count

        async def victim() -> None:
            async with bound_to(url, STREAM_VICTIM) as client:
                task = (await client.post(f"{API}/tasks", json=NOT_STARTED)).json()["task"]
                while not phases.over:
                    served = phases.served("victim")
                    await first_event(client, f"{API}/tasks/{task['id']}/events", served)
                    served.check(await client.get(f"{API}/tasks/{task['id']}/status"), 200)
                    await anyio.sleep(VICTIM_PERIOD)

        async def newcomers() -> None:
            while not phases.over:
                async with bound_to(url, next(addresses)) as client:
                    served = phases.served("newcomers")
                    created = await client.post(f"{API}/tasks", json=NOT_STARTED)
                    if served.check(created, 201):
                        await first_event(client, f"{API}/tasks/{created.json()['task']['id']}/events", served)
                await anyio.sleep(NEWCOMER_PERIOD)

        async with anyio.create_task_group() as tg:
            for _ in range(ATTACKER_CONNECTIONS):
                tg.start_soon(attack)
            tg.start_soon(victim)
            tg.start_soon(newcomers)
        assert bridge.open_streams <= 40
        evicted_before = bridge.streams_evicted_total
    phases.report(f"streams, {backend}", attacker)
    assert refused_by(attacker, "MAX_STREAMS") and "ticket 200" in attacker, "the attacker was never refused"
    assert not any(key.startswith("ticket again 200") for key in attacker), "a ticket opened two streams"
    assert evicted_before > 0, "nobody needed a stream of the attacker's"


# -- memory in bytes -----------------------------------------------------------------------------

#: Tasks of the memory measure (each one body of MAX_TASK_DATA_BYTES).
MEASURED = 1000 if os.environ.get("BATTERY_EXAMPLES") else 150
TRACED = 100 if os.environ.get("BATTERY_EXAMPLES") else 20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
async def test_a_task_holds_about_its_bytes_whatever_their_shape(make_app: Callable[..., Litestar]) -> None:
    """MEASURED creates whose metadata is 64 KiB of ``[{},{},...]`` (decoded, about 24 times
    that) grow the process by at most 3 times their bodies' bytes each, and what each keeps
    (counted by tracemalloc) is about its bytes."""
    app = make_app(max_active_tasks_per_session=MEASURED + TRACED + 1)
    limit = system_of(app).settings.max_task_data_bytes
    empty_objects = b"[" + b"{}," * ((limit - 200) // 3 - 1) + b"{}]"
    body = b'{"executor": "script", "metadata": {"shape": ' + empty_objects + b"}}"
    headers = {"Content-Type": "application/json"}
    async with serve_in_loop(app) as client:
        assert (await client.post(f"{API}/tasks", content=body, headers=headers)).status_code == 201
        gc.collect()
        before = rss_bytes()
        for _ in range(MEASURED):
            assert (await client.post(f"{API}/tasks", content=body, headers=headers)).status_code == 201
        gc.collect()
        per_task = (rss_bytes() - before) / MEASURED
        # RSS may reuse what the process freed before; what the tasks keep, counted exactly:
        tracemalloc.start()
        try:
            traced = tracemalloc.get_traced_memory()[0]
            for _ in range(TRACED):
                assert (await client.post(f"{API}/tasks", content=body, headers=headers)).status_code == 201
            gc.collect()
            kept = (tracemalloc.get_traced_memory()[0] - traced) / TRACED
        finally:
            tracemalloc.stop()
        read = await client.get(f"{API}/tasks", params={"limit": 1})
        task = (await client.get(f"{API}/tasks/{read.json()['tasks'][0]['id']}")).json()["task"]
    print(f"\n[memory] tasks of a {len(body)}-byte body: {per_task / 1024:.1f} KiB of RSS each over {MEASURED} "
          f"({per_task / len(body):.2f} x the body), {kept / 1024:.1f} KiB kept each (tracemalloc, "
          f"{kept / len(body):.2f} x)")  # fmt: skip
    assert task["metadata"]["shape"] == [{}] * ((limit - 200) // 3)  # the same JSON comes back
    assert per_task <= 3 * len(body), f"{per_task / len(body):.1f} x the body"
    assert kept <= 1.2 * len(body), f"{kept / len(body):.2f} x the body kept"

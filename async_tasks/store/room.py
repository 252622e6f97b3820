"""Making room in the memory store: fair shares of full pools and budgets.

When a new task does not fit (a client's own budgets, MAX_TASKS_PER_CLIENT and
MAX_SESSIONS_PER_CLIENT, or the shared pools, MAX_TASKS and MAX_SESSIONS), `plan_room`
says what must go for it to fit, or raises the refusal; the store then forgets what it
names. Room in a full pool comes from clients holding more than the newcomer
(`async_tasks.clients.fair_victims`), so one client can never crowd out another.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from async_tasks.clients import fair_victims
from async_tasks.store.base import (
    client_has_too_many_sessions,
    client_has_too_many_tasks,
    too_many_sessions,
    too_many_tasks,
)
from async_tasks.task import TaskStatus

if TYPE_CHECKING:
    from async_tasks.store.base import CreateLimits
    from async_tasks.store.books import ClientBooks, SessionTasks
    from async_tasks.task import StoredTask

#: Index entries a full pool looks at in one client's list before it tries another client.
LOOKS = 64


def plan_room(
    sessions: dict[str, SessionTasks],
    clients: dict[str, ClientBooks],
    held: int,
    session_key: str,
    owner: str,
    limits: CreateLimits,
) -> list[SessionTasks | StoredTask]:
    """What must go for one more task in `session_key` (of client `owner`) to fit the
    client's budgets and the shared pools: nothing when it fits. Raises the refusal
    when no room can be made; changes nothing itself.

    At its own budget, a client's least recently changed idle session goes (for a new
    session) or its oldest finished task. In a full pool, room comes from a client
    holding more than the newcomer (`fair_victims`): its oldest never-started task, or
    its oldest finished one (MAX_TASKS); its least recently changed session where
    nothing runs or was started (MAX_SESSIONS); failing that, the least recently changed
    idle session of a client holding more sessions than the newcomer (one with no
    active task never blocks a new one; it is never the largest holder's to take)."""
    new = session_key not in sessions
    client = clients.get(owner)
    own_sessions = len(client.sessions) if client is not None else 0
    own_tasks = client.tasks if client is not None else 0
    sessions_held, tasks_held = len(sessions), held
    plan: list[SessionTasks | StoredTask] = []
    gone: set[str] = set()
    cap = limits.max_sessions_per_client
    if new and cap is not None and own_sessions >= cap:
        victim = least_recent(client.sessions.values() if client is not None else (), idle, gone)
        if victim is None:
            raise client_has_too_many_sessions(cap, own_sessions)
        plan.append(victim)
        gone.add(victim.key)
        own_sessions, sessions_held = own_sessions - 1, sessions_held - 1
        own_tasks, tasks_held = own_tasks - len(victim.tasks), tasks_held - len(victim.tasks)
    cap = limits.max_tasks_per_client
    if cap is not None and own_tasks >= cap:
        task = first_of(client.finished, gone) if client is not None else None
        if task is None:
            raise client_has_too_many_tasks(cap, own_tasks)
        plan.append(task)
        own_tasks, tasks_held = own_tasks - 1, tasks_held - 1
    others = [other for other in clients.values() if other.key != owner]
    if new and limits.max_sessions is not None and sessions_held >= limits.max_sessions:
        victim = None
        for other in fair_victims(others, lambda c: len(c.sessions), own_sessions):
            victim = least_recent(other.sessions.values(), unwatched, gone)
            if victim is not None:
                break
        else:  # an idle session of anyone holding more than the newcomer would
            victim = least_recent(sessions.values(), lambda s: idle(s) and len(s.client.sessions) > own_sessions, gone)
        if victim is None:
            raise too_many_sessions(limits.max_sessions, sessions_held)
        plan.append(victim)
        gone.add(victim.key)
        tasks_held -= len(victim.tasks)
    if limits.max_tasks is not None and tasks_held >= limits.max_tasks:
        task = None
        for other in fair_victims(others, lambda c: c.tasks, own_tasks):
            task = first_of(other.unstarted, gone) or first_of(other.finished, gone)
            if task is not None:
                break
        if task is None:
            raise too_many_tasks(limits.max_tasks, tasks_held)
        plan.append(task)
    return plan


def reached(held: int, cap: int | None) -> bool:
    return cap is not None and held >= cap


def idle(session: SessionTasks) -> bool:
    return not session.active


def unwatched(session: SessionTasks) -> bool:
    """Nothing of it runs or was ever started: what a full pool may take from a larger holder."""
    never_started = len(session.unstarted) + len(session.later)
    return not session.counts[TaskStatus.RUNNING] and session.counts[TaskStatus.PENDING] == never_started


def least_recent(
    sessions: Iterable[SessionTasks], fits: Callable[[SessionTasks], bool], gone: set[str]
) -> SessionTasks | None:
    """The least recently changed of `sessions` that `fits`, leaving out those in `gone`."""
    best = None
    for session in sessions:
        if session.key not in gone and (best is None or session.changed_ms < best.changed_ms) and fits(session):
            best = session
    return best


def first_of(index: dict[str, SessionTasks], gone: set[str]) -> StoredTask | None:
    """The first task of a client's index (never started, or finished) not in a session in
    `gone`, among its first `LOOKS`."""
    for task_id, session in itertools.islice(index.items(), LOOKS):
        if session.key not in gone:
            return session.tasks[task_id]
    return None

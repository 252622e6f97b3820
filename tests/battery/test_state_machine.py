"""A hypothesis state machine drives the HTTP API from several sessions at once.

Sessions: two token sessions (one sends the ``X-Session-Token`` header, one the
cookie) and two IP sessions (requests from two client addresses, IP mapping on).
Tasks run the `script` executor with ``hold: true``: a started task stays running
until the machine releases it, then completes (or fails, if scripted to).

After every step each session's list and stats equal the model, and every task's
history is a walk through the state machine of `async_tasks.task`. Operations on
another session's task answer exactly like those on an unknown id (404) and change
nothing; an Idempotency-Key replays only within its own session.

``BATTERY_EXAMPLES=1000`` runs more and longer programs.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from async_tasks.settings import Settings
from async_tasks.task import TERMINAL, Task, TaskStatus, can_transition
from async_tasks.testing import FakeClock
from async_tasks.web.app import create_app
from async_tasks.web.middleware import COOKIE_NAME
from tests.battery.harness import PortalApp, blocking_portal, running
from tests.helpers import SECRET, TEST_EXECUTORS, TEST_HOST, ScriptExecutor, find_task, wait_for

pytestmark = pytest.mark.battery

API = "/api/v1"
EXAMPLES = int(os.environ.get("BATTERY_EXAMPLES", "0")) or None
#: Finished tasks kept per status and session by the cleaner (small, so cleanup has work).
KEEP = 2
ACTIONS = ("start", "cancel", "retry")


@dataclass
class Session:
    name: str
    ip: str
    token: str | None = None
    cookie: bool = False
    key: str = ""

    def headers(self) -> dict[str, str]:
        if self.token is None:
            return {}
        if self.cookie:
            return {"Cookie": f"{COOKIE_NAME}={self.token}"}
        return {"X-Session-Token": self.token}


@dataclass
class Model:
    id: str
    session: Session
    status: str
    fails: bool
    #: Order in which the task last entered a terminal status (retention keeps the newest).
    finished: int = -1


def assert_history_legal(history: list[Any], status: str) -> None:
    """The audit trail starts at `pending` (created) and each entry is a legal move from the last."""
    first = history[0]
    assert (first.status, first.previous, first.reason) == (TaskStatus.PENDING, None, "created")
    for before, entry in itertools.pairwise(history):
        assert entry.previous is before.status, history
        # An entry standing for transitions left out of a capped history spans several.
        assert entry.omitted or can_transition(before.status, entry.status), history
    assert history[-1].status.value == status


class TaskMachine(RuleBasedStateMachine):
    """One program. Programs share one running app (building one costs more than a whole
    program); each opens fresh sessions, so earlier programs' tasks are foreign ones."""

    api: ClassVar[PortalApp]
    programs: ClassVar[Iterator[int]] = itertools.count(1)

    def __init__(self) -> None:
        super().__init__()
        self.app = self.api.app
        self.tasks: dict[str, Model] = {}
        #: (session name, Idempotency-Key) -> (task id, the request's `steps`)
        self.keys: dict[tuple[str, str], tuple[str, int]] = {}
        self.finish_order = itertools.count()
        n = next(self.programs)
        net = f"10.{n // 200}.{n % 200}"
        self.sessions = [
            Session("token-header", f"{net}.1"),
            Session("token-cookie", f"{net}.1", cookie=True),
            Session("ip-a", f"{net}.2"),
            Session("ip-b", f"{net}.3"),
        ]

    def teardown(self) -> None:
        # Leave nothing held for the next program: cancel what still runs.
        for model in self.tasks.values():
            if model.status in ("pending", "running"):
                self.send(model.session, "POST", f"/tasks/{model.id}/cancel")
            self.api.call(ScriptExecutor.released.pop, model.id, None)

    # -- plumbing ------------------------------------------------------------------

    def send(
        self, session: Session, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        headers = {**session.headers(), **(headers or {})}
        return self.api.request(method, f"{API}{path}", ip=session.ip, headers=headers, **kwargs)

    def stored(self, task_id: str) -> Task | None:
        return find_task(self.app, task_id)

    def fingerprint(self, task_id: str) -> tuple[Any, ...]:
        task = self.stored(task_id)
        assert task is not None
        return (task.status, task.progress, task.attempts, task.updated_at, len(task.history), task.session_key)

    def finish(self, model: Model, status: str) -> None:
        model.status = status
        if TaskStatus(status) in TERMINAL:
            model.finished = next(self.finish_order)

    def pick(self, data: st.DataObject, *statuses: str) -> Model:
        # In creation order (ids are random: sorting them would make programs unrepeatable).
        models = [t for t in self.tasks.values() if not statuses or t.status in statuses]
        return data.draw(st.sampled_from(models))

    def has(self, *statuses: str) -> bool:
        return any(t.status in statuses for t in self.tasks.values())

    # -- sessions ------------------------------------------------------------------

    @initialize()
    def open_sessions(self) -> None:
        for session in self.sessions:
            if session.name.startswith("token"):
                response = self.api.request("POST", f"{API}/session", ip=session.ip)
                assert response.status_code == 201
                session.token, session.key = response.json()["token"], response.json()["sessionKey"]
            else:
                session.key = self.send(session, "GET", "/session").json()["sessionKey"]
        keys = [s.key for s in self.sessions]
        assert len(set(keys)) == len(keys), keys

    # -- commands ------------------------------------------------------------------

    @rule(
        index=st.integers(0, 3), start=st.booleans(), fails=st.booleans(), demo=st.booleans(), steps=st.integers(0, 3)
    )
    def create(self, index: int, start: bool, fails: bool, demo: bool, steps: int) -> None:
        session = self.sessions[index]
        params = {"hold": True, "steps": steps, "fail": "scripted failure" if fails else None}
        if demo:  # the demo route always starts the task
            response = self.send(session, "POST", "/demo/tasks/script", json=params)
            start = True
        else:
            response = self.send(
                session, "POST", "/tasks", json={"executor": "script", "params": params, "start": start}
            )
        assert response.status_code == 201, response.text
        task = response.json()["task"]
        assert task["sessionKey"] == session.key
        self.tasks[task["id"]] = Model(task["id"], session, "running" if start else "pending", fails)
        assert task["status"] == self.tasks[task["id"]].status

    @rule(index=st.integers(0, 3), key=st.sampled_from(["alpha", "beta"]), steps=st.integers(0, 1))
    def create_idempotent(self, index: int, key: str, steps: int) -> None:
        """An Idempotency-Key replays its task within its session only; it is free again
        once that task is gone."""
        session = self.sessions[index]
        body = {"executor": "script", "start": True, "params": {"hold": True, "steps": steps}}
        response = self.send(session, "POST", "/tasks", headers={"Idempotency-Key": key}, json=body)
        seen = self.keys.get((session.name, key))
        if seen is None:
            assert response.status_code == 201, response.text
            task_id = response.json()["task"]["id"]
            assert task_id not in self.tasks
            self.tasks[task_id] = Model(task_id, session, "running", fails=False)
            self.keys[(session.name, key)] = (task_id, steps)
        elif seen[1] == steps:
            assert response.status_code == 200, response.text
            assert response.headers["Idempotent-Replayed"] == "true"
            assert response.json()["task"]["id"] == seen[0]
        else:
            assert response.status_code == 422, response.text
            assert response.json()["error"]["code"] == "idempotency_key_reused"

    def forget(self, model: Model) -> None:
        del self.tasks[model.id]
        for slot, (task_id, _) in list(self.keys.items()):
            if task_id == model.id:
                del self.keys[slot]

    @rule(data=st.data(), action=st.sampled_from(ACTIONS))
    @precondition(lambda self: self.tasks)
    def control(self, data: st.DataObject, action: str) -> None:
        model = self.pick(data)
        legal = {
            "start": {"pending": "running"},
            "cancel": {"pending": "cancelled", "running": "cancelled"},
            "retry": {"failed": "running", "cancelled": "running"},  # retried tasks start again at once
        }[action]
        if action == "retry" and model.status in legal:  # the new attempt holds again until released
            self.api.call(ScriptExecutor.released.pop, model.id, None)
        response = self.send(model.session, "POST", f"/tasks/{model.id}/{action}")
        if model.status in legal:
            assert response.status_code == 200, response.text
            self.finish(model, legal[model.status])
            assert response.json()["task"]["status"] == model.status
        else:
            assert response.status_code == 409, response.text
            assert response.json()["error"]["code"] == "invalid_transition"

    @rule(data=st.data())
    @precondition(lambda self: self.tasks)
    def delete(self, data: st.DataObject) -> None:
        model = self.pick(data)
        response = self.send(model.session, "DELETE", f"/tasks/{model.id}")
        if model.status == "running":
            assert response.status_code == 409, response.text
            return
        assert response.status_code == 204, response.text
        self.forget(model)
        assert self.send(model.session, "GET", f"/tasks/{model.id}").status_code == 404

    @rule(data=st.data())
    @precondition(lambda self: self.has("running"))
    def release(self, data: st.DataObject) -> None:
        """Let a held task finish: it completes, or fails if scripted to."""
        model = self.pick(data, "running")
        self.api.call(ScriptExecutor.release, model.id)
        task: Task = self.api.call(wait_for, self.app, model.id, "completed", "failed")
        self.finish(model, "failed" if model.fails else "completed")
        assert task.status.value == model.status
        if model.fails:
            assert task.error == "RuntimeError: scripted failure"

    @rule(index=st.integers(0, 3))
    def cleanup(self, index: int) -> None:
        """Retention keeps the newest KEEP finished tasks per status, in the caller's session only."""
        session = self.sessions[index]
        removed = []
        for status in ("completed", "failed", "cancelled"):
            done = sorted(
                (t for t in self.tasks.values() if t.session is session and t.status == status),
                key=lambda t: t.finished,
            )
            removed += done[: max(0, len(done) - KEEP)]
        response = self.send(session, "POST", "/tasks/cleanup/run")
        assert response.status_code == 200
        assert response.json()["result"]["removed"] == len(removed)
        for model in removed:
            self.forget(model)

    # -- isolation -----------------------------------------------------------------

    @rule(
        data=st.data(),
        other=st.integers(1, 3),
        op=st.sampled_from(
            [
                ("GET", ""),
                ("GET", "/status"),
                ("POST", "/start"),
                ("POST", "/cancel"),
                ("POST", "/retry"),
                ("DELETE", ""),
            ]
        ),
    )
    @precondition(lambda self: self.tasks)
    def foreign_access(self, data: st.DataObject, other: int, op: tuple[str, str]) -> None:
        """Another session's task is indistinguishable from a missing one, and stays as it was."""
        model = self.pick(data)
        stranger = self.sessions[(self.sessions.index(model.session) + other) % len(self.sessions)]
        before = self.fingerprint(model.id)
        answers = []
        for task_id in (model.id, str(uuid.uuid4())):
            response = self.send(stranger, op[0], f"/tasks/{task_id}{op[1]}")
            assert response.status_code == 404, (op, response.text)
            answers.append(response.text.replace(task_id, "<id>"))
        assert answers[0] == answers[1] and "task_not_found" in answers[0]
        assert self.fingerprint(model.id) == before

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def lists_and_stats_match_the_model(self) -> None:
        for session in self.sessions:
            if not session.key:
                continue
            mine = {t.id: t.status for t in self.tasks.values() if t.session is session}
            listing = self.send(session, "GET", "/tasks", params={"limit": 1000}).json()
            assert {t["id"]: t["status"] for t in listing["tasks"]} == mine, session.name
            assert listing["count"] == listing["total"] == len(mine)
            stats = self.send(session, "GET", "/tasks/stats").json()["stats"]
            expected = {status.value: 0 for status in TaskStatus}
            for status in mine.values():
                expected[status] += 1
            assert {k: stats[k] for k in expected} == expected, session.name
            assert stats["total"] == len(mine)

    @invariant()
    def histories_are_legal(self) -> None:
        for model in self.tasks.values():
            task = self.stored(model.id)
            assert task is not None and task.session_key == model.session.key
            assert_history_legal(task.history, model.status)


@pytest.fixture(scope="module")
def api() -> Iterator[PortalApp]:
    app = create_app(
        Settings(
            secret_key=SECRET,
            allowed_hosts=TEST_HOST,
            task_create_rate=0.0,
            max_completed_tasks=KEEP,
            max_failed_tasks=KEEP,
            max_cancelled_tasks=KEEP,
            shutdown_grace_ms=0,
        ),
        TEST_EXECUTORS,
        environ={},
        clock=FakeClock(),  # the periodic cleaner never fires: cleanup happens only when asked
    )
    with blocking_portal() as portal, running(app, portal) as api:
        yield api


def test_random_programs_keep_sessions_isolated_and_transitions_legal(api: PortalApp) -> None:
    TaskMachine.api = api
    run_state_machine_as_test(
        TaskMachine,
        settings=settings(
            max_examples=EXAMPLES or 10,
            stateful_step_count=50 if EXAMPLES else 20,
            deadline=None,
            derandomize=EXAMPLES is None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

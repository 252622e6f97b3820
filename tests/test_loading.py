"""``--app module:attribute``: a module in the current directory, the kinds it may name,
and one-line refusals saying what was expected."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from async_tasks.errors import SettingsError
from async_tasks.loading import load_target
from async_tasks.server import serve
from async_tasks.system import TaskSystem
from async_tasks.worker import load_app
from tests.helpers import SECRET
from tests.live import start_server_process
from tests.servers import free_port

POC = """
from litestar import Litestar

from async_tasks import AsyncTasksPlugin, Progress, TaskParams, TaskSystem, executor


class ReportParams(TaskParams):
    rows: int = 3


@executor("report", title="Report")
async def report(params: ReportParams, progress: Progress) -> dict[str, int]:
    await progress(50)
    return {"rows": params.rows}


EXECUTORS = [report]
NUMBER = 42
MIXED = [report, "not an executor"]
BARE_APP = Litestar(route_handlers=[])


def create_system() -> TaskSystem:
    return TaskSystem(executors=[report], load_entry_points=False)


def create_app() -> Litestar:
    return Litestar(plugins=[AsyncTasksPlugin(executors=[report], load_entry_points=False)])


def broken() -> None:
    raise ValueError("no database")
"""


@pytest.fixture
def poc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module of its own name in a temporary current directory (as a user's file would be)."""
    name = f"poc_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(POC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", os.getcwd())])
    return name


def test_every_kind_loads_from_the_current_directory(poc: str) -> None:
    """A list of executors, one executor, a TaskSystem factory and an app factory all load."""
    assert [e.name for e in load_target(f"{poc}:EXECUTORS").executors or []] == ["report"]
    assert [e.name for e in load_target(f"{poc}:report").executors or []] == ["report"]
    system = load_target(f"{poc}:create_system").system
    assert isinstance(system, TaskSystem) and system.executors.names() == ["report"]
    app = load_target(f"{poc}:create_app")
    assert app.app is not None and app.task_system is not None
    assert app.task_system.executors.names() == ["report"]
    # The worker takes an engine's or an app's executors, without the entry points again.
    assert [type(e).name for e in load_app(f"{poc}:create_app")[0]] == ["report"]
    assert load_app(f"{poc}:create_app")[1] is False


@pytest.mark.parametrize(
    ("attribute", "says"),
    [
        ("NUMBER", "is an int; expected executors (a TaskExecutor class or a list of them), a TaskSystem"),
        ("MIXED", "the list holds a str, not an executor"),
        ("BARE_APP", "this Litestar app has no AsyncTasksPlugin"),
        ("broken", "calling broken() failed: ValueError: no database (poc_"),
        ("missing", "has no attribute 'missing'"),
    ],
)
def test_a_wrong_target_is_refused_in_one_line(poc: str, attribute: str, says: str) -> None:
    """What --app names but cannot serve is one line saying what was expected."""
    with pytest.raises(SettingsError) as refused:
        load_target(f"{poc}:{attribute}")
    assert says in str(refused.value) and "\n" not in str(refused.value)


def test_a_missing_module_says_where_it_was_looked_for(
    poc: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`serve --app` with a module that is not there stops with status 2 and one line."""
    assert serve(app="no_such_module:EXECUTORS", port=free_port()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"no module named 'no_such_module' in {tmp_path}" in err


def _cli() -> str:
    """The installed ``async-tasks`` command (not ``python -m``, which would put the current
    directory on the path by itself)."""
    return str(Path(sys.executable).with_name("async-tasks"))


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_serve_and_worker_run_executors_from_the_current_directory(tmp_path: Path, redis_url: str) -> None:
    """``async-tasks serve --app poc:EXECUTORS`` and ``async-tasks worker --app poc:EXECUTORS``,
    started in the folder holding poc.py, accept and run its task."""
    (tmp_path / "poc.py").write_text(POC)
    port = free_port()
    env = {
        **os.environ,
        "SECRET_KEY": SECRET,
        "TASK_BACKEND": redis_url,
        "REDIS_KEY_PREFIX": f"loading-{uuid.uuid4().hex[:8]}:",
    }
    env.pop("PYTHONPATH", None)
    server = start_server_process([_cli(), "serve", "--app", "poc:EXECUTORS", "--port", str(port)], env, port, tmp_path)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [_cli(), "worker", "--app", "poc:EXECUTORS"], cwd=tmp_path, env=env, stdout=log, stderr=log
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1", timeout=5) as http:
            created = http.post("/demo/tasks/report", json={"rows": 7})
            assert created.status_code == 201, created.text
            task_id = created.json()["task"]["id"]
            deadline = time.monotonic() + 20
            while (task := http.get(f"/tasks/{task_id}").json()["task"])["status"] != "completed":
                assert task["status"] in ("pending", "running"), task
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
                time.sleep(0.05)
            assert task["result"] == {"rows": 7}
    finally:
        for process in (server, worker):
            process.terminate()
            process.wait(timeout=15)
        log.close()

"""Executors registered by entry point and in code; the plugin inside a foreign app."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar, get, post
from litestar.di import NamedDependency

from async_tasks import AsyncTasksPlugin, TaskExecutor, TaskSystem
from async_tasks.errors import ExecutorRegistrationError
from async_tasks.executor import ExecutorRegistry
from async_tasks.settings import BackendSettings, Settings
from async_tasks.testing import serve_in_loop
from executors.sample import SampleExecutor
from tests.helpers import BUILTIN_EXECUTORS, SECRET, ScriptExecutor, wait_for


def test_builtins_register_through_entry_points() -> None:
    registry = ExecutorRegistry.build()
    assert {"sample", "file-processing", "api-call", "batch"} <= set(registry.names())
    assert isinstance(registry.get("sample"), SampleExecutor)
    # The tests' apps register these directly instead of scanning the entry points.
    assert {type(e) for e in registry} == set(BUILTIN_EXECUTORS)


def test_third_party_entry_point_is_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A package declaring `[project.entry-points."async_tasks.executors"]` needs nothing else."""
    ep = EntryPoint(name="script", value="tests.helpers:ScriptExecutor", group="async_tasks.executors")
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [ep])
    registry = ExecutorRegistry.build()
    assert registry.names() == ["script"] and isinstance(registry.get("script"), ScriptExecutor)


def test_duplicate_names_are_refused() -> None:
    class Impostor(TaskExecutor[Any]):
        name = "sample"

        async def execute(self, task: Any, progress: Any) -> None: ...

    with pytest.raises(ExecutorRegistrationError, match="Duplicate executor name 'sample'"):
        ExecutorRegistry.build([Impostor])


@pytest.mark.parametrize("broken", ["no_name", "no_execute", "bad_params"])
def test_half_defined_executors_are_refused(broken: str) -> None:
    attrs: dict[str, Any] = {"name": "x"}
    if broken == "no_name":
        attrs = {}
    if broken != "no_execute":

        async def execute(self: Any, task: Any, progress: Any) -> None: ...

        attrs["execute"] = execute
    if broken == "bad_params":
        attrs["Params"] = dict
    cls = type("Broken", (TaskExecutor,), attrs)
    with pytest.raises(ExecutorRegistrationError):
        ExecutorRegistry.build([cls], load_entry_points=False)


async def test_plugin_in_a_foreign_app_with_its_own_routes() -> None:
    """The seed's `createTask(req, {...})`: a handler gets `task_system` and its caller's
    `session_key` injected and returns at once."""

    @get("/")
    async def home() -> dict[str, str]:
        return {"app": "mine"}

    @post("/files/process")
    async def process_file(
        task_system: NamedDependency[TaskSystem], session_key: NamedDependency[str]
    ) -> dict[str, Any]:
        task = await task_system.create_task(
            session_key,
            executor="script",
            params={"steps": 2},
            name="File Processing",
            description="Processing uploaded file",
            metadata={"fileName": "a.txt"},
        )
        return {"message": "File processing started", "taskId": task.id, "status": task.status.value}

    plugin = AsyncTasksPlugin(
        executors=[ScriptExecutor], path="/tasks-api", load_entry_points=False, settings=Settings(secret_key=SECRET)
    )
    app = Litestar(route_handlers=[home, process_file], plugins=[plugin])
    async with serve_in_loop(app) as client:
        assert (await client.get("/")).json() == {"app": "mine"}
        started = (await client.post("/files/process")).json()
        assert started["message"] == "File processing started" and started["status"] == "running"
        task = await wait_for(app, started["taskId"], "completed")
        assert task.metadata == {"fileName": "a.txt"} and task.name == "File Processing"
        status = await client.get(f"/tasks-api/tasks/{started['taskId']}/status")
        assert status.status_code == 200 and status.json()["status"] == "completed"
        assert (await client.get("/api/v1/tasks")).status_code == 404  # mounted where asked, only there
        executors = (await client.get("/tasks-api/executors")).json()["executors"]
        assert [e["name"] for e in executors] == ["script"]


async def test_create_app_takes_executors_in_code(make_app: Any) -> None:
    class Hello(TaskExecutor[Any]):
        name = "hello"
        title = "Say Hello"

        async def execute(self, task: Any, progress: Any) -> str:
            await progress(50, step="Greeting", description="saying hello")
            return "hello"

    app = make_app([Hello], load_entry_points=False)
    async with serve_in_loop(app) as client:
        response = await client.post("/api/v1/demo/tasks/hello", json={})
        assert response.status_code == 201
        done = await wait_for(app, response.json()["task"]["id"], "completed")
        assert done.result == "hello" and done.name == "Say Hello"


async def test_task_system_works_without_a_request(client: httpx.AsyncClient, app: Litestar) -> None:
    """Background code can create tasks in a named session."""
    system: TaskSystem = app.state.task_system
    task = await system.create_task("s_batch-job", executor="script")
    await wait_for(app, task.id, "completed")
    assert (await system.list_tasks("s_batch-job")).total == 1


async def test_the_session_is_documented_as_optional_security(client: httpx.AsyncClient) -> None:
    """The OpenAPI document declares the token header and the cookie; every API operation accepts
    either or neither, health probes need none."""
    document = (await client.get("/schema/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["sessionToken"] == {**schemes["sessionToken"], "type": "apiKey", "in": "header"}
    assert schemes["sessionToken"]["name"] == "X-Session-Token"
    assert schemes["sessionCookie"]["in"] == "cookie" and schemes["sessionCookie"]["name"] == "async_tasks_session"
    assert document["security"] == [{"sessionToken": []}, {"sessionCookie": []}, {}]
    assert document["paths"]["/health"]["get"]["security"] == [{}]


def test_a_foreign_apps_default_openapi_config_is_not_changed() -> None:
    """The plugin documents the session in a copy: Litestar's shared default config stays as it was."""
    from litestar.app import DEFAULT_OPENAPI_CONFIG

    before = (DEFAULT_OPENAPI_CONFIG.security, DEFAULT_OPENAPI_CONFIG.components)
    app = Litestar(plugins=[AsyncTasksPlugin(settings=Settings(secret_key=SECRET), load_entry_points=False)])
    assert "sessionToken" in app.openapi_schema.to_schema()["components"]["securitySchemes"]
    assert (DEFAULT_OPENAPI_CONFIG.security, DEFAULT_OPENAPI_CONFIG.components) == before


def test_a_package_of_the_same_name_hiding_the_builtins_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's own package in the working directory named like the one declaring an entry
    point (say `executors/`) hides the installed one: start-up says so instead of only
    "No module named 'executors.sample'"."""
    (tmp_path / "shadowed").mkdir()
    (tmp_path / "shadowed" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = EntryPoint(name="sample", value="shadowed.sample:SampleExecutor", group="async_tasks.executors")
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [ep])
    with pytest.raises(ExecutorRegistrationError, match=r"'shadowed' in the current directory .* hides the installed"):
        ExecutorRegistry.build()


async def test_an_engine_built_with_its_part_of_the_settings_gets_a_web_door() -> None:
    """An engine built alone (`BackendSettings`: no web settings) serves through the plugin:
    the door's settings are its own (here given), the engine keeps its limits."""
    system = TaskSystem([ScriptExecutor], settings=BackendSettings(max_task_data_bytes=2048), load_entry_points=False)
    plugin = AsyncTasksPlugin(system=system, settings=Settings(secret_key=SECRET, max_request_body_bytes=1024 * 1024))
    app = Litestar(plugins=[plugin])
    assert plugin.settings.secret_key == SECRET and system.settings.max_task_data_bytes == 2048
    async with serve_in_loop(app) as client:
        big = {"executor": "script", "metadata": {"blob": "x" * 20_000}}
        refused = await client.post("/api/v1/tasks", json=big)  # beyond the body the engine's bound allows
        assert refused.status_code == 413 and refused.json()["error"]["code"] == "request_too_large"
        created = await client.post("/api/v1/tasks", json={"executor": "script", "start": True})
        assert created.status_code == 201
        await wait_for(app, created.json()["task"]["id"], "completed")

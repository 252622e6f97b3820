"""The seed's processLargeFile example, running inside a foreign app (one for the module;
each test's client has a session of its own)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from litestar import Litestar

from async_tasks import EXCEPTION_HANDLERS
from async_tasks.testing import asgi_client
from demos.integration import create_app
from tests.helpers import new_address, wait_for


@pytest.fixture(scope="module")
async def app() -> AsyncIterator[Litestar]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SECRET_KEY", "integration-secret-0123456789")
        app = create_app()
    async with app.lifespan():
        yield app


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app, new_address()) as http:
        yield http


async def test_process_large_file_returns_at_once_and_the_task_completes(
    app: Litestar, client: httpx.AsyncClient
) -> None:
    response = await client.post("/files/process", json={"fileName": "welcome.txt", "filePath": "welcome.txt"})
    assert response.status_code == 202
    body = response.json()
    assert body["message"] == "File processing started" and body["status"] in ("pending", "running")
    task = await wait_for(app, body["taskId"], "completed")
    assert task.metadata == {"fileName": "welcome.txt", "fileSize": 0}
    assert task.result["sizeBytes"] > 0
    status = (await client.get(f"/api/v1/tasks/{body['taskId']}/status")).json()
    assert status["status"] == "completed"
    # The example's own executor is registered beside the installed ones.
    names = [e["name"] for e in (await client.get("/api/v1/executors")).json()["executors"]]
    assert "text-transform" in names and "file-processing" in names


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        ({"fileName": "x", "filePath": "../../etc/passwd"}, "filePath", "filePath must stay inside the demo folder"),
        ({"fileName": "x", "filePath": "missing.txt"}, "filePath", "No such file in the demo folder"),
        ({"fileName": "x"}, "filePath", "filePath is required."),
        ({"fileName": "x", "filePath": "welcome.txt", "owner": "me"}, "owner", "The request body has no field 'owner'"),
    ],
)
async def test_mistakes_in_the_users_own_route_get_the_envelope(
    app: Litestar, client: httpx.AsyncClient, body: dict[str, str], key: str, message: str
) -> None:
    """With the one-line EXCEPTION_HANDLERS install, the user's route answers 400 invalid_params in our envelope."""
    assert app.exception_handlers == EXCEPTION_HANDLERS  # what the example installs: the package's own map
    response = await client.post("/files/process", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["success"] is False and error["error"]["code"] == "invalid_params"
    assert str(error["error"]["message"]).startswith(message)
    assert [detail["key"] for detail in error["error"]["details"]] == [key]
    listing = (await client.get("/api/v1/tasks")).json()
    assert listing["total"] == 0  # nothing was created

"""Every curl example of the docs (DEMO_GUIDE.md and docs/) runs as written against
real servers, and every Python example runs.

The pages' blocks are run in order in one bash process (so `TASK_ID=...` set by one
block is used by the next), with only the ports rewritten: `localhost:3000` is the
server of the demo script, `localhost:3001` the integration example (the host names
stay as the pages write them). The server runs with the demo script's own
`API_CALL_ALLOW_HOSTS`. A block starting with `# expect: error` must answer with the
error body; every other block must not. What the blocks started must then turn out
as the pages say: the api-call task completes, the dead-letter list is not empty.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from async_tasks.client import TaskClient
from tests.doc_pages import GUIDE, PAGES, README, ROOT, blocks
from tests.live import start_server_process
from tests.servers import free_port

SEPARATOR = "=====GUIDE-BLOCK====="
SCALE_OUT = "# scale-out"
#: The allow-list the guide starts the server with for its api-call example.
GUIDE_ALLOW = re.compile(r"^API_CALL_ALLOW_HOSTS=(\S+) async-tasks serve$", re.M)

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[int, int]]:
    main_port, integration_port = free_port(), free_port()
    allow = GUIDE_ALLOW.search(GUIDE.read_text())
    assert allow is not None, "the demo script starts the server with API_CALL_ALLOW_HOSTS=... async-tasks serve"
    env = {
        **os.environ,
        "SECRET_KEY": "demo-guide-secret-0123456789",
        "API_CALL_ALLOW_HOSTS": allow[1].replace(":3001", f":{integration_port}"),
        "TASK_CREATE_RATE": "0",
        # The admin section's key (its curl examples run against the quick start's server).
        "ADMIN_API_KEYS": "ops:demo-admin-key-0123456789",
    }
    main = start_server_process(
        [sys.executable, "-m", "async_tasks.cli", "serve", "--port", str(main_port)], env, main_port
    )
    integration = start_server_process(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "demos.integration:create_app",
            "--factory",
            "--port",
            str(integration_port),
            "--log-level",
            "warning",
        ],
        env,
        integration_port,
    )
    try:
        yield main_port, integration_port
    finally:
        for process in (main, integration):
            process.terminate()
            process.wait(timeout=15)


def guide_blocks() -> list[str]:
    """The bash blocks that talk to the demo script's servers, every page's, in order."""
    return [
        b
        for b in blocks("bash")
        if ("curl" in b or "async-tasks " in b)
        and "async-tasks serve" not in b
        and "uvicorn " not in b
        and not b.startswith(SCALE_OUT)  # run by tests/test_redis_processes.py
    ]


def test_guide_has_curl_examples_for_every_demo_endpoint() -> None:
    text = "\n".join(guide_blocks())
    for path in [
        "demo/tasks/sample",
        "demo/tasks/file-processing",
        "demo/tasks/api-call",
        "demo/tasks/batch",
        "/status",
        "/cancel",
        "/retry",
        "/start",
        "tasks/stats",
        "cleanup/status",
        "cleanup/run",
        "/session",
        "/executors",
        "-X DELETE",
        "files/process",
        "admin/tasks",
        "admin/tasks/retry",
        "admin/workers",
        "admin/queues",
    ]:
        assert path in text, path


@pytest.mark.e2e
def test_every_curl_example_runs_as_written(servers: tuple[int, int]) -> None:
    main_port, integration_port = servers
    examples = guide_blocks()
    script = ["set -eu"]
    for block in examples:
        code = (
            block.replace("localhost:3000", f"127.0.0.1:{main_port}")
            .replace("127.0.0.1:3000", f"127.0.0.1:{main_port}")
            .replace("localhost:3001", f"localhost:{integration_port}")
        )
        script += [f"echo '{SEPARATOR}'", code]
    # The CLI's default server is the demo script's (localhost:3000): this test's.
    env = {**os.environ, "ASYNC_TASKS_URL": f"http://127.0.0.1:{main_port}"}
    result = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, timeout=120, env=env)
    outputs = result.stdout.split(SEPARATOR + "\n")[1:]
    assert len(outputs) == len(examples), result.stderr
    for block, output in zip(examples, outputs, strict=True):
        expect_error = block.lstrip().startswith("# expect: error")
        prints = any(line.lstrip().startswith(("curl", "async-tasks")) for line in block.splitlines())
        assert output.strip() or not prints, f"no output from:\n{block}\nstderr: {result.stderr}"
        if expect_error:
            assert '"success":false' in output, f"expected an error from:\n{block}\ngot: {output}"
        else:
            assert '"success":false' not in output and "Internal" not in output, f"{block}\n->\n{output}"
        if "deadLetter=true" in block:
            assert '"tasks":[]' not in output, f"the dead-letter example listed nothing:\n{output}"
    assert result.returncode == 0, result.stderr
    # The curl calls had no token: the same session as a client from this address.
    with TaskClient(f"http://127.0.0.1:{main_port}", timeout=30) as tasks:
        calls = [tasks.wait(t["id"], timeout=30) for t in tasks.list_tasks(executor="api-call", limit=100)]
    integration = [t for t in calls if f"localhost:{integration_port}" in t["params"]["endpoint"]]
    assert integration, "the guide's api-call example created no task"
    for task in integration:
        assert task["status"] == "completed", f"{task['params']['endpoint']}: {task['error']}"


PYTHON_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def pages_with_python() -> list[str]:
    return [str(page.relative_to(ROOT)) for page in (README, *PAGES) if PYTHON_BLOCK.search(page.read_text())]


@pytest.mark.e2e
@pytest.mark.parametrize("document", pages_with_python())
def test_python_examples_run_as_written(document: str, servers: tuple[int, int]) -> None:
    """Each Python block executes (against the demo script's server); the test functions it defines pass."""
    import anyio

    examples = PYTHON_BLOCK.findall((ROOT / document).read_text())
    assert examples
    for block in examples:
        block = block.replace("localhost:3000", f"127.0.0.1:{servers[0]}")
        namespace: dict[str, object] = {"__name__": f"guide_example_{abs(hash(block))}"}
        exec(compile(block, document, "exec"), namespace)
        for name, value in namespace.items():
            if name.startswith("test_") and callable(value):
                anyio.run(value)


def test_readme_executor_example_works() -> None:
    import anyio

    from async_tasks.testing import run_executor

    namespace: dict[str, object] = {"__name__": "readme_example"}
    readme = (ROOT / "README.md").read_text()
    exec(compile(PYTHON_BLOCK.findall(readme)[0], "README.md", "exec"), namespace)
    greet: Any = namespace["GreetExecutor"]
    run = anyio.run(run_executor, greet, {"who": "demo"})
    assert run.result == {"greeting": "Hello, demo!"} and run.steps == ["Thinking", "Speaking"]

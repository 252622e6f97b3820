"""DEMO_GUIDE's scale-out section runs as written: its processes (redis-server, two API
servers, a worker) each started from its line of the guide, then its curl blocks in
order, with only the ports rewritten. Every process is stopped by its PID."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from async_tasks.testing import free_port
from tests.test_demo_guide import BLOCK, GUIDE, ROOT, SCALE_OUT, SEPARATOR

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("redis-server") is None, reason="needs curl and redis-server"
)
PROCESSES = "# scale-out: each command in its own terminal"


def scale_out_blocks() -> tuple[list[str], list[str]]:
    """The process lines, and the curl blocks, of the scale-out section."""
    blocks = [b for b in BLOCK.findall(GUIDE.read_text()) if b.startswith(SCALE_OUT)]
    processes = [b for b in blocks if b.startswith(PROCESSES)]
    assert len(processes) == 1, "the scale-out section starts its processes in one block"
    lines = [line for line in processes[0].splitlines()[1:] if line.strip()]
    return lines, [b for b in blocks if not b.startswith(PROCESSES)]


def rewrite(text: str, ports: dict[str, int]) -> str:
    return re.sub(r"(localhost:|--port )(6379|3000|3001)\b", lambda m: f"{m.group(1)}{ports[m.group(2)]}", text)


@pytest.fixture
def scale_out(tmp_path: Path) -> Iterator[dict[str, int]]:
    ports = {"6379": free_port(), "3000": free_port(), "3001": free_port()}
    lines, _ = scale_out_blocks()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i, line in enumerate(lines):
            log = (tmp_path / f"process{i}.log").open("wb")
            # `exec env ...`: the process started is the guide's command itself (stopped by its PID).
            command = ["bash", "-c", "exec env " + rewrite(line, ports)]
            processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
            if i == 0:
                time.sleep(0.2)  # redis-server's own start-up, before the others connect
        deadline = time.monotonic() + 30
        for port in (ports["3000"], ports["3001"]):
            while True:  # the servers' own start-up
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    logs = "\n".join(p.read_text() for p in tmp_path.glob("*.log"))
                    raise RuntimeError(f"the scale-out processes did not start:\n{logs}")
                time.sleep(0.05)
        yield ports
    finally:
        # The servers and the worker first, then Redis (they still talk to it while stopping).
        for group in (processes[1:], processes[:1]):
            for process in group:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in group:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def test_the_scale_out_section_runs_as_written(scale_out: dict[str, int]) -> None:
    """Create on one API server, poll and stream on the other, cancel across them, /ready."""
    _, blocks = scale_out_blocks()
    script = ["set -eu"]
    for block in blocks:
        script += [f"echo '{SEPARATOR}'", rewrite(block, scale_out)]
    result = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    outputs = result.stdout.split(SEPARATOR + "\n")[1:]
    assert len(outputs) == len(blocks)
    for block, output in zip(blocks, outputs, strict=True):
        assert output.strip() and '"success":false' not in output, f"{block}\n->\n{output}"
    status, stream, control = outputs
    assert '"status":"pending"' in status or '"status":"running"' in status
    assert "event: snapshot" in stream and '"status":"completed"' in stream.splitlines()[-2]
    assert '"status":"cancelled"' in control and '"redis":"ok"' in control

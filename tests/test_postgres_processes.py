"""The PostgreSQL backend with real processes: a PostgreSQL cluster, two API servers and a
worker, started from the lines of docs/guides/scale-out.md's PostgreSQL block (ports
rewritten), the demo script's scale-out curl blocks run as written against them, and the same tests as
on Redis (`tests/test_redis_processes.py`, imported here so that they run against this
module's `cluster`): create on one API and stream on the other, cancel anywhere, a killed
worker's task runs again, restarted processes find everything, one task per
Idempotency-Key across both APIs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import forked
from tests.doc_pages import blocks
from tests.faults.postgres_process import PostgresProcess, binary
from tests.servers import free_port
from tests.test_demo_guide import SCALE_OUT, SEPARATOR
from tests.test_redis_processes import (
    Cluster,
    Process,
    clients,
    test_a_killed_worker_s_task_runs_again_on_another,
    test_a_task_made_on_one_api_is_polled_and_streamed_on_the_other,
    test_cancel_on_one_api_stops_the_attempt_on_its_worker,
    test_idempotent_creates_on_two_apis_make_one_task,
    test_restarted_processes_find_every_task_where_it_was,
    test_timeouts_and_retries_across_processes,
)


def _installed() -> bool:
    try:
        binary("initdb")
    except FileNotFoundError:
        return False
    return True


pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not _installed(), reason="needs PostgreSQL")]
PROCESSES = "# postgres scale-out: each command in its own terminal"

__all__ = [
    "clients",
    "test_a_killed_worker_s_task_runs_again_on_another",
    "test_a_task_made_on_one_api_is_polled_and_streamed_on_the_other",
    "test_cancel_on_one_api_stops_the_attempt_on_its_worker",
    "test_idempotent_creates_on_two_apis_make_one_task",
    "test_restarted_processes_find_every_task_where_it_was",
    "test_timeouts_and_retries_across_processes",
]


def postgres_lines() -> list[str]:
    """The guide's PostgreSQL process lines: two servers and a worker."""
    processes = [b for b in blocks("bash") if b.startswith(PROCESSES)]
    assert len(processes) == 1, "the scale-out guide starts its PostgreSQL processes in one block"
    lines = [line for line in processes[0].splitlines()[1:] if line.strip()]
    assert len(lines) == 3 and "serve" in lines[0] and "worker" in lines[2], lines
    return lines


class PostgresCluster(Cluster):
    """`Cluster` on a PostgreSQL of the test's own: the guide's API and worker lines."""

    def __init__(self, logs: Path) -> None:
        self.database = PostgresProcess().start()
        self.ports = {"5432": self.database.port, "3000": free_port(), "3001": free_port()}
        self.lines = postgres_lines()
        self.blocks = [b for b in blocks("bash") if b.startswith(SCALE_OUT) and not b.startswith(SCALE_OUT + ":")]
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "WORKER_LEASE_MS": "600",
            "RETRY_BACKOFF_MS": "0",
            "SHUTDOWN_GRACE_MS": "300",
            "TASK_CREATE_RATE": "0",
            "API_CALL_ALLOW_HOSTS": "127.0.0.1",
        }
        self.logs = logs
        self.apis = [
            Process(f"api{i}", self.rewrite(self.lines[i]), self.env, logs / f"api{i}.log", self.ports[port])
            for i, port in enumerate(("3000", "3001"))
        ]
        self.workers: list[Process] = []
        self.new_worker()

    def rewrite(self, text: str) -> str:
        return re.sub(
            r"(localhost:|--port )(5432|3000|3001)\b", lambda m: m.group(1) + str(self.ports[m.group(2)]), text
        )

    def new_worker(self, line: str | None = None) -> Process:
        name = f"worker{len(self.workers)}"
        worker = Process(name, self.rewrite(line or self.lines[2]), self.env, self.logs / f"{name}.log")
        self.workers.append(worker)
        return worker

    def kill(self) -> None:
        self.stop(*self.apis, *self.workers, sig=signal.SIGKILL)
        self.database.close()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    forked.warm_up()
    made = PostgresCluster(tmp_path_factory.mktemp("postgres-cluster"))
    try:
        made.start(made.apis[0])  # the first creates the schema; the others find it
        made.start(made.apis[1], *made.workers)
        yield made
    finally:
        made.kill()


def test_the_guide_s_scale_out_section_runs_as_written_on_postgres(cluster: Any) -> None:
    """The demo script's scale-out curl blocks against PostgreSQL: create on one server, poll and stream on the other,
    cancel across them, /ready naming postgres."""
    script = ["set -eu"]
    for block in cluster.blocks:
        script += [f"echo '{SEPARATOR}'", cluster.rewrite(block)]
    result = subprocess.run(["bash", "-c", "\n".join(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    outputs = result.stdout.split(SEPARATOR + "\n")[1:]
    assert len(outputs) == len(cluster.blocks) == 3
    for block, output in zip(cluster.blocks, outputs, strict=True):
        assert output.strip() and '"success":false' not in output, f"{block}\n->\n{output}"
    status, stream, control = outputs
    assert '"status":"pending"' in status or '"status":"running"' in status
    assert "event: snapshot" in stream and '"status":"completed"' in stream and "event: end" in stream
    assert '"status":"cancelled"' in control and '"postgres":"ok"' in control

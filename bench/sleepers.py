"""100 000 sleeping tasks: the task server's memory per running task and its ``/status``
latency under that load, against a bare anyio task group measured in-process."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import httpx

from bench.api import API, create_sample_tasks, new_session, session_stats, wait_stats
from bench.load import measure
from bench.servers import app_server, log, run_inproc, running


def sleepers(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    count = args.sleepers
    runs = max(1, min(3, args.rounds))
    app = app_server(args, name="sleeper-app", factory="bench.sleeper_app:create_app")
    result: dict[str, Any] = {"count": count, "runs": runs}
    with (
        running(app, log_dir=log_dir),
        httpx.Client(base_url=app.url, timeout=300, headers={"Content-Type": "application/json"}) as c,
    ):
        token = new_session(c)
        task_id = create_sample_tasks(c, token, 1)[0]
        path = f"{API}/tasks/{task_id}/status"
        result["unloaded"] = [measure(app, path, args, token=token) for _ in range(runs)]
        log("  unloaded p99: " + ", ".join(f"{r['p99_us'] / 1000:.1f} ms" for r in result["unloaded"]))
        load_token = new_session(c)
        time.sleep(1)
        rss_before = app.rss()
        began = time.perf_counter()
        chunk = 5000
        for start in range(0, count, chunk):
            response = c.post(
                "/bench/spawn",
                headers={"X-Session-Token": load_token},
                json={"count": min(chunk, count - start), "seconds": 1800},
            )
            response.raise_for_status()
        spawned = time.perf_counter() - began
        stats = wait_stats(c, load_token, lambda s: s["running"] == count)
        time.sleep(2)
        rss_after = app.rss()
        result.update(
            rss_before=rss_before,
            rss_after=rss_after,
            running=stats["running"],
            bytes_per_task=(rss_after - rss_before) / count,
            spawn_s=spawned,
        )
        log(
            f"  {stats['running']} sleeping tasks, {result['bytes_per_task']:.0f} B/task RSS, spawned in "
            f"{spawned:.1f} s"
        )
        result["loaded"] = [measure(app, path, args, token=token) for _ in range(runs)]
        log("  loaded p99: " + ", ".join(f"{r['p99_us'] / 1000:.1f} ms" for r in result["loaded"]))
        result["still_running"] = session_stats(c, load_token)["running"]
        log("  stopping the server (cancels every sleeping task)")
    result["anyio"] = run_inproc("running-memory", "--kind", "anyio", "--count", str(count))
    result["runner_inproc"] = run_inproc("running-memory", "--kind", "runner", "--count", str(count))
    return result

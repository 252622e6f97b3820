"""``--profile``: py-spy profiles of the task server under the measured load, and their
summary (the event loop's samples per function)."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import httpx

from bench.api import API, LIST_PATH, POST_BODY, create_sample_tasks, new_session
from bench.load import wrk
from bench.servers import CLIENT_CORE, app_server, log, running


def profile_endpoints(args: argparse.Namespace, log_dir: Path) -> dict[str, str]:
    """py-spy profiles of the task server under the same load (separate from the
    measured runs: sampling slows the server)."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        log("py-spy not found: pip install py-spy")
        return {}
    out_dir = Path(args.profile)
    out_dir.mkdir(parents=True, exist_ok=True)
    summaries = {}
    app = app_server(args)
    with (
        running(app, log_dir=log_dir),
        httpx.Client(base_url=app.url, timeout=30, headers={"Content-Type": "application/json"}) as c,
    ):
        token = new_session(c)
        ids = create_sample_tasks(c, token, 50)
        create_token = new_session(c)
        for name, path, method, body, tok in (
            ("status", f"{API}/tasks/{ids[0]}/status", "GET", None, token),
            ("list", LIST_PATH, "GET", None, token),
            ("create", f"{API}/demo/tasks/sample", "POST", POST_BODY, create_token),
        ):
            raw = out_dir / f"{name}.txt"
            wrk(app.url + path, args.warmup or 1, args, method=method, body=body, token=tok)
            spy = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    CLIENT_CORE,
                    py_spy,
                    "record",
                    "-p",
                    str(app.pid),
                    "-d",
                    str(int(args.duration)),
                    "-r",
                    "250",
                    "-f",
                    "raw",
                    "-F",
                    "-o",
                    str(raw),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wrk(app.url + path, args.duration, args, method=method, body=body, token=tok)
            spy.wait(args.duration + 30)
            summary = summarize_profile(raw)
            (out_dir / f"{name}.summary.txt").write_text(summary)
            summaries[name] = summary
            log(f"profile {name}: {raw}")
    return summaries


#: Frames above the ASGI app in every event-loop stack (the CLI, uvicorn's start-up).
_WRAPPER_FRAME = re.compile(r"\((click/|<frozen runpy>|uvicorn/(main|server|_compat|__main__)\.py|asyncio/runners\.py)")


def summarize_profile(path: Path, top: int = 45) -> str:
    """Inclusive and self share of the event-loop thread's samples per function, from
    py-spy's raw output (other threads, idle ones included, are left out)."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or "Runner.run (asyncio/runners.py" not in stack:
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r"^(.*?) \((.*?)(:\d+)?\)$", r"\1 (\2)", f) for f in stack.split(";")]
        for frame in set(frames):
            if not _WRAPPER_FRAME.search(frame):
                inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
    if not total:
        return "no event-loop samples\n"
    lines = [f"{total} event-loop samples", "", "inclusive:"]
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * count / total:6.1f}%  {frame}")
    lines += ["", "self:"]
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * count / total:6.1f}%  {frame}")
    return "\n".join(lines) + "\n"

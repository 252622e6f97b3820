"""A/B of the task server over HTTP: an earlier commit against the working tree, in the same rounds.

    python -m bench.ab main                 # main against this checkout, 2 rounds
    python -m bench.ab HEAD~3 --rounds 4 --duration 8 --peers

Each round starts, for A (the commit, from ``git archive`` into a temporary directory,
run with this checkout's ``bench/`` so both sides get the same settings and load) and then
B (this checkout), in alternating order: the hello anchor, the task server and, with
`--peers`, FastAPI; then measures hello POST, ``POST /demo/tasks/sample`` (create + start +
run), hello GET, ``/status`` and the list of 50 (a session of 50 tasks) with the same wrk
runs as ``python -m bench`` (its quiet-wait and foreign-load guards included). It prints
each run and, per side, the median ratios to the anchor of the same round (throughput,
CPU-normalised throughput and p99), and the median B ÷ A.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from bench.api import API, CREATE_PATH, LIST_PAGE, LIST_PATH, POST_BODY, create_sample_tasks, new_session
from bench.load import add_arguments as add_load_arguments
from bench.load import measure
from bench.servers import ROOT, Server, app_server, hello_server, log, peer_server, running

#: The task server's runs, each divided by its round's hello run (POST for create, GET otherwise).
RUNS = ("create", "status", "list")


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """`ref`'s tree in a temporary directory, with this checkout's bench/ (the same load and settings)."""
    with tempfile.TemporaryDirectory(prefix="async-tasks-ab-") as tmp:
        target = Path(tmp)
        archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        shutil.rmtree(target / "bench", ignore_errors=True)
        shutil.copytree(ROOT / "bench", target / "bench", ignore=shutil.ignore_patterns("__pycache__"))
        yield target


def side(root: Path, args: argparse.Namespace, log_dir: Path) -> dict[str, dict[str, Any]]:
    """One side's runs: the anchor's and the task server's (and FastAPI's), in one round."""
    hello, app = hello_server(), app_server(args)
    servers: list[Server] = [hello, app]
    if args.peers:
        servers.append(peer_server("fastapi"))
    for server in servers:
        server.cwd = root
    runs: dict[str, dict[str, Any]] = {}
    with running(*servers, log_dir=log_dir), httpx.Client(base_url=app.url, timeout=30) as client:
        token, create_token = new_session(client), new_session(client)
        (task_id, *_) = create_sample_tasks(client, token, LIST_PAGE)
        post = {"method": "POST", "body": POST_BODY}
        runs["hello_post"] = measure(hello, "/", args, **post)
        runs["create"] = measure(app, CREATE_PATH, args, **post, token=create_token)
        if args.peers:
            runs["fastapi_create"] = measure(servers[2], CREATE_PATH, args, **post)
        runs["hello_get"] = measure(hello, "/", args)
        runs["status"] = measure(app, f"{API}/tasks/{task_id}/status", args, token=token)
        runs["list"] = measure(app, LIST_PATH, args, token=token)
    return runs


def ratios(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    for name in (*RUNS, "fastapi_create"):
        if name not in runs:
            continue
        anchor = runs["hello_post" if name.endswith("create") else "hello_get"]
        out[name] = runs[name]["rps"] / anchor["rps"]
        out[f"{name} cpu"] = runs[name]["rps_per_cpu"] / anchor["rps_per_cpu"]
        out[f"{name} p99"] = runs[name]["p99_us"] / anchor["p99_us"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="the commit to compare this checkout with (A)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--peers", action="store_true", help="FastAPI's create too, on each side")
    parser.add_argument("--app-via", choices=["uvicorn", "serve"], default="uvicorn")
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="async-tasks-ab-logs-"))
    per_side: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with checkout(args.ref) as tree:
        roots = {"A": tree, "B": ROOT}
        for number in range(args.rounds):
            for name in ("A", "B") if number % 2 == 0 else ("B", "A"):
                log(f"round {number + 1}: {name} ({args.ref if name == 'A' else 'this checkout'})")
                runs = side(roots[name], args, log_dir)
                for key, run in runs.items():
                    log(f"  {name} {key:15s} {run['rps']:8.0f} req/s  p99 {run['p99_us'] / 1000:6.1f} ms  "
                        f"foreign {run['foreign_cpu_share']:.2f}")  # fmt: skip
                per_side[name].append(ratios(runs))
    medians = {
        name: {key: statistics.median(r[key] for r in rounds) for key in rounds[0]} for name, rounds in per_side.items()
    }
    print(f"\nA = {args.ref}, B = this checkout; medians of {args.rounds} rounds, each ratio to its own round's anchor")
    print(f"{'':22s} {'A':>8s} {'B':>8s} {'B / A':>8s}")
    for key in medians["B"]:
        a, b = medians["A"].get(key, float("nan")), medians["B"][key]
        print(f"{key:22s} {a:8.3f} {b:8.3f} {b / a:8.3f}")
    print(f"(server logs in {log_dir}; {time.strftime('%Y-%m-%d %H:%M')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

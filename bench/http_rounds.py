"""The HTTP rounds: the task server, the hello anchor and the peers under wrk, in groups
that each carry their own anchor run, then the check that every created task completed;
and ``--breakdown``, the same with metrics off and with IP sessions."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import httpx

from bench.api import (
    API,
    CREATE_PATH,
    LIST_PAGE,
    LIST_PATH,
    POST_BODY,
    create_sample_tasks,
    metric_value,
    new_session,
    peer_wait,
    post_many,
    wait_stats,
)
from bench.load import measure, sent
from bench.servers import PEERS, Server, app_server, hello_server, log, peer_server, run_key, running


def verify_peer(base_url: str, run: dict[str, Any], total_before: int, args: argparse.Namespace) -> dict[str, Any]:
    """After a peer's create run: its store grew by what wrk counted (give or take the
    requests in flight or timed out) and the newest 1 000 tasks completed."""
    state = peer_wait(base_url, 0)
    answered, errors, unknown = sent(run, args)
    created = state["total"] - total_before
    return {
        "created": created,
        "wrk_answered": answered,
        "http_errors": errors,
        **state,
        "ok": state["newest_completed"] == state["newest_checked"] and answered <= created <= answered + unknown,
    }


Group = list[tuple[str, Server, str, dict[str, Any]]]


def measure_group(group: Group, index: int, args: argparse.Namespace, runs: dict[str, dict[str, Any]]) -> None:
    """Measures a group whose first entry is its anchor: in that order in even rounds, in
    reverse order (anchor last) in odd ones, so drift within a group favours no system."""
    for name, server, path, options in group if index % 2 == 0 else group[::-1]:
        runs[name] = measure(server, path, args, **options)
        r = runs[name]
        log(
            f"  {name:22s} {r['rps']:8.0f} req/s  p99 {r['p99_us'] / 1000:6.1f} ms  "
            f"server cpu {r['server_cpu_share']:.2f}  foreign {r['foreign_cpu_share']:.2f}  "
            f"errors {r['errors'] + r['warmup_errors']}" + (f"  (attempt {r['attempts']})" if r["attempts"] > 1 else "")
        )


def fill_large(
    args: argparse.Namespace, client: httpx.Client, app: Server, peers: dict[str, Server]
) -> tuple[str, dict[str, int]]:
    """A new task-server session holding exactly `--large-session` completed tasks, and each
    peer topped up to at least as many (a peer has one store for every client, and it
    already holds its create run's tasks). Returns the session's token and how many tasks
    each system's list counts."""
    count = args.large_session
    token = new_session(client)
    began = time.monotonic()
    post_many(app.url, count, token)
    stats = wait_stats(client, token, lambda s: s["completed"] == count)
    if stats["total"] != count or stats["completed"] != count:
        raise RuntimeError(f"filling a session with {count} tasks left it with {stats}")
    sizes = {"app": int(stats["total"])}
    for key, server in peers.items():
        total = peer_wait(server.url, 0)["total"]
        if total < count:
            post_many(server.url, count - total, None)
        sizes[key] = peer_wait(server.url, count)["total"]
    log(f"  large lists: {sizes} tasks (filled in {time.monotonic() - began:.0f} s)")
    return token, sizes


def http_rounds(args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    """Each round starts fresh servers (hello anchor, task server, peers) and measures, in
    three groups each with its own anchor run: the GETs (status, list of 50), the create
    POSTs, then (`--large-session`) the list of 50 from a session holding many tasks."""
    rounds = []
    for index in range(args.rounds):
        log(f"HTTP round {index + 1}/{args.rounds}")
        hello, app = hello_server(), app_server(args)
        peers = {key: peer_server(key) for key in PEERS if not args.no_peers}
        with (
            running(hello, app, *peers.values(), log_dir=log_dir),
            httpx.Client(base_url=app.url, timeout=30, headers={"Content-Type": "application/json"}) as c,
        ):
            token = new_session(c)
            ids = create_sample_tasks(c, token, LIST_PAGE)
            create_token = new_session(c)
            peer_ids = {key: post_many(server.url, LIST_PAGE, None)[0] for key, server in peers.items()}
            peer_totals = {key: peer_wait(server.url, LIST_PAGE)["total"] for key, server in peers.items()}
            created_before = metric_value(c, "async_tasks_tasks_created_total", executor="sample")
            completed_before = metric_value(
                c, "async_tasks_tasks_finished_total", executor="sample", status="completed"
            )
            runs: dict[str, dict[str, Any]] = {}
            # Every request carries the session token, the anchor's and the peers' too (same
            # request size; they ignore it).
            get: dict[str, Any] = {"token": token}
            post: dict[str, Any] = {"method": "POST", "body": POST_BODY, "token": token}
            get_group: Group = [
                ("hello_get", hello, "/", get),
                ("status", app, f"{API}/tasks/{ids[0]}/status", get),
                ("list", app, LIST_PATH, get),
            ]
            post_group: Group = [
                ("hello_post", hello, "/", post),
                ("create", app, CREATE_PATH, {**post, "token": create_token}),
            ]
            for key, server in peers.items():
                get_group += [
                    (run_key(key, "status"), server, f"{API}/tasks/{peer_ids[key]}/status", get),
                    (run_key(key, "list"), server, LIST_PATH, get),
                ]
                post_group.append((run_key(key, "create"), server, CREATE_PATH, post))
            measure_group(get_group, index, args, runs)
            measure_group(post_group, index, args, runs)
            # Every created task ran to completion.
            stats = wait_stats(c, create_token, lambda s: s["pending"] == 0 and s["running"] == 0)
            created = metric_value(c, "async_tasks_tasks_created_total", executor="sample") - created_before
            completed = (
                metric_value(c, "async_tasks_tasks_finished_total", executor="sample", status="completed")
                - completed_before
            )
            answered, errors, unknown = sent(runs["create"], args)
            verification = {
                "session_total": stats["total"],
                "session_completed": stats["completed"],
                "pending": stats["pending"],
                "running": stats["running"],
                "failed": stats["failed"],
                "metrics_created": created,
                "metrics_completed": completed,
                "wrk_answered": answered,
                "http_errors": errors,
            }
            # A request wrk gave up on (timeout) or had in flight when it stopped may still
            # have created a task: the session may hold a few more tasks than wrk counted.
            verification["ok"] = (
                stats["pending"] == 0
                and stats["running"] == 0
                and stats["failed"] == 0
                and stats["completed"] == stats["total"]
                and created == completed == stats["total"]
                and answered <= stats["total"] <= answered + unknown
            )
            log(f"  create verification: {verification}")
            peer_verification = {
                key: verify_peer(server.url, runs[run_key(key, "create")], peer_totals[key], args)
                for key, server in peers.items()
            }
            for key, v in peer_verification.items():
                log(f"  {key} create verification: {v}")
            app_rss = app.rss()
            large_sizes: dict[str, int] = {}
            if args.large_session:
                large_token, large_sizes = fill_large(args, c, app, peers)
                large_group: Group = [
                    ("hello_get_large", hello, "/", {"token": large_token}),
                    ("list_large", app, LIST_PATH, {"token": large_token}),
                    # The page of the session of 50 again, next to the large one: the two
                    # compared directly, not through anchors measured minutes apart.
                    ("list_small", app, LIST_PATH, get),
                    *[
                        (run_key(key, "list_large"), server, LIST_PATH, {"token": large_token})
                        for key, server in peers.items()
                    ],
                ]
                measure_group(large_group, index, args, runs)
            rounds.append(
                {
                    "runs": runs,
                    "verification": verification,
                    "peer_verification": peer_verification,
                    "large_sizes": large_sizes,
                    "app_rss": app_rss,
                }
            )
    return rounds


#: Variants of the task server for `--breakdown`: (name, extra env, send the session token).
BREAKDOWN_VARIANTS = [
    ("default", {}, True),
    ("metrics off", {"METRICS_ENABLED": "false"}, True),
    ("metrics off, IP session", {"METRICS_ENABLED": "false"}, False),
]


def breakdown_rounds(args: argparse.Namespace, log_dir: Path) -> list[dict[str, Any]]:
    """Where the per-request cost goes: the same status and create measurements against
    task servers with Prometheus metrics off, and with the session taken from the
    client IP instead of a signed token (no itsdangerous verification per request)."""
    rounds = []
    for index in range(args.breakdown):
        log(f"breakdown round {index + 1}/{args.breakdown}")
        hello = hello_server()
        apps = [app_server(args, name=f"app-{i}", extra_env=env) for i, (_, env, _) in enumerate(BREAKDOWN_VARIANTS)]
        with running(hello, *apps, log_dir=log_dir):
            setup = []
            for app, (_, _, use_token) in zip(apps, BREAKDOWN_VARIANTS, strict=True):
                with httpx.Client(base_url=app.url, timeout=30, headers={"Content-Type": "application/json"}) as c:
                    token = new_session(c) if use_token else None
                    if token is None:
                        response = c.post(f"{API}/demo/tasks/sample", content=POST_BODY)
                        response.raise_for_status()
                        task_id = response.json()["task"]["id"]
                    else:
                        task_id = create_sample_tasks(c, token, 1)[0]
                    setup.append((token, task_id, new_session(c) if use_token else None))
            runs: dict[str, Any] = {"hello_get": measure(hello, "/", args)}
            for app, (name, _, _), (token, task_id, _) in zip(apps, BREAKDOWN_VARIANTS, setup, strict=True):
                runs[f"status/{name}"] = measure(app, f"{API}/tasks/{task_id}/status", args, token=token)
            runs["hello_post"] = measure(hello, "/", args, method="POST", body=POST_BODY)
            for app, (name, _, _), (_, _, create_token) in zip(apps, BREAKDOWN_VARIANTS, setup, strict=True):
                runs[f"create/{name}"] = measure(
                    app, f"{API}/demo/tasks/sample", args, method="POST", body=POST_BODY, token=create_token
                )
            for name, r in runs.items():
                log(
                    f"  {name:32s} {r['rps']:8.0f} req/s  {r['rps_per_cpu']:8.0f} req/cpu-s  "
                    f"foreign {r['foreign_cpu_share']:.2f}  errors {r['errors']}"
                )
            rounds.append(runs)
    return rounds

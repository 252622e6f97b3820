"""The create p99 measured by a closed-loop client: the check on wrk's tail.

    python -m bench.closed_loop [--rounds 2] [--duration 5] [--warmup 2] [--connections 64]

wrk's mean latency in the create runs exceeds what its own throughput allows (64
connections always busy: 64 ÷ req/s, Little's law) by a fifth to two fifths, for every
system whose POST starts work, while for hello and every GET it matches: its create tail
is not the server's alone (`bench/last_run.md` shows the check for every run). This client
is the plainest measurement that cannot do that: `--connections` keep-alive connections
(uvloop, pinned to the client core as wrk is), each sending its next request when the
previous answer has been read, each latency taken with ``perf_counter`` around one request.
Its mean must equal connections ÷ throughput; a row where it does not is flagged.

Each round starts fresh servers (the hello anchor, the task server, the two peers, pinned
as in ``python -m bench``) and measures hello POST, then each system's
``POST /demo/tasks/sample {"delayMs": 0}``, in alternating order; the table gives each
p99 ÷ the hello POST p99 of its round, medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.api import CREATE_PATH, POST_BODY, new_session
from bench.servers import CLIENT_CORE, PEERS, ROOT, SYSTEMS, Server, app_server, hello_server, log, peer_server, running


async def _connection(port: int, request: bytes, record_from: float, stop_at: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (started := time.perf_counter()) < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            if started >= record_from:
                latencies.append(time.perf_counter() - started)
    finally:
        writer.close()


async def _load(port: int, path: str, token: str, connections: int, warmup: float, duration: float) -> dict[str, Any]:
    body = POST_BODY.encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nX-Session-Token: {token}\r\n\r\n"
    )
    request = head.encode() + body
    latencies: list[float] = []
    now = time.perf_counter()
    await asyncio.gather(
        *(_connection(port, request, now + warmup, now + warmup + duration, latencies) for _ in range(connections))
    )
    latencies.sort()
    count = len(latencies)
    rps = count / duration
    return {
        "requests": count,
        "rps": rps,
        "mean_ms": 1000 * statistics.fmean(latencies),
        "little_ms": 1000 * connections / rps,
        "p50_ms": 1000 * latencies[count // 2],
        "p99_ms": 1000 * latencies[int(count * 0.99)],
        "max_ms": 1000 * latencies[-1],
    }


def client_main(argv: list[str]) -> None:
    """The client process (``python -m bench.closed_loop client PORT PATH TOKEN CONNECTIONS WARMUP DURATION``)."""
    import uvloop

    port, path, token, connections, warmup, duration = argv
    result = uvloop.run(_load(int(port), path, token, int(connections), float(warmup), float(duration)))
    print("BENCH_JSON " + json.dumps(result), flush=True)


def measure(server: Server, token: str, args: argparse.Namespace) -> dict[str, Any]:
    """One closed-loop run against `server`, from a client pinned to the client core."""
    argv = [
        "taskset", "-c", CLIENT_CORE, sys.executable, "-m", "bench.closed_loop", "client",
        str(server.port), "/" if server.name == "hello" else CREATE_PATH, token,
        str(args.connections), str(args.warmup), str(args.duration),
    ]  # fmt: skip
    out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=True, timeout=600).stdout
    result: dict[str, Any] = json.loads(out.split("BENCH_JSON ", 1)[1])
    gap = result["mean_ms"] / result["little_ms"]
    flag = "" if 0.95 <= gap <= 1.05 else "  (does not add up)"
    log(
        f"  {server.name:<10} {result['rps']:7,.0f} req/s  p50 {result['p50_ms']:6.1f}  p99 {result['p99_ms']:6.1f}  "
        f"max {result['max_ms']:6.1f} ms  mean ÷ Little {gap:.2f}{flag}"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["client"]:
        client_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.closed_loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args(argv)
    args.app_via = "uvicorn"
    ratios: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="async-tasks-closed-loop-") as tmp:
        for index in range(args.rounds):
            log(f"round {index + 1}/{args.rounds}")
            hello, app = hello_server(), app_server(args)
            servers = [app, *(peer_server(key) for key in PEERS)]
            with running(hello, *servers, log_dir=Path(tmp)):
                with httpx.Client(base_url=app.url, timeout=30) as client:
                    token = new_session(client)
                order = servers if index % 2 == 0 else servers[::-1]
                anchor = measure(hello, token, args)
                for server in order:
                    run = measure(server, token, args)
                    ratios.setdefault(server.name, []).append(run["p99_ms"] / anchor["p99_ms"])
    print("\n| system | create p99 ÷ hello POST p99 (closed-loop client), median |\n|---|---:|")
    for name, values in ratios.items():
        print(f"| {SYSTEMS[name]} | {statistics.median(values):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

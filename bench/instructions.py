"""Instructions per request, counted by valgrind (callgrind): the figure for close A/B calls.

    python -m bench.instructions [--system app] [--only status] [--counts 200,1200]

Runs ``python -m bench.cpu`` under ``valgrind --tool=callgrind`` twice, with two batch
sizes and the same warm-up, and divides the difference in instructions by the
difference in requests: start-up and warm-up cancel out, and unlike CPU time the
figure does not move with other processes on a shared machine. (About 40 times
slower than native: keep the counts small.)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys


def instructions(system: str, only: str, count: int, warmup: int, concurrency: int) -> int:
    argv = [
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
        sys.executable, "-m", "bench.cpu", "--system", system, "--only", only,
        "--count", str(count), "--repeats", "1", "--warmup", str(warmup), "--concurrency", str(concurrency),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise RuntimeError(done.stderr[-2000:])
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("--system", default="app")
    parser.add_argument("--only", default="status")
    parser.add_argument("--counts", default="200,1200")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args(argv)
    low, high = (int(n) for n in args.counts.split(","))
    for kind in args.only.split(","):
        a = instructions(args.system, kind, low, args.warmup, args.concurrency)
        b = instructions(args.system, kind, high, args.warmup, args.concurrency)
        print(f"{args.system} {kind}: {(b - a) / (high - low):,.0f} instructions per request", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

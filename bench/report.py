"""The markdown report: the targets (issue 23's for HTTP), every ratio against the anchor
of its own round, CPU-normalised and absolute figures, and the other sections' results."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from bench import TASK_APP_FACTORY
from bench.api import LIST_PAGE
from bench.http_rounds import BREAKDOWN_VARIANTS
from bench.inproc import TUNED_ENV
from bench.servers import CLIENT_CORE, PEERS, SERVER_CORE, SYSTEMS, run_key

# Targets: (key, description, comparison, threshold). The HTTP ones are issue 23's, for the
# task server (the ratios are taken in the same round, see `round_ratios`).
TARGETS = {
    "status": ("`GET /tasks/{id}/status` throughput", ">=", 0.85, "x hello GET"),
    "status_vs_minimal": ("…and ahead of the minimal app's ratio (ours ÷ minimal's)", ">", 1.0, "x"),
    "list": (
        f"`GET /tasks?limit={LIST_PAGE}` ({LIST_PAGE} tasks in the session) throughput",
        ">=",
        0.70,
        "x hello GET",
    ),
    "list_large_vs_list": (
        f"the same page of {LIST_PAGE} when the session holds many tasks, ÷ with {LIST_PAGE} "
        '("costs the same": read as within the ±10% same-round drift)',
        ">=",
        0.90,
        "x",
    ),
    "create": (
        '`POST /demo/tasks/sample` `{"delayMs": 0}` throughput (create + start + run)',
        ">=",
        0.55,
        "x hello POST",
    ),
    "create_vs_fastapi": ("…and ahead of FastAPI + BackgroundTasks (ours ÷ theirs)", ">=", 1.4, "x"),
    "create_p99": ("create p99", "<=", 5.0, "x hello POST p99"),
    "status_p99": ("status p99", "<=", 1.5, "x hello GET p99"),
    "latency": ("created → completed, zero-delay task, unloaded (median)", "<=", 1.0, "ms"),
    "finished_memory": ("memory per retained finished task", "<=", 2048, "bytes"),
    "running_memory": (
        "memory per running (sleeping) task at 100 000 running",
        "<=",
        1.5,
        "x bare anyio task-group child",
    ),
    "loaded_p99": ("`/status` p99 with 100 000 sleeping tasks", "<=", 2.0, "x unloaded p99"),
}


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                info["ram"] = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    for package in ("litestar", "msgspec", "anyio", "uvicorn", "uvloop", "httptools"):
        info[package] = version(package)
    for package in ("fastapi", "starlette", "pydantic"):  # the FastAPI peer (the `bench` extra)
        with contextlib.suppress(PackageNotFoundError):
            info[package] = version(package)
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    info["wrk"] = wrk_version.partition(" Copyright")[0].strip()
    return info


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdict(key: str, value: float) -> str:
    _, op, threshold, _ = TARGETS[key]
    ok = {">=": value >= threshold, ">": value > threshold, "<=": value <= threshold}[op]
    return "**met**" if ok else "**missed**"


#: The ratio columns: (key, header, run kind, anchor run, figure). Each figure of a system is
#: divided by the anchor's figure of the same round and group.
RATIO_COLUMNS = (
    ("status", "status ÷ hello GET", "status", "hello_get", "rps"),
    ("list", f"list {LIST_PAGE} ÷ hello GET", "list", "hello_get", "rps"),
    ("list_large", f"list {LIST_PAGE} of a large session ÷ hello GET", "list_large", "hello_get_large", "rps"),
    ("create", "create+run ÷ hello POST", "create", "hello_post", "rps"),
    ("status_p99", "status p99 ÷ hello GET p99", "status", "hello_get", "p99_us"),
    ("create_p99", "create p99 ÷ hello POST p99", "create", "hello_post", "p99_us"),
)
Ratios = dict[str, dict[str, float]]


def round_ratios(runs: dict[str, Any], *, cpu: bool = False) -> Ratios:
    """system -> column -> ratio for one round; `cpu`: throughput per second of server CPU
    time instead of per second of wall time (p99 columns left out)."""
    table: Ratios = {}
    for system in SYSTEMS:
        row = {}
        for key, _, kind, anchor, figure in RATIO_COLUMNS:
            if cpu and figure != "rps":
                continue
            name, value = run_key(system, kind), "rps_per_cpu" if cpu else figure
            if name in runs and anchor in runs:
                row[key] = runs[name][value] / runs[anchor][value]
        if row:
            table[system] = row
    return table


def derived_ratios(ratios: Ratios) -> dict[str, float]:
    """The targets that compare async-tasks with a peer or with itself, for one round."""
    app, minimal, fastapi = (ratios.get(k, {}) for k in ("app", "minimal", "fastapi"))
    out = {}
    if "status" in app and "status" in minimal:
        out["status_vs_minimal"] = app["status"] / minimal["status"]
    if "create" in app and "create" in fastapi:
        out["create_vs_fastapi"] = app["create"] / fastapi["create"]
    if "list_large" in app and "list" in app:
        out["list_large_vs_list"] = app["list_large"] / app["list"]
    return out


def same_group_ratios(runs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The large session's page ÷ the session of 50's, both measured in the large group
    (the anchors of two groups drift apart by up to a third between them)."""
    if "list_large" in runs and "list_small" in runs:
        return {"list_large_vs_list": runs["list_large"]["rps"] / runs["list_small"]["rps"]}
    return {}


def median_ratios(per_round: list[Ratios]) -> Ratios:
    out: Ratios = {}
    for system in SYSTEMS:
        for key, *_ in RATIO_COLUMNS:
            values = [r[system][key] for r in per_round if key in r.get(system, {})]
            if values:
                out.setdefault(system, {})[key] = median(values)
    return out


def http_target_rows(rounds: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """The target table's rows for issue 23's HTTP targets (async-tasks against the anchor
    and the peers, each ratio taken within a round, then the median over the rounds)."""
    per_round = [round_ratios(r["runs"]) for r in rounds]
    medians = median_ratios(per_round)
    med = medians.get("app", {})
    cpu = median_ratios([round_ratios(r["runs"], cpu=True) for r in rounds]).get("app", {})
    derived = [
        {**derived_ratios(ratios), **same_group_ratios(r["runs"])} for ratios, r in zip(per_round, rounds, strict=True)
    ]

    def figure(name: str, key: str = "rps") -> float:
        return median([r["runs"][name][key] for r in rounds if name in r["runs"]])

    def row(key: str, value: float, measured: str) -> tuple[str, str, str, str]:
        desc, op, threshold, unit = TARGETS[key]
        return (desc, f"{op} {threshold:.2f} {unit}", measured, verdict(key, value))

    def compared(key: str) -> str:
        if key == "status_vs_minimal":
            return f"the minimal app's ratio {medians['minimal']['status']:.3f}"
        if key == "create_vs_fastapi":
            return f"FastAPI's ratio {medians['fastapi']['create']:.3f}"
        size = median([r["large_sizes"]["app"] for r in rounds if "app" in r["large_sizes"]])
        return (
            f"{med['list_large']:.3f} x hello GET with {size:,.0f} tasks in the session; "
            f"{figure('list_large'):,.0f} vs {figure('list_small'):,.0f} req/s for the session of {LIST_PAGE}, "
            "measured next to each other"
        )

    rows = []
    for key, anchor, versus in (
        ("status", "hello_get", "status_vs_minimal"),
        ("list", "hello_get", "list_large_vs_list"),
        ("create", "hello_post", "create_vs_fastapi"),
    ):
        if key in med:
            rows.append(
                row(
                    key,
                    med[key],
                    f"{med[key]:.3f} (CPU-normalised {cpu[key]:.3f}; {figure(key):,.0f} vs "
                    f"{figure(anchor):,.0f} req/s)",
                )
            )
        values = [d[versus] for d in derived if versus in d]
        if values:
            rows.append(row(versus, median(values), f"{median(values):.3f} ({compared(versus)})"))
    for key, run, anchor in (("create_p99", "create", "hello_post"), ("status_p99", "status", "hello_get")):
        if key in med:
            ours, base = figure(run, "p99_us") / 1000, figure(anchor, "p99_us") / 1000
            rows.append(row(key, med[key], f"{med[key]:.2f} ({ours:.1f} vs {base:.1f} ms)"))
    verified = all(r["verification"]["ok"] for r in rounds)
    peers_verified = all(v["ok"] for r in rounds for v in r.get("peer_verification", {}).values())
    rows.append(
        (
            "every created task completed (stats + metrics, each round)",
            "all",
            ("yes" if verified else "NO (see the per-round table)")
            + ("" if peers_verified else "; a peer's check FAILED (see the per-round table)"),
            "**met**" if verified else "**missed**",
        )
    )
    return rows


def http_tables(rounds: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The table of all ratios (medians), CPU-normalised and absolute figures, and every round."""
    per_round = [round_ratios(r["runs"]) for r in rounds]
    med = median_ratios(per_round)
    cpu = median_ratios([round_ratios(r["runs"], cpu=True) for r in rounds])
    columns = [c for c in RATIO_COLUMNS if any(c[0] in row for row in med.values())]
    throughput = [c for c in columns if c[4] == "rps"]

    def cells(row: dict[str, float], cols: list[tuple[str, str, str, str, str]]) -> str:
        return " | ".join(f"{row[c[0]]:.3f}" if c[0] in row else "—" for c in cols)

    def header(first: list[str], cols: list[tuple[str, str, str, str, str]], last: tuple[str, ...] = ()) -> list[str]:
        return [
            "| " + " | ".join([*first, *(c[1] for c in cols), *last]) + " |",
            "|" + "---|" * len(first) + "---:|" * len(cols) + "---|" * len(last),
        ]

    out = [
        f"All ratios, medians of {len(rounds)} round(s). Each figure is divided by the hello anchor's of the "
        "same round: the GETs by the hello GET run of their group, the creates by the hello POST"
        + (
            ", the list of a large session by a hello GET measured next to it, after the fill. The task "
            f"server's large session holds exactly {args.large_session:,} tasks"
            + (
                "; a peer has one store for all clients, which also holds its create run's tasks"
                if len(med) > 1
                else ""
            )
            + " (`tasks` in the per-round table)"
            if any("hello_get_large" in r["runs"] for r in rounds)
            else ""
        )
        + ".",
        "",
        *header(["system"], columns),
        "| bare Litestar hello (the anchor) | " + " | ".join("1.000" for _ in columns) + " |",
    ]
    out += [f"| {SYSTEMS[system]} | {cells(row, columns)} |" for system, row in med.items()]
    out += [
        "",
        "Throughput ratios per second of server CPU time (compare these if other processes took part of "
        "core 0), medians:",
        "",
        *header(["system"], throughput),
    ]
    out += [f"| {SYSTEMS[system]} | {cells(row, throughput)} |" for system, row in cpu.items()]

    kinds = [
        ("status", "hello_get"),
        ("list", "hello_get"),
        ("list_large", "hello_get_large"),
        ("create", "hello_post"),
    ]
    kinds = [(k, a) for k, a in kinds if any(a in r["runs"] for r in rounds)]

    def medians_of(figure: Callable[[dict[str, Any]], float], fmt: str) -> Callable[[str], str]:
        def cell(name: str) -> str:
            found = [figure(r["runs"][name]) for r in rounds if name in r["runs"]]
            return format(median(found), fmt) if found else "—"

        return cell

    def by_system(intro: str, cell: Callable[[str], str]) -> list[str]:
        """A table of one figure per system (rows) and kind of run (columns), the anchor first."""
        return [
            "",
            intro,
            "",
            "| system | " + " | ".join(k.replace("_", " ") for k, _ in kinds) + " |",
            "|---|" + "---:|" * len(kinds),
            "| hello anchor | " + " | ".join(cell(a) for _, a in kinds) + " |",
            *[
                f"| {SYSTEMS[system]} | " + " | ".join(cell(run_key(system, k)) for k, _ in kinds) + " |"
                for system in med
            ],
        ]

    rps, p99 = medians_of(lambda x: x["rps"], ",.0f"), medians_of(lambda x: x["p99_us"] / 1000, ".1f")
    out += by_system(
        "Absolute medians, req/s (p99 ms); they drift ±20% between runs, the ratios above much less. The "
        "anchor's row holds its GET, GET, GET next to the large lists, and POST runs:",
        lambda name: f"{rps(name)} (p99 {p99(name)})" if rps(name) != "—" else "—",
    )
    out += by_system(
        f"wrk's mean latency ÷ what its own throughput allows ({args.connections} connections always busy: "
        f"{args.connections} ÷ req/s, Little's law), medians. Near 1, its latencies are the server's; above it, wrk "
        "counted time no request spent in the server, and its p99 overstates the tail (seen on creates, "
        "where a closed-loop client measured a far shorter one: `bench/RESULTS.md`):",
        medians_of(lambda x: x["mean_us"] * x["rps"] / 1e6 / args.connections, ".2f"),
    )
    out += [
        "",
        "Every round: ratio (req/s or p99 in brackets). `foreign` = the largest share of core 0 that other "
        "processes took during one of the round's runs; `tasks` = how many tasks the large list counted.",
        "",
        *header(["round", "system"], columns, ("tasks", "create verified")),
    ]
    for i, (r, ratios) in enumerate(zip(rounds, per_round, strict=True), 1):
        runs = r["runs"]
        foreign = max(x["foreign_cpu_share"] for x in runs.values())

        def raw(name: str, figure: str, runs: dict[str, Any] = runs) -> str:
            if name not in runs:
                return "—"
            x = runs[name][figure]
            return f"{x / 1000:.1f} ms" if figure == "p99_us" else f"{x:,.0f}"

        out.append(
            f"| {i} (foreign {foreign:.2f}) | hello anchor | "
            + " | ".join(f"1 ({raw(c[3], c[4])})" for c in columns)
            + " | — | — |"
        )
        for system, row in ratios.items():
            if system == "app":
                v = r["verification"]
                check = f"{'yes' if v['ok'] else 'NO'} ({v['session_completed']:,} of {v['session_total']:,})"
            else:
                pv = r.get("peer_verification", {}).get(system)
                check = "—" if pv is None else f"{'yes' if pv['ok'] else 'NO'} ({pv['created']:,} created)"
            size = r.get("large_sizes", {}).get(system)
            out.append(
                f"| {i} | {SYSTEMS[system]} | "
                + " | ".join(
                    f"{row[c[0]]:.3f} ({raw(run_key(system, c[2]), c[4])})" if c[0] in row else "—" for c in columns
                )
                + f" | {'—' if size is None else f'{size:,}'} | {check} |"
            )
    out.append("")
    return out


def report(args: argparse.Namespace, results: dict[str, Any], command: str) -> str:
    m = results["machine"]
    out = [
        f"## Run of {results['started']}",
        "",
        f"Command: `{command}` (total {results['elapsed_s'] / 60:.1f} min)",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m.get('ram', '? GiB')} RAM, Linux {m['kernel']}. Python "
        f"{m['python']}, litestar {m['litestar']}, msgspec {m['msgspec']}, anyio {m['anyio']}, uvicorn "
        f"{m['uvicorn']} (uvloop {m['uvloop']}, httptools {m['httptools']}), "
        + (f"fastapi {m['fastapi']} (starlette {m['starlette']}, pydantic {m['pydantic']}), " if "fastapi" in m else "")
        + f"{m['wrk']}.",
        "",
        f"Servers: one uvicorn worker each, `--loop uvloop --http httptools --no-access-log`, pinned with "
        f"`taskset -c {SERVER_CORE}`; task server settings: "
        + ", ".join(f"`{k}={v}`" for k, v in TUNED_ENV.items() if k != "SECRET_KEY")
        + " (metrics on, as by default), started as "
        + (
            "`python -m async_tasks.cli serve`"
            if args.app_via == "serve"
            else f"`uvicorn {TASK_APP_FACTORY} --factory ...`"
        )
        + f". Load: `taskset -c {CLIENT_CORE} wrk -t1 -c{args.connections} -d{args.duration:g}s --timeout 10s "
        "--latency` "
        f"after a {args.warmup:g} s warm-up, every request with an `X-Session-Token`."
        + (
            ""
            if args.no_peers
            else " Peers, served the same way in the same rounds: "
            + "; ".join(f"{label} (`{module}`: {what})" for label, what, module in PEERS.values())
            + "."
        ),
        "",
    ]
    rows = []
    rounds = results.get("http")
    if rounds:
        rows += http_target_rows(rounds)
    lat = results.get("latency")
    if lat:
        rows.append(
            (
                TARGETS["latency"][0],
                "<= 1 ms",
                f"{lat['median_ms']:.3f} ms (p90 {lat['p90_ms']:.3f}, p99 {lat['p99_ms']:.3f}, n={lat['count']})",
                verdict("latency", lat["median_ms"]),
            )
        )
    mem = results.get("finished_memory")
    if mem:
        traced = results.get("finished_memory_traced", {}).get("bytes_per_task_tracemalloc")
        extra = f"; tracemalloc {traced:,.0f} B over {results['finished_memory_traced']['count']:,}" if traced else ""
        rows.append(
            (
                TARGETS["finished_memory"][0],
                "<= 2048 B",
                f"{mem['bytes_per_task_rss']:,.0f} B RSS over {mem['count']:,} tasks{extra}",
                verdict("finished_memory", mem["bytes_per_task_rss"]),
            )
        )
    sl = results.get("sleepers")
    if sl:
        bare = sl["anyio"]["bytes_per_task"]
        value = sl["bytes_per_task"] / bare
        inproc_ratio = sl["runner_inproc"]["bytes_per_task"] / bare
        rows.append(
            (
                TARGETS["running_memory"][0],
                "<= 1.50 x bare",
                f"{value:.2f} ({sl['bytes_per_task']:,.0f} B in the server vs {bare:,.0f} B bare anyio; "
                f"in-process {sl['runner_inproc']['bytes_per_task']:,.0f} B = {inproc_ratio:.2f})",
                verdict("running_memory", value),
            )
        )
        unloaded = median([r["p99_us"] for r in sl["unloaded"]]) / 1000
        loaded = median([r["p99_us"] for r in sl["loaded"]]) / 1000
        rows.append(
            (
                TARGETS["loaded_p99"][0],
                "<= 2.00 x unloaded",
                f"{loaded / unloaded:.2f} ({loaded:.1f} ms vs {unloaded:.1f} ms; "
                f"{median([r['rps'] for r in sl['loaded']]):,.0f} vs "
                f"{median([r['rps'] for r in sl['unloaded']]):,.0f} req/s)",
                verdict("loaded_p99", loaded / unloaded),
            )
        )
    cl = results.get("cleanup")
    if cl:
        rows.append(
            (
                f"cleanup sweep, {cl['sessions']:,} sessions x {cl['per_session']} completed tasks, keep {cl['keep']}",
                "(report)",
                f"{cl['us_per_removed_task']:.2f} µs per removed task ({cl['removed']:,} in "
                f"{cl['sweep_s']:.2f} s); {cl['us_per_untouched_session']:.2f} µs per untouched session "
                f"({cl['idle_sweep_s'] * 1000:.1f} ms)",
                "—",
            )
        )
    out += ["| what | target | measured (median) | |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out.append("")
    if rounds:
        out += http_tables(rounds, args)
        out += [
            "async-tasks in every round (req/s; p99 in ms; `cpu` = the server's share of its core over the run, "
            "`foreign` = other processes' share of that core):",
            "",
            "| round | hello GET | status | list | hello POST | create | status/GET | list/GET | "
            "create/POST | create verified |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(rounds, 1):
            runs = r["runs"]

            def cell(name: str, runs: dict[str, Any] = runs) -> str:
                x = runs[name]
                return (
                    f"{x['rps']:,.0f} (p99 {x['p99_us'] / 1000:.1f}; cpu {x['server_cpu_share']:.2f}, "
                    f"foreign {x['foreign_cpu_share']:.2f})"
                )

            v = r["verification"]
            out.append(
                f"| {i} | {cell('hello_get')} | {cell('status')} | {cell('list')} | {cell('hello_post')} | "
                f"{cell('create')} | {runs['status']['rps'] / runs['hello_get']['rps']:.3f} | "
                f"{runs['list']['rps'] / runs['hello_get']['rps']:.3f} | "
                f"{runs['create']['rps'] / runs['hello_post']['rps']:.3f} | "
                f"{'yes' if v['ok'] else 'NO'}: {v['session_completed']:,} completed of {v['session_total']:,} "
                f"(metrics {v['metrics_created']:,.0f} created / {v['metrics_completed']:,.0f} completed; wrk "
                f"{v['wrk_answered']:,} answered, {v['http_errors']} errors) |"
            )
        out.append("")
    if sl:
        out += [
            f"Sleeping tasks: {sl['count']:,} `bench-sleeper` tasks (sleep 1800 s) started through "
            f"`POST /bench/spawn` in {sl['spawn_s']:.1f} s; server RSS {sl['rss_before'] / 2**20:,.0f} → "
            f"{sl['rss_after'] / 2**20:,.0f} MiB; bare anyio children: {sl['anyio']['bytes_per_task']:,.0f} B "
            f"each, {sl['anyio']['spawn_us_per_task']:.0f} µs to spawn; runner in-process: "
            f"{sl['runner_inproc']['bytes_per_task']:,.0f} B, {sl['runner_inproc']['spawn_us_per_task']:.0f} µs "
            f"to create + start. `/status` runs unloaded: "
            + ", ".join(f"{r['rps']:,.0f} req/s p99 {r['p99_us'] / 1000:.1f} ms" for r in sl["unloaded"])
            + "; loaded: "
            + ", ".join(f"{r['rps']:,.0f} req/s p99 {r['p99_us'] / 1000:.1f} ms" for r in sl["loaded"])
            + ".",
            "",
        ]
    costs = results.get("costs")
    if costs:
        out += [
            "In-process CPU time per task (process time, batches of "
            f"{costs['count']:,} created back to back then run; best of {costs['repeats']}): create only "
            f"{costs['create_only']['total_us']:.0f} µs; create + start + run a no-op executor "
            f"{costs['create_run_noop']['create_us']:.0f} + {costs['create_run_noop']['run_us']:.0f} µs; "
            f"create + start + run a zero-delay `sample` (21 progress reports) "
            f"{costs['create_run_sample']['create_us']:.0f} + {costs['create_run_sample']['run_us']:.0f} µs.",
            "",
        ]
    if mem:
        out += [
            f"Finished tasks: {mem['count']:,} zero-delay `sample` tasks created through `TaskSystem` in "
            f"batches of 1 000 (each batch run to completion), {mem['create_and_run_us_per_task']:.0f} µs per "
            f"task to create and run in-process; RSS delta {mem['rss_delta'] / 2**20:.1f} MiB.",
            "",
        ]
    if results.get("breakdown"):
        b = results["breakdown"]
        out += [
            "Where the request cost goes (`--breakdown`, medians of "
            f"{len(b)} round(s); ratio to the hello anchor of the same round, raw and CPU-normalised):",
            "",
            "| task server variant | status/GET | status/GET per CPU | create/POST | create/POST per CPU |",
            "|---|---|---|---|---|",
        ]
        for name, _, _ in BREAKDOWN_VARIANTS:

            def r(kind: str, anchor: str, key: str, name: str = name) -> float:
                return median([x[f"{kind}/{name}"][key] / x[anchor][key] for x in b])

            out.append(
                f"| {name} | {r('status', 'hello_get', 'rps'):.3f} "
                f"| {r('status', 'hello_get', 'rps_per_cpu'):.3f} "
                f"| {r('create', 'hello_post', 'rps'):.3f} | {r('create', 'hello_post', 'rps_per_cpu'):.3f} |"
            )
        out.append("")
    if results.get("profiles"):
        out += ["py-spy profiles (inclusive share of samples, top entries):", ""]
        for name, summary in results["profiles"].items():
            out += [f"`{name}`:", "", "```", *summary.splitlines()[:40], "```", ""]
    return "\n".join(out) + "\n"

"""The `file-processing` executor: safe paths under the demo root, chunked reading,
byte-based progress, and the simulated mode."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import msgspec
import pytest

from async_tasks.errors import InvalidParams, SettingsError
from async_tasks.testing import ExecutorRun, run_executor
from executors import file_processing as fp_module
from executors.file_processing import (
    GIB,
    MAX_CHUNK_DELAY_MS,
    MAX_CHUNKS,
    MAX_PATH_CHARS,
    FileProcessingExecutor,
    FileProcessingParams,
    bundled_root,
)

SENTINEL = b"TOP-SECRET-SENTINEL-OUTSIDE-THE-ROOT"
WELCOME = b"Hello demo world!\nThis file has  three lines\nand no newline at the end"
MAX_BYTES = 1000
#: A real file outside the bundled demo folder.
MODULE_FILE = os.path.realpath(fp_module.__file__)


def expected_summary(data: bytes) -> dict[str, object]:
    """Computed independently of the executor, on the whole content at once."""
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    return {
        "sizeBytes": len(data),
        "lines": lines,
        "words": len(data.split()),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


class Layout:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"
        self.outside = tmp / "outside"
        self.sibling = tmp / "root-evil"

    @property
    def environ(self) -> dict[str, str]:
        return {"FILE_PROCESSING_ROOT": str(self.root), "FILE_PROCESSING_MAX_BYTES": str(MAX_BYTES)}


def build_layout(tmp: Path) -> tuple[Layout, socket.socket]:
    """A demo root full of traps, with files outside it; returns the bound socket too."""
    lay = Layout(tmp)
    root, outside = lay.root, lay.outside
    root.mkdir()
    outside.mkdir()
    lay.sibling.mkdir()
    (outside / "secret.txt").write_bytes(SENTINEL)
    (lay.sibling / "x.txt").write_bytes(SENTINEL)
    (root / "welcome.txt").write_bytes(WELCOME)
    (root / "docs").mkdir()
    (root / "docs" / "notes.md").write_bytes(b"# Notes\n\nsome words here\n")
    (root / "%2e%2e").mkdir()
    (root / "%2e%2e" / "ok.txt").write_bytes(b"literally named\n")
    (root / "too-big.bin").write_bytes(b"z" * (MAX_BYTES + 1))
    os.mkfifo(root / "fifo")
    (root / "link-fifo").symlink_to("fifo")
    (root / "link-outside-file").symlink_to(outside / "secret.txt")
    (root / "link-outside-dir").symlink_to(outside)
    (root / "link-outside-rel").symlink_to(Path("..") / "outside" / "secret.txt")
    (root / "link-parent").symlink_to("..")
    (root / "link-root").symlink_to(".")
    (root / "loop-a").symlink_to("loop-b")
    (root / "loop-b").symlink_to("loop-a")
    (root / "self-loop").symlink_to("self-loop")
    (root / "link-null").symlink_to("/dev/null")
    (root / "link-inside").symlink_to("welcome.txt")
    # A unix socket: bound by a short relative name (sun_path is ~108 bytes at most).
    cwd = os.getcwd()
    os.chdir(root)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind("sock")
    finally:
        os.chdir(cwd)
    return lay, sock


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    """A fresh trap-filled root, for tests that change it."""
    lay, sock = build_layout(tmp_path)
    with sock:
        yield lay


@pytest.fixture(scope="module")
def shared_layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    """One trap-filled root for the read-only refusal tests."""
    lay, sock = build_layout(tmp_path_factory.mktemp("shared"))
    with sock:
        yield lay


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path passed to os.open while the test runs."""
    paths: list[str] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        paths.append(os.fsdecode(path))  # type: ignore[arg-type]
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording_open)
    return paths


# Each payload is refused by `validate` (and by `execute`) with field "filePath".
# Placeholders: {root}, {outside}, {sibling}.
UNSAFE_PATHS = [
    "../etc/passwd",
    "../../..",
    "..",
    "docs/../../x",
    "docs/../welcome.txt",  # '..' is refused even when it would stay inside
    "docs/notes.md/..",
    "/etc/passwd",
    "//etc/passwd",
    "/proc/self/environ",
    "/dev/null",
    "{outside}/secret.txt",
    "{root}/../outside/secret.txt",
    "{sibling}/x.txt",  # shares the root's prefix: a string prefix check would let it in
    "{root}",
    "%2e%2e/%2e%2e/etc/passwd",  # not decoded: a missing name inside the root
    "..%2f..%2fetc%2fpasswd",
    "..\\..\\windows\\win.ini",
    "docs\\..\\..\\secret.txt",
    "welcome.txt\x00.png",
    "\x00",
    "....//....//etc/passwd",
    "link-outside-file",
    "link-outside-rel",
    "link-outside-dir/secret.txt",
    "link-outside-dir",
    "link-parent/outside/secret.txt",
    "link-root/link-parent/outside/secret.txt",
    "loop-a",
    "self-loop",
    "self-loop/x",
    "docs",
    ".",
    "./",
    "link-root",
    "",
    "   ",
    "\n",
    "fifo",
    "link-fifo",
    "sock",
    "link-null",
    "a" * 300,  # one name longer than NAME_MAX
    "x" * 5000,  # longer than the schema allows; validate refuses it too
    "/".join(["a"] * 2000),
    "docs/" * 800 + "notes.md",
    "~/.ssh/id_rsa",
    "~root/.bashrc",
    "$HOME/.bashrc",
    "file:///etc/passwd",
    "missing.txt",
    "welcome.txt/",
    "docs/",
    "docs/.",
    "too-big.bin",
    "%00",
]


def fill(payload: str, layout: Layout) -> str:
    return (
        payload.replace("{root}", str(layout.root))
        .replace("{outside}", str(layout.outside))
        .replace("{sibling}", str(layout.sibling))
    )


def assert_opens_stay_inside(opened: list[str], layout: Layout) -> None:
    root = layout.root.resolve()
    for path in opened:
        real = Path(os.path.realpath(path))
        assert real.is_relative_to(root), f"opened {path} outside the root"
        assert real.is_file(), f"opened {path}, not a regular file"


def test_at_least_thirty_unsafe_payloads() -> None:
    assert len(UNSAFE_PATHS) >= 30
    assert len(set(UNSAFE_PATHS)) == len(UNSAFE_PATHS)


@pytest.mark.parametrize("payload", UNSAFE_PATHS, ids=lambda p: repr(p[:40]))
async def test_unsafe_paths_are_refused(payload: str, shared_layout: Layout, opened: list[str]) -> None:
    layout = shared_layout
    raw = fill(payload, layout)
    executor = FileProcessingExecutor.from_environ(layout.environ)
    # Built directly, so even a path over the schema's length reaches `validate`.
    params = FileProcessingParams(file_path=raw)
    with anyio.fail_after(2):
        with pytest.raises(InvalidParams) as refused:
            await executor.validate(params)
        assert refused.value.field == "filePath"
        assert refused.value.details == [{"key": "filePath", "message": refused.value.message}]
        assert SENTINEL.decode() not in refused.value.message
        # `execute` checks again and refuses the same way (no result, nothing read).
        with pytest.raises(InvalidParams) as at_run:
            await run_executor(executor, params, validate=False)
        assert at_run.value.field == "filePath"
    assert_opens_stay_inside(opened, layout)
    # Special files are refused from stat alone: never opened.
    assert not any(os.path.basename(path) in {"fifo", "sock", "null"} for path in opened)


@pytest.mark.parametrize("payload", ["x" * (MAX_PATH_CHARS + 1), "a/" * 2100])
def test_schema_refuses_over_long_paths(payload: str) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"filePath": payload}, FileProcessingParams)


async def test_refusal_messages_are_readable(shared_layout: Layout) -> None:
    layout = shared_layout
    executor = FileProcessingExecutor.from_environ(layout.environ)

    async def message(raw: str) -> str:
        with pytest.raises(InvalidParams) as refused:
            await executor.validate(FileProcessingParams(file_path=raw))
        return refused.value.message

    assert "inside the demo folder" in await message("../etc/passwd")
    assert "inside the demo folder" in await message("/etc/passwd")
    assert "inside the demo folder" in await message("link-outside-file")
    assert "No such file" in await message("missing.txt")
    assert "No such file" in await message("%2e%2e/%2e%2e/etc/passwd")
    assert "directory" in await message("docs")
    assert "FIFO" in await message("fifo")
    assert "socket" in await message("sock")
    assert "loop" in await message("loop-a")
    assert "too long" in await message("a" * 300)
    assert "NUL" in await message("a\x00b")
    assert "limit" in await message("too-big.bin")
    assert "empty" in await message("")


async def test_fifo_never_hangs(shared_layout: Layout) -> None:
    layout = shared_layout
    with anyio.fail_after(2):
        with pytest.raises(InvalidParams, match="FIFO"):
            await run_executor(FileProcessingExecutor, {"filePath": "fifo"}, environ=layout.environ)


# -- reading real files -------------------------------------------------------------


def reading_reports(run: ExecutorRun) -> list[float]:
    return [r.percent for r in run.reports if r.step == "Reading File"]


async def test_reads_a_file_and_summarises_it(layout: Layout, opened: list[str]) -> None:
    run = await run_executor(FileProcessingExecutor, {"filePath": "welcome.txt"}, environ=layout.environ)
    assert run.result == {"path": "welcome.txt", **expected_summary(WELCOME)}
    assert run.result["lines"] == 3 and run.result["words"] == 14
    assert run.steps == ["Opening File", "Reading File", "Analyzing Content", "Writing Summary"]
    percents = [r.percent for r in run.reports]
    assert percents == sorted(percents)
    assert percents[0] == 0 and percents[-1] == 100
    assert_opens_stay_inside(opened, layout)
    assert opened  # it did open the file (in validate and again in execute)


CHUNK_SIZES = [1, 2, 3, 4, 5, 7, 11, 64, 65536]


@pytest.mark.parametrize(
    "data",
    [
        b"alpha beta\ngamma  delta epsilon\n\nzeta",
        b"  leading and trailing  \n",
        b"one\r\ntwo\tthree\x0bfour\x0cfive\n",
        b"word",
        b"\n\n\n",
        "caf\u00e9 na\u00efve \u2014 r\u00e9sum\u00e9\n".encode(),
    ],
    ids=["mixed", "spaces", "ascii-whitespace", "one-word", "newlines", "utf8"],
)
async def test_word_and_line_counts_across_chunk_boundaries(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "sample.txt").write_bytes(data)
    environ = {"FILE_PROCESSING_ROOT": str(tmp_path)}
    for chunk_size in CHUNK_SIZES:
        run = await run_executor(
            FileProcessingExecutor, {"filePath": "sample.txt", "chunkSize": chunk_size}, environ=environ
        )
        assert run.result == {"path": "sample.txt", **expected_summary(data)}, chunk_size
        assert len(reading_reports(run)) == 1 + math.ceil(len(data) / chunk_size)


async def test_empty_file(layout: Layout) -> None:
    (layout.root / "empty.txt").write_bytes(b"")
    run = await run_executor(FileProcessingExecutor, {"filePath": "empty.txt"}, environ=layout.environ)
    assert run.result == {"path": "empty.txt", **expected_summary(b"")}
    assert run.result["lines"] == 0 and run.result["words"] == 0
    assert run.reports[-1].percent == 100


async def test_progress_follows_the_bytes_read(layout: Layout) -> None:
    data = b"0123456789" * 50  # 500 bytes
    (layout.root / "data.bin").write_bytes(data)
    run = await run_executor(FileProcessingExecutor, {"filePath": "data.bin", "chunkSize": 100}, environ=layout.environ)
    reading = [r for r in run.reports if r.step == "Reading File"]
    # The first report announces the read; then one per 100-byte chunk.
    assert [r.percent for r in reading] == pytest.approx([5, 22, 39, 56, 73, 90])
    assert [r.description for r in reading[1:]] == [f"Read {n} of 500 bytes" for n in (100, 200, 300, 400, 500)]
    percents = [r.percent for r in run.reports]
    assert percents == sorted(percents) and percents[-1] == 100


async def test_tiny_chunks_grow_for_big_files(layout: Layout) -> None:
    size = MAX_BYTES  # with chunkSize 1 that would be 1000 chunks; the cap is lower here
    data = bytes(range(256)) * 3 + b"x" * (size - 768)
    (layout.root / "big.bin").write_bytes(data)
    monkey_cap = 10
    original = fp_module.MAX_CHUNKS
    fp_module.MAX_CHUNKS = monkey_cap
    try:
        run = await run_executor(
            FileProcessingExecutor, {"filePath": "big.bin", "chunkSize": 1}, environ=layout.environ
        )
    finally:
        fp_module.MAX_CHUNKS = original
    assert run.result["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(reading_reports(run)) == monkey_cap + 1
    assert MAX_CHUNKS == 2048


async def test_absolute_path_inside_the_root_is_accepted(layout: Layout) -> None:
    raw = str(layout.root / "docs" / "notes.md")
    run = await run_executor(FileProcessingExecutor, {"filePath": raw}, environ=layout.environ)
    assert run.result["path"] == "docs/notes.md"
    assert run.result["sha256"] == hashlib.sha256(b"# Notes\n\nsome words here\n").hexdigest()


async def test_symlink_inside_the_root_is_followed(layout: Layout) -> None:
    run = await run_executor(FileProcessingExecutor, {"filePath": "link-inside"}, environ=layout.environ)
    assert run.result["path"] == "welcome.txt"
    assert run.result["sha256"] == hashlib.sha256(WELCOME).hexdigest()


async def test_percent_names_are_names_not_escapes(layout: Layout) -> None:
    run = await run_executor(FileProcessingExecutor, {"filePath": "%2e%2e/ok.txt"}, environ=layout.environ)
    assert run.result["path"] == "%2e%2e/ok.txt"
    assert run.result["words"] == 2


async def test_execute_checks_again_when_the_file_changed(layout: Layout) -> None:
    executor = FileProcessingExecutor.from_environ(layout.environ)
    params = FileProcessingParams(file_path="later.txt")
    (layout.root / "later.txt").write_bytes(b"fine")
    await executor.validate(params)
    # Between create and run the file becomes a symlink to a file outside the root.
    (layout.root / "later.txt").unlink()
    (layout.root / "later.txt").symlink_to(layout.outside / "secret.txt")
    with pytest.raises(InvalidParams, match="inside the demo folder"):
        await run_executor(executor, params, validate=False)
    # ... or grows past the limit.
    (layout.root / "later.txt").unlink()
    (layout.root / "later.txt").write_bytes(b"x" * (MAX_BYTES + 1))
    with pytest.raises(InvalidParams, match="limit"):
        await run_executor(executor, params, validate=False)


async def test_file_swapped_between_check_and_open_is_refused(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    target = layout.root / "swap.txt"
    target.write_bytes(b"checked content")
    (layout.root / "other.txt").write_bytes(b"swapped in")
    real_open = os.open

    def swapping_open(path: object, flags: int, *args: object) -> int:
        if os.fsdecode(path) == str(target.resolve()):  # type: ignore[arg-type]
            os.replace(layout.root / "other.txt", target)
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", swapping_open)
    with pytest.raises(InvalidParams, match="changed"):
        await run_executor(FileProcessingExecutor, {"filePath": "swap.txt"}, environ=layout.environ)


async def test_root_removed_at_run_time(layout: Layout) -> None:
    executor = FileProcessingExecutor.from_environ(layout.environ)
    shutil.rmtree(layout.root)
    with pytest.raises(InvalidParams, match="demo folder"):
        await executor.validate(FileProcessingParams(file_path="welcome.txt"))


def test_missing_root_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="FILE_PROCESSING_ROOT"):
        FileProcessingExecutor.from_environ({"FILE_PROCESSING_ROOT": str(tmp_path / "nope")})
    with pytest.raises(SettingsError, match="FILE_PROCESSING_MAX_BYTES"):
        FileProcessingExecutor.from_environ({"FILE_PROCESSING_MAX_BYTES": "0"})


# -- the bundled demo folder --------------------------------------------------------


@pytest.mark.parametrize("name", ["welcome.txt", "report.csv", "docs/notes.md"])
async def test_bundled_demo_files(name: str) -> None:
    data = (bundled_root() / name).read_bytes()
    run = await run_executor(FileProcessingExecutor, {"filePath": name})
    assert run.result == {"path": name, **expected_summary(data)}


async def test_bundled_big_sample_log() -> None:
    data = (bundled_root() / "big-sample.log").read_bytes()
    assert 150_000 < len(data) < 250_000
    run = await run_executor(FileProcessingExecutor, {"filePath": "big-sample.log", "chunkSize": 4096})
    assert run.result == {"path": "big-sample.log", **expected_summary(data)}
    assert len(reading_reports(run)) == 1 + math.ceil(len(data) / 4096)


def test_bundled_root_is_the_demos_data_folder() -> None:
    root = bundled_root()
    assert root.is_dir()
    assert root.name == "data" and root.parent.name == "demos"
    assert (root / "welcome.txt").is_file()


async def test_bundled_root_refuses_escapes() -> None:
    with pytest.raises(InvalidParams, match="inside the demo folder"):
        await run_executor(FileProcessingExecutor, {"filePath": "../../pyproject.toml"})
    with pytest.raises(InvalidParams, match="inside the demo folder"):
        await run_executor(FileProcessingExecutor, {"filePath": MODULE_FILE})


# -- the simulated mode --------------------------------------------------------------


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        recorded.append(seconds)
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    return recorded


async def test_simulation_without_a_path(sleeps: list[float]) -> None:
    run = await run_executor(
        FileProcessingExecutor,
        {"fileSize": 10_000, "chunkSize": 1000},
        environ={"FILE_PROCESSING_SIMULATE_MAX_SECONDS": "0"},
    )
    assert run.result == {"simulated": True, "sizeBytes": 10_000, "chunks": 10}
    assert sleeps == []
    assert run.steps == ["Opening File", "Reading File", "Analyzing Content", "Writing Summary"]
    reading = reading_reports(run)
    assert reading == pytest.approx([5 + 85 * k / 10 for k in range(1, 11)])
    percents = [r.percent for r in run.reports]
    assert percents == sorted(percents) and percents[-1] == 100


async def test_simulated_time_scales_and_is_capped(sleeps: list[float]) -> None:
    await run_executor(FileProcessingExecutor, {"fileSize": 1024 * 1024})
    assert sum(sleeps) == pytest.approx(0.5)
    assert len(sleeps) == 16  # 1 MiB in 64 KiB chunks
    sleeps.clear()
    run = await run_executor(FileProcessingExecutor, {"fileSize": GIB})
    assert sum(sleeps) == pytest.approx(5.0)
    assert len(sleeps) == 100  # at most 100 ticks, however many chunks
    assert run.result == {"simulated": True, "sizeBytes": GIB, "chunks": GIB // 65536}


def test_schema_bounds() -> None:
    schema = msgspec.json.schema(FileProcessingParams)
    props = schema["$defs"]["FileProcessingParams"]["properties"]
    file_path = next(option for option in props["filePath"]["anyOf"] if option.get("type") == "string")
    assert "demo folder" in props["filePath"]["description"]
    assert file_path["maxLength"] == MAX_PATH_CHARS
    file_size = next(option for option in props["fileSize"]["anyOf"] if option.get("type") == "integer")
    assert (file_size["minimum"], file_size["maximum"]) == (1, GIB)
    assert props["fileSize"].get("default") is None
    assert (props["chunkDelayMs"]["minimum"], props["chunkDelayMs"]["maximum"]) == (0, MAX_CHUNK_DELAY_MS)
    assert props["chunkSize"]["minimum"] == 1
    assert "maximum" in props["chunkSize"]
    for name in ("filePath", "chunkSize", "chunkDelayMs"):
        assert props[name].get("description")
    assert file_size.get("description")
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"fileSize": GIB + 1}, FileProcessingParams)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"fileSize": 0}, FileProcessingParams)


async def test_cancel_is_prompt_in_simulation() -> None:
    # 1 GiB over up to 600 s: each of the 100 ticks sleeps for seconds.
    environ = {"FILE_PROCESSING_SIMULATE_MAX_SECONDS": "600"}
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(run_executor, FileProcessingExecutor, {"fileSize": GIB}, environ=environ))
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()


async def test_chunk_delay_paces_a_small_file(sleeps: list[float]) -> None:
    """chunkDelayMs makes the bundled big-sample.log take seconds: a pause after each chunk."""
    run = await run_executor(
        FileProcessingExecutor, {"filePath": "big-sample.log", "chunkSize": 8192, "chunkDelayMs": 100}
    )
    chunks = math.ceil(run.result["sizeBytes"] / 8192)
    assert sleeps == [0.1] * chunks and sum(sleeps) == pytest.approx(2.6)
    assert len(reading_reports(run)) == chunks + 1  # the 5 % "Reading" report, then one per chunk
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"chunkDelayMs": MAX_CHUNK_DELAY_MS + 1}, FileProcessingParams)


async def test_no_made_up_file_size_is_stored(client: httpx.AsyncClient) -> None:
    """With filePath, the stored params do not show a default fileSize beside the real size."""
    created = await client.post("/api/v1/demo/tasks/file-processing", json={"filePath": "welcome.txt"})
    assert created.status_code == 201, created.text
    task_id = created.json()["task"]["id"]
    task = (await client.get(f"/api/v1/tasks/{task_id}")).json()["task"]
    assert task["params"]["fileSize"] is None and task["params"]["chunkDelayMs"] == 0
    simulated = await run_executor(FileProcessingExecutor, {}, environ={"FILE_PROCESSING_SIMULATE_MAX_SECONDS": "0"})
    assert simulated.result["sizeBytes"] == 1024 * 1024  # the simulation's own default

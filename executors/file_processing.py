"""`file-processing`: read a file from the demo folder and summarise it — or simulate it.

With ``filePath`` the executor reads a real file in chunks (each read in a worker
thread, so the event loop never blocks) and returns its size, line count, word
count and SHA-256. Progress moves with the bytes read; each chunk is a line in the
task's log, carrying the running counts (bytes, lines, words) as partial results.

Reading a small file takes milliseconds, so its progress jumps to 100 %: for a live
demo, ``chunkDelayMs`` pauses after each chunk (at most ``MAX_CHUNK_DELAY_MS``), e.g.
the bundled ``big-sample.log`` (200 KB) in 8192-byte chunks with 100 ms takes about
2.5 s.

Without ``filePath`` it simulates processing ``fileSize`` bytes (default 1 MiB) in
``chunkSize`` chunks, sleeping a little per chunk; the simulated run takes
``fileSize / 2 MiB`` seconds, but never more than ``FILE_PROCESSING_SIMULATE_MAX_SECONDS``
(default 5). ``fileSize`` only describes a simulation: with ``filePath`` the real size
is read from the file (and a task's stored params keep ``fileSize`` as the client sent
it, null when absent, never a made-up default).

Safety: only regular files under the demo root are read. The root is
``FILE_PROCESSING_ROOT`` (env) or the bundled ``demos/data`` folder. ``filePath`` is
taken relative to the root; an absolute path is accepted only when it lies inside
the root. Refused (as ``InvalidParams`` on ``filePath``): any ``..`` component
(``/`` or ``\\`` separated), NUL bytes, empty names, paths that resolve outside the
root (symlinks included — the check is on the fully resolved path), symlink loops,
names too long for the file system, missing files, directories, FIFOs, sockets and
devices, and files over ``FILE_PROCESSING_MAX_BYTES``. Nothing is URL-decoded: a
file literally named ``%2e%2e`` is just that name. Special files are refused from
``stat`` before any open; the file is then opened with ``O_NOFOLLOW | O_NONBLOCK``
and ``fstat`` must show the same regular file (device and inode) that was checked,
closing the check/use race. The check runs when the task is created (`validate`)
and again when it runs (`execute`), since the file may change in between.

Counting rules: ``lines`` is the number of newline bytes, plus one when the file
does not end with a newline (an empty file has 0 lines); ``words`` is the number
of runs of non-whitespace bytes (ASCII whitespace separates, as ``bytes.split()``),
counted correctly across chunk boundaries.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import anyio
import anyio.to_thread
import msgspec

from async_tasks import Step, TaskExecutor, TaskParams
from async_tasks.errors import InvalidParams, SettingsError

if TYPE_CHECKING:
    from async_tasks import Progress, Task

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
MAX_PATH_CHARS = 4096
MAX_CHUNK_SIZE = 16 * MIB
DEFAULT_CHUNK_SIZE = 64 * KIB
#: Bytes a simulation processes when no fileSize is given.
DEFAULT_SIMULATED_SIZE = MIB
#: The longest pause after each chunk read (chunkDelayMs).
MAX_CHUNK_DELAY_MS = 2000
#: A file is read in at most this many chunks: tiny `chunkSize`s grow for big files.
MAX_CHUNKS = 2048
#: At most this many progress reports (and sleeps) in a simulated run.
MAX_SIMULATED_TICKS = 100
#: Simulated processing speed, bytes per second (before the time cap).
SIMULATED_BYTES_PER_SECOND = 2 * MIB
FIELD = "filePath"
OUTSIDE = "filePath must stay inside the demo folder"

_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def bundled_root() -> Path:
    """The bundled demo folder, ``demos/data``."""
    try:
        candidate = resources.files("demos") / "data"
        if isinstance(candidate, Path) and candidate.is_dir():
            return candidate
    except (ImportError, TypeError, OSError):
        pass
    return Path(__file__).resolve().parent.parent / "demos" / "data"


class FileProcessingConfig(msgspec.Struct, rename="upper", frozen=True, kw_only=True):
    """Environment settings of the `file-processing` executor."""

    file_processing_root: str | None = None
    file_processing_max_bytes: Annotated[int, msgspec.Meta(ge=1, le=64 * GIB)] = 100 * MIB
    file_processing_simulate_max_seconds: Annotated[float, msgspec.Meta(ge=0, le=600)] = 5.0


class FileProcessingParams(TaskParams):
    """Parameters of the `file-processing` executor."""

    file_path: Annotated[
        Annotated[str, msgspec.Meta(max_length=MAX_PATH_CHARS)] | None,
        msgspec.Meta(
            description=(
                "A file inside the demo folder (FILE_PROCESSING_ROOT, by default the bundled "
                "demos/data), relative to it, e.g. 'welcome.txt' or 'docs/notes.md'. An absolute "
                f"path must lie inside the folder. At most {MAX_PATH_CHARS} characters. "
                "Omit it to simulate processing fileSize bytes."
            ),
        ),
    ] = None
    # The bounds on the int itself (not on the union): where Litestar's OpenAPI document reads them.
    file_size: (
        Annotated[
            int,
            msgspec.Meta(
                ge=1,
                le=GIB,
                description=(
                    "Bytes to simulate when filePath is absent (at most 1 GiB; 1 MiB when omitted). "
                    "Ignored with filePath: the file's real size is used."
                ),
            ),
        ]
        | None
    ) = None
    chunk_size: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            le=MAX_CHUNK_SIZE,
            description=(
                f"Bytes per read (or simulated chunk), at most {MAX_CHUNK_SIZE}. Grown automatically "
                f"so that no file takes more than {MAX_CHUNKS} chunks."
            ),
        ),
    ] = DEFAULT_CHUNK_SIZE
    chunk_delay_ms: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=MAX_CHUNK_DELAY_MS,
            description=(
                f"Pause after each chunk read, in milliseconds (at most {MAX_CHUNK_DELAY_MS}), so that a "
                "small file's progress can be watched: big-sample.log with chunkSize 8192 and "
                "chunkDelayMs 100 takes about 2.5 s. Real files only; the task's timeout still applies."
            ),
        ),
    ] = 0


@dataclass
class CheckedFile:
    """A file that passed every check; `fd` is open on exactly the checked file."""

    fd: int
    path: Path
    relative: str
    size: int


@dataclass
class Counts:
    """Incremental line / word / SHA-256 counting over chunks."""

    size: int = 0
    newlines: int = 0
    words: int = 0
    in_word: bool = False
    last_byte: int | None = None
    digest: Any = field(default_factory=hashlib.sha256)

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        self.digest.update(chunk)
        self.newlines += chunk.count(b"\n")
        words = len(chunk.split())
        # A word cut by the chunk boundary was counted in the previous chunk already.
        if self.in_word and not chunk[:1].isspace():
            words -= 1
        self.words += words
        self.in_word = not chunk[-1:].isspace()
        self.last_byte = chunk[-1]

    @property
    def lines(self) -> int:
        if self.size == 0:
            return 0
        return self.newlines + (0 if self.last_byte == ord("\n") else 1)


def effective_chunk_size(size: int, chunk_size: int) -> int:
    return max(chunk_size, math.ceil(size / MAX_CHUNKS), 1)


def _refuse(message: str) -> InvalidParams:
    return InvalidParams(message, field=FIELD)


class FileProcessingExecutor(TaskExecutor[FileProcessingParams, FileProcessingConfig]):
    """Reads a file from the demo folder (lines, words, SHA-256), or simulates it."""

    name = "file-processing"
    title = "File Processing Task"
    description = (
        "Reads a file from the demo folder in chunks and reports its size, lines, words and "
        "SHA-256, with progress by bytes read. Without filePath it simulates processing "
        "fileSize bytes. Only regular files inside the demo folder can be read."
    )
    steps: ClassVar[tuple[Step, ...]] = (
        Step("Opening File", "Checking the path and opening the file", at=0),
        Step("Reading File", "Reading the file in chunks", at=5),
        Step("Analyzing Content", "Totalling lines, words and the checksum", at=90),
        Step("Writing Summary", "Preparing the summary", at=95),
    )

    def __init__(self, config: FileProcessingConfig | None = None) -> None:
        super().__init__(config)
        root = self.config.file_processing_root
        if root is not None and not Path(root).is_dir():
            raise SettingsError(f"Invalid value {root!r} for FILE_PROCESSING_ROOT: expected an existing directory")

    @property
    def root(self) -> Path:
        """The demo folder as configured (not resolved)."""
        configured = self.config.file_processing_root
        return Path(configured) if configured is not None else bundled_root()

    # -- the path check -------------------------------------------------------------

    def check_path(self, raw: str) -> CheckedFile:
        """Resolve `raw` safely under the root and open it. Blocking: call in a thread.

        Raises `InvalidParams` (field ``filePath``) for anything unsafe or unusable.
        The caller owns (and must close) the returned file descriptor.
        """
        if not isinstance(raw, str):
            raise _refuse("filePath must be a string")
        if raw.strip() == "":
            raise _refuse("filePath must not be empty (omit it to simulate a file)")
        if "\x00" in raw:
            raise _refuse("filePath must not contain NUL bytes")
        if len(raw) > MAX_PATH_CHARS:
            raise _refuse(f"filePath is too long (at most {MAX_PATH_CHARS} characters)")
        parts = raw.replace("\\", "/").split("/")
        if ".." in parts:
            raise _refuse(f"{OUTSIDE}: '..' is not allowed")
        if parts[-1] in ("", "."):
            raise _refuse("filePath must name a file, not a folder")

        configured = self.root
        try:
            root = configured.resolve(strict=True)
        except (OSError, RuntimeError):
            raise _refuse("The demo folder is not available on this server") from None
        if not root.is_dir():
            raise _refuse("The demo folder is not available on this server")

        candidate = Path(raw)
        if candidate.is_absolute():
            # Decide on the text alone first: never touch the file system outside the root.
            lexical = Path(os.path.normpath(raw))
            if not (lexical.is_relative_to(configured.absolute()) or lexical.is_relative_to(root)):
                raise _refuse(OUTSIDE)
        else:
            candidate = root / candidate

        try:
            resolved = candidate.resolve(strict=True)
        except RuntimeError:  # Python < 3.13 reports symlink loops this way
            raise _refuse("filePath is a symlink loop") from None
        except OSError as exc:
            raise self._os_refusal(exc) from None
        if not resolved.is_relative_to(root):
            raise _refuse(OUTSIDE)
        if resolved == root:
            raise _refuse("filePath is a directory, not a file")

        try:
            before = os.stat(resolved, follow_symlinks=False)
        except OSError as exc:
            raise self._os_refusal(exc) from None
        self._require_regular(before)

        try:
            fd = os.open(resolved, _OPEN_FLAGS)
        except OSError as exc:
            raise self._os_refusal(exc) from None
        try:
            after = os.fstat(fd)
            self._require_regular(after)
            if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
                raise _refuse("filePath changed while it was being checked")
            limit = self.config.file_processing_max_bytes
            if after.st_size > limit:
                raise _refuse(f"The file is {after.st_size} bytes; the limit is {limit} bytes")
        except BaseException:
            os.close(fd)
            raise
        return CheckedFile(fd=fd, path=resolved, relative=resolved.relative_to(root).as_posix(), size=after.st_size)

    @staticmethod
    def _require_regular(st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            raise _refuse("filePath is a directory, not a file")
        if stat.S_ISREG(mode):
            return
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file"
        )
        raise _refuse(f"filePath is {kind}; only regular files can be processed")

    @staticmethod
    def _os_refusal(exc: OSError) -> InvalidParams:
        code = exc.errno
        if code in (errno.ENOENT, errno.ENOTDIR):
            return _refuse("No such file in the demo folder")
        if code == errno.ELOOP:
            return _refuse("filePath is a symlink loop or a symlink where none is allowed")
        if code == errno.ENAMETOOLONG:
            return _refuse("filePath is too long for the file system")
        if code in (errno.EACCES, errno.EPERM):
            return _refuse("The file is not readable")
        if code == errno.EISDIR:
            return _refuse("filePath is a directory, not a file")
        return _refuse(f"The file cannot be opened ({os.strerror(code) if code else exc})")

    # -- the executor API -----------------------------------------------------------

    async def validate(self, params: FileProcessingParams) -> None:
        if params.file_path is None:
            return
        checked = await anyio.to_thread.run_sync(self.check_path, params.file_path)
        os.close(checked.fd)

    async def execute(self, task: Task[FileProcessingParams], progress: Progress) -> dict[str, Any]:
        params = task.params
        if params.file_path is None:
            return await self._simulate(params, progress)
        await progress(0, "Opening File", "Checking the path and opening the file")
        # Checked again: the file may have changed since the task was created.
        checked = await anyio.to_thread.run_sync(self.check_path, params.file_path)
        try:
            counts = await self._read(checked, params.chunk_size, params.chunk_delay_ms / 1000, progress)
        finally:
            os.close(checked.fd)
        await progress(90, "Analyzing Content", f"{counts.size:,} bytes read; totalling lines and words")
        result = {
            "path": checked.relative,
            "sizeBytes": counts.size,
            "lines": counts.lines,
            "words": counts.words,
            "sha256": counts.digest.hexdigest(),
        }
        await progress(95, "Writing Summary", f"{result['lines']:,} lines, {result['words']:,} words")
        await progress.log(
            f"{checked.relative}: {counts.size:,} bytes, {result['lines']:,} lines, {result['words']:,} words, "
            f"sha256 {str(result['sha256'])[:16]}…"
        )
        await progress(100, "Writing Summary", f"Processed {checked.relative}")
        return result

    async def _read(self, checked: CheckedFile, chunk_size: int, pause: float, progress: Progress) -> Counts:
        expected = max(checked.size, 1)
        chunk = effective_chunk_size(checked.size, chunk_size)
        limit = self.config.file_processing_max_bytes
        counts = Counts()
        await progress(5, "Reading File", f"Reading {checked.relative} ({checked.size:,} bytes)")
        await progress.log(f"Opened {checked.relative}: {checked.size:,} bytes, read {chunk:,} bytes at a time")
        number = 0
        while True:
            data = await anyio.to_thread.run_sync(os.read, checked.fd, chunk)
            if not data:
                break
            counts.feed(data)
            if counts.size > limit:
                raise ValueError(f"The file grew past the {limit} byte limit while it was being read")
            number += 1
            await progress.log(
                f"Chunk {number}: {len(data):,} bytes ({counts.size:,} read, {counts.lines:,} lines so far)",
                data={"chunk": number, "bytesRead": counts.size, "lines": counts.lines, "words": counts.words},
            )
            done = min(counts.size / expected, 1.0)
            await progress(
                5 + 85 * done,
                "Reading File",
                f"Read {counts.size:,} of {max(checked.size, counts.size):,} bytes",
            )
            if pause > 0:
                await anyio.sleep(pause)
        return counts

    async def _simulate(self, params: FileProcessingParams, progress: Progress) -> dict[str, Any]:
        size = params.file_size if params.file_size is not None else DEFAULT_SIMULATED_SIZE
        chunks = math.ceil(size / params.chunk_size)
        ticks = min(chunks, MAX_SIMULATED_TICKS)
        seconds = min(self.config.file_processing_simulate_max_seconds, size / SIMULATED_BYTES_PER_SECOND)
        pause = seconds / ticks
        await progress(0, "Opening File", f"No filePath given: simulating a {size:,} byte file")
        await progress.log(f"Simulating a {size:,} byte file in {chunks:,} chunks of {params.chunk_size:,} bytes")
        for tick in range(1, ticks + 1):
            if pause > 0:
                await anyio.sleep(pause)
            done = min(size, size * tick // ticks)
            chunk_no = min(chunks, math.ceil(chunks * tick / ticks))
            await progress.log(f"Simulated chunk {chunk_no} of {chunks:,}: {done:,} bytes so far")
            await progress(
                5 + 85 * done / size,
                "Reading File",
                f"Simulated chunk {chunk_no} of {chunks}: {done:,} of {size:,} bytes",
            )
        await progress(90, "Analyzing Content", "Simulating analysis of the content")
        await progress(95, "Writing Summary", "Preparing the summary")
        await progress(100, "Writing Summary", f"Simulated processing of {size:,} bytes")
        return {"simulated": True, "sizeBytes": size, "chunks": chunks}

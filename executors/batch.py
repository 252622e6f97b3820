"""`batch`: process a list of JSON items one by one, with per-item results.

The work done on each item is small, real and deterministic, chosen by its JSON type:

* **string** — Unicode-normalised (NFC), runs of whitespace collapsed to one space,
  trimmed and upper-cased; the output gives its length, a short preview and the
  first 16 hex digits of the SHA-256 of the normalised text (UTF-8).
* **number** — squared (``{"square": n * n}``); a square that would not fit a
  finite double (or an integer square above 10**300) fails the item.
* **boolean** — negated (``{"negated": not b}``).
* **array** — its length and the count of each JSON type in it.
* **object** — its keys counted and listed (sorted, first 20). An object with
  ``"fail": true`` fails on purpose, so a demo can show a per-item failure.
* **null** — fails ("nothing to process").

A failing item is recorded in the result with ``"status": "error"``; it never stops
the batch. Each item's outcome is also a line in the task's log, carrying its index,
status and (when short) output or error as partial results. The task's result is
``{"total", "succeeded", "failed", "items": [{"index", "status", "output" | "error"}]}``.

Limits: at least one item; at most ``MAX_ITEMS`` (1000) items, the bound the params
schema advertises (``BATCH_MAX_ITEMS``, env, may only lower it, and the error then
names the lower limit); each item at most ``BATCH_MAX_ITEM_BYTES`` bytes once
JSON-encoded (env, default 10 KiB).
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import anyio
import msgspec

from async_tasks import Step, TaskExecutor, TaskParams
from async_tasks.errors import InvalidParams

if TYPE_CHECKING:
    from async_tasks import Progress, Task

#: The most items a batch takes: the schema's bound and the default of `BATCH_MAX_ITEMS`,
#: which may only lower it (one number, so what the schema advertises is what is taken).
MAX_ITEMS = 1000
MAX_ITEM_DELAY_MS = 10_000
#: Largest integer whose square is still computed.
MAX_SQUARE = 10**300
PREVIEW_CHARS = 60
#: The largest output (or error) of an item its log line carries, as JSON.
MAX_LOGGED_BYTES = 120


class BatchConfig(msgspec.Struct, rename="upper", frozen=True, kw_only=True):
    """Environment settings of the `batch` executor."""

    batch_max_items: Annotated[int, msgspec.Meta(ge=1, le=MAX_ITEMS)] = MAX_ITEMS
    batch_max_item_bytes: Annotated[int, msgspec.Meta(ge=16, le=1_048_576)] = 10 * 1024


class BatchParams(TaskParams):
    """Parameters of the `batch` executor."""

    items: Annotated[
        list[Any],
        msgspec.Meta(
            min_length=1,
            max_length=MAX_ITEMS,
            description=(
                "JSON values to process in order (strings, numbers, booleans, arrays, objects). "
                f"At least 1; at most {MAX_ITEMS} (a server may set a lower BATCH_MAX_ITEMS). Each item "
                "at most BATCH_MAX_ITEM_BYTES (default 10240) bytes as JSON. null, or an object with "
                '"fail": true, fails that item (the batch goes on).'
            ),
        ),
    ]
    item_delay_ms: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=MAX_ITEM_DELAY_MS,
            description=f"Pause before each item, in milliseconds (at most {MAX_ITEM_DELAY_MS}).",
        ),
    ] = 200


class ItemFailed(Exception):
    """An item could not be processed; recorded in the result, never fatal."""


def preview(item: Any, limit: int = PREVIEW_CHARS) -> str:
    """The item as compact JSON, cut to `limit` characters."""
    try:
        text = msgspec.json.encode(item).decode()
    except (TypeError, ValueError, OverflowError):
        text = repr(item)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def log_data(entry: dict[str, Any]) -> dict[str, Any]:
    """An item's entry as the partial result its log line carries: its index and status,
    with its output or error when they are short (a log line is small: TASK_LOG_LINE_BYTES)."""
    data = {"index": entry["index"], "status": entry["status"]}
    for key in ("output", "error"):
        if key in entry and len(msgspec.json.encode(entry[key])) <= MAX_LOGGED_BYTES:
            data[key] = entry[key]
    return data


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFC", text).split()).upper()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def process_item(item: Any) -> dict[str, Any]:
    """The work done on one item (see the module docstring). Raises `ItemFailed`."""
    kind = _json_type(item)
    if item is None:
        raise ItemFailed("item is null: nothing to process")
    if isinstance(item, bool):
        return {"type": kind, "negated": not item}
    if isinstance(item, int):
        if abs(item) > MAX_SQUARE:
            raise ItemFailed("number is too large to square")
        return {"type": kind, "square": item * item}
    if isinstance(item, float):
        if not math.isfinite(item):
            raise ItemFailed("number is not finite")
        square = item * item
        if not math.isfinite(square):
            raise ItemFailed("number is too large to square")
        return {"type": kind, "square": square}
    if isinstance(item, str):
        text = normalise(item)
        return {
            "type": kind,
            "length": len(text),
            "normalized": text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…",
            "sha256": hashlib.sha256(text.encode()).hexdigest()[:16],
        }
    if isinstance(item, list | tuple):
        counts: dict[str, int] = {}
        for value in item:
            counts[_json_type(value)] = counts.get(_json_type(value), 0) + 1
        return {"type": kind, "length": len(item), "types": dict(sorted(counts.items()))}
    if isinstance(item, dict):
        if item.get("fail") is True:
            raise ItemFailed('item asked to fail ("fail": true)')
        keys = sorted(str(key) for key in item)
        return {"type": kind, "keys": len(keys), "keyNames": keys[:20]}
    raise ItemFailed(f"unsupported item type {kind}")


class BatchExecutor(TaskExecutor[BatchParams, BatchConfig]):
    """Processes JSON items one at a time; a failing item is recorded, not fatal.

    Per item: strings are normalised, upper-cased and hashed (SHA-256 prefix);
    numbers squared; booleans negated; arrays measured; objects get their keys
    counted. ``null`` and objects with ``"fail": true`` fail (on purpose, for demos).
    """

    name = "batch"
    title = "Batch Processing Task"
    description = (
        "Processes a list of JSON items one by one with per-item progress and results: "
        "strings are normalised and hashed, numbers squared, objects have their keys counted. "
        'null or {"fail": true} fails that item without stopping the batch.'
    )
    steps: ClassVar[tuple[Step, ...]] = (
        Step("Preparing Batch", "Checking the items to process", at=0),
        Step("Processing Items", "Processing each item in turn", at=1),
        Step("Summarizing Results", "Counting successes and failures", at=100),
    )

    async def validate(self, params: BatchParams) -> None:
        config = self.config
        count = len(params.items)
        if count < 1:
            raise InvalidParams("items must hold at least one item", field="items")
        if count > config.batch_max_items:
            raise InvalidParams(
                f"items holds {count} items; this server takes at most {config.batch_max_items} per batch "
                "(BATCH_MAX_ITEMS).",
                field="items",
            )
        limit = config.batch_max_item_bytes
        for index, item in enumerate(params.items):
            field = f"items[{index}]"
            try:
                size = len(msgspec.json.encode(item))
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidParams(f"{field} is not a JSON value: {exc}", field=field) from None
            if size > limit:
                raise InvalidParams(
                    f"{field} is {size} bytes as JSON; each item may be at most {limit} bytes", field=field
                )

    async def execute(self, task: Task[BatchParams], progress: Progress) -> dict[str, Any]:
        params = task.params
        items = params.items
        total = len(items)
        delay = params.item_delay_ms / 1000
        await progress(0, "Preparing Batch", f"{total} item{'s' if total != 1 else ''} to process")
        results: list[dict[str, Any]] = []
        succeeded = 0
        for index, item in enumerate(items):
            step = f"Processing item {index + 1} of {total}"
            shown = f"Item {index + 1}: {preview(item)}"
            if delay > 0:
                # Name the item while waiting on it, so a poller sees what is in hand.
                await progress(index / total * 100, step, shown)
                await anyio.sleep(delay)
            try:
                output = process_item(item)
            except ItemFailed as exc:
                entry: dict[str, Any] = {"index": index, "status": "error", "error": str(exc)}
            except Exception as exc:  # an item must never fail the batch
                entry = {"index": index, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
            else:
                succeeded += 1
                entry = {"index": index, "status": "ok", "output": output}
            results.append(entry)
            # After each item: percent = items done / total; the item's result in the log.
            outcome = "ok" if entry["status"] == "ok" else f"failed: {entry['error']}"
            await progress((index + 1) / total * 100, step, f"{shown} — {outcome}")
            await progress.log(f"{shown} — {outcome}", data=log_data(entry))
        failed = total - succeeded
        await progress(100, "Summarizing Results", f"{succeeded} succeeded, {failed} failed")
        await progress.log(
            f"Done: {succeeded} succeeded, {failed} failed", data={"succeeded": succeeded, "failed": failed}
        )
        return {"total": total, "succeeded": succeeded, "failed": failed, "items": results}

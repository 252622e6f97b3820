"""The `batch` executor: per-item work and results, limits, progress, cancellation."""

from __future__ import annotations

import hashlib
import time

import anyio
import anyio.lowlevel
import msgspec
import pytest

from async_tasks.errors import InvalidParams, SettingsError
from async_tasks.testing import run_executor
from executors.batch import MAX_ITEMS, BatchConfig, BatchExecutor, BatchParams


def sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def test_per_item_results_with_failures_recorded() -> None:
    items = ["  hello \t world ", 3, -1.5, {"b": 1, "a": 2}, None, {"fail": True}, [1, "x", None], True]
    run = await run_executor(BatchExecutor, {"items": items, "itemDelayMs": 0})
    result = run.result
    assert result["total"] == 8
    assert result["succeeded"] == 6
    assert result["failed"] == 2
    by_index = {entry["index"]: entry for entry in result["items"]}
    assert [entry["index"] for entry in result["items"]] == list(range(8))
    assert by_index[0] == {
        "index": 0,
        "status": "ok",
        "output": {
            "type": "string",
            "length": 11,
            "normalized": "HELLO WORLD",
            "sha256": sha16("HELLO WORLD"),
        },
    }
    assert by_index[1]["output"] == {"type": "number", "square": 9}
    assert by_index[2]["output"] == {"type": "number", "square": 2.25}
    assert by_index[3]["output"] == {"type": "object", "keys": 2, "keyNames": ["a", "b"]}
    assert by_index[4]["status"] == "error" and "null" in by_index[4]["error"]
    assert by_index[5]["status"] == "error" and "fail" in by_index[5]["error"]
    assert "output" not in by_index[5]
    assert by_index[6]["output"] == {
        "type": "array",
        "length": 3,
        "types": {"null": 1, "number": 1, "string": 1},
    }
    assert by_index[7]["output"] == {"type": "boolean", "negated": False}
    # The result is JSON-encodable as is.
    assert msgspec.json.decode(msgspec.json.encode(result)) == result


async def test_unicode_strings_are_normalised_before_hashing() -> None:
    decomposed = "cafe\u0301"  # 'e' + combining acute accent
    run = await run_executor(BatchExecutor, {"items": [decomposed, "caf\u00e9"], "itemDelayMs": 0})
    first, second = (entry["output"] for entry in run.result["items"])
    assert first == second
    assert first["normalized"] == "CAF\u00c9"
    assert first["sha256"] == sha16("CAF\u00c9")


async def test_huge_numbers_fail_the_item_only() -> None:
    run = await run_executor(BatchExecutor, {"items": [10**301, 1e200, 7], "itemDelayMs": 0})
    statuses = [entry["status"] for entry in run.result["items"]]
    assert statuses == ["error", "error", "ok"]
    assert run.result["items"][2]["output"]["square"] == 49


async def test_progress_is_reported_after_each_item() -> None:
    items = ["a", "b", None, "d", "e"]
    run = await run_executor(BatchExecutor, {"items": items, "itemDelayMs": 0})
    percents = [r.percent for r in run.reports]
    assert percents == sorted(percents)
    assert percents[0] == 0 and percents[-1] == 100
    after_items = [r for r in run.reports if r.step and r.step.startswith("Processing item")]
    assert [r.percent for r in after_items] == [20, 40, 60, 80, 100]
    assert [r.step for r in after_items] == [f"Processing item {i} of 5" for i in range(1, 6)]
    assert after_items[0].description == 'Item 1: "a" — ok'
    assert (after_items[2].description or "").startswith("Item 3: null — failed")
    assert run.steps[0] == "Preparing Batch"
    assert run.steps[-1] == "Summarizing Results"


async def test_with_a_delay_the_item_in_hand_is_named_first(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(anyio, "sleep", fake_sleep)
    run = await run_executor(BatchExecutor, {"items": ["x", "y"], "itemDelayMs": 250})
    assert sleeps == [0.25, 0.25]
    item_reports = [(r.percent, r.step) for r in run.reports if r.step and r.step.startswith("Processing")]
    assert item_reports == [
        (0, "Processing item 1 of 2"),
        (50, "Processing item 1 of 2"),
        (50, "Processing item 2 of 2"),
        (100, "Processing item 2 of 2"),
    ]


async def test_zero_delay_never_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    async def forbidden(seconds: float) -> None:
        raise AssertionError("slept with itemDelayMs=0")

    monkeypatch.setattr(anyio, "sleep", forbidden)
    run = await run_executor(BatchExecutor, {"items": list(range(50)), "itemDelayMs": 0})
    assert run.result["succeeded"] == 50


async def test_item_count_is_capped_by_config() -> None:
    environ = {"BATCH_MAX_ITEMS": "3"}
    run = await run_executor(BatchExecutor, {"items": [1, 2, 3], "itemDelayMs": 0}, environ=environ)
    assert run.result["total"] == 3
    with pytest.raises(InvalidParams) as caught:
        await run_executor(BatchExecutor, {"items": [1, 2, 3, 4], "itemDelayMs": 0}, environ=environ)
    assert caught.value.field == "items"
    assert "at most 3" in caught.value.message


async def test_default_item_cap_is_1000() -> None:
    run = await run_executor(BatchExecutor, {"items": [0] * 1000, "itemDelayMs": 0})
    assert run.result["total"] == 1000
    with pytest.raises(msgspec.ValidationError, match="length <= 1000"):  # refused by the params schema
        await run_executor(BatchExecutor, {"items": [0] * 1001, "itemDelayMs": 0})


async def test_per_item_size_is_capped() -> None:
    big = "x" * (10 * 1024)
    with pytest.raises(InvalidParams) as caught:
        await run_executor(BatchExecutor, {"items": ["ok", 1, big, "later"], "itemDelayMs": 0})
    assert caught.value.field == "items[2]"
    assert caught.value.details == [{"key": "items[2]", "message": caught.value.message}]
    # A nested object is measured as encoded JSON too.
    nested = {"k": ["y" * 100] * 120}
    with pytest.raises(InvalidParams) as caught:
        await run_executor(BatchExecutor, {"items": [nested], "itemDelayMs": 0})
    assert caught.value.field == "items[0]"
    # The limit itself is configurable.
    with pytest.raises(InvalidParams):
        await run_executor(BatchExecutor, {"items": ["abcdefghijklmnopqrstu"]}, environ={"BATCH_MAX_ITEM_BYTES": "16"})


def test_schema_bounds() -> None:
    schema = msgspec.json.schema(BatchParams)
    props = schema["$defs"]["BatchParams"]["properties"]
    assert props["items"]["minItems"] == 1
    # One number: what the schema advertises is the default limit, which a setting may only lower.
    assert props["items"]["maxItems"] == MAX_ITEMS == BatchConfig().batch_max_items == 1000
    assert str(MAX_ITEMS) in props["items"]["description"]
    assert props["itemDelayMs"]["maximum"] == 10_000
    assert props["itemDelayMs"]["minimum"] == 0
    assert schema["$defs"]["BatchParams"]["required"] == ["items"]
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"items": []}, BatchParams)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({}, BatchParams)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"items": [1], "itemDelayMs": 10_001}, BatchParams)


def test_bad_config_stops_start_up() -> None:
    with pytest.raises(SettingsError, match="BATCH_MAX_ITEMS"):
        BatchExecutor.from_environ({"BATCH_MAX_ITEMS": "0"})
    with pytest.raises(SettingsError, match="BATCH_MAX_ITEMS"):  # above what the schema advertises
        BatchExecutor.from_environ({"BATCH_MAX_ITEMS": "1001"})
    with pytest.raises(SettingsError, match="BATCH_MAX_ITEMS"):
        BatchExecutor.from_environ({"BATCH_MAX_ITEMS": "lots"})


async def test_cancel_is_prompt_between_items() -> None:
    started = time.monotonic()
    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run_executor, BatchExecutor, {"items": [1, 2, 3], "itemDelayMs": 10_000})
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert time.monotonic() - started < 1

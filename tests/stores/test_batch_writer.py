"""The batch writer shared by the SQL and Redis stores: one bad row fails only its own
caller, and no caller waits forever when the writer task dies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from durable_adapter.exceptions import StoreError
from durable_adapter.stores.batch_writer import BatchWriter, Row

SHORT = 2.0  # seconds: what a hung submit would exceed


class Table:
    """A write function: hands out dense seqs, refuses a whole batch holding a bad row
    (as one transaction does), and can be made to misbehave."""

    def __init__(self) -> None:
        self.top = 0
        self.batches: list[list[Row]] = []
        self.short_reply = False

    async def write(self, rows: list[Row]) -> list[int]:
        await asyncio.sleep(0)
        self.batches.append(rows)
        if any(row.get("bad") for row in rows):
            raise StoreError("the transaction failed")
        first, self.top = self.top + 1, self.top + len(rows)
        seqs = list(range(first, self.top + 1))
        return seqs[:-1] if self.short_reply else seqs


def data_error(_: Exception) -> bool:
    return True


async def submit_all(writer: BatchWriter, rows: list[Row]) -> list[Any]:
    return await asyncio.wait_for(
        asyncio.gather(*(writer.submit(row) for row in rows), return_exceptions=True), SHORT)


async def test_one_bad_row_fails_only_its_own_append() -> None:
    table = Table()
    writer = BatchWriter(table.write, batch_max=100, on_commit=lambda _: None, name="w",
                         retry_alone=data_error)
    rows: list[Row] = [{"n": i} for i in range(10)]
    rows.insert(4, {"bad": True})
    results = await submit_all(writer, rows)
    assert isinstance(results[4], StoreError)
    assert results[:4] + results[5:] == list(range(1, 11))
    assert len(table.batches[0]) == 11  # tried together first
    await writer.close()


async def test_without_retry_alone_the_batch_fails_together() -> None:
    table = Table()
    writer = BatchWriter(table.write, batch_max=100, on_commit=lambda _: None, name="w")
    results = await submit_all(writer, [{"n": 1}, {"bad": True}])
    assert all(isinstance(result, StoreError) for result in results)
    await writer.close()


async def test_a_wrong_reply_fails_the_callers_instead_of_hanging() -> None:
    table = Table()
    table.short_reply = True
    writer = BatchWriter(table.write, batch_max=100, on_commit=lambda _: None, name="w")
    results = await submit_all(writer, [{"n": 1}, {"n": 2}])
    assert all(isinstance(result, StoreError) for result in results)
    table.short_reply = False
    assert await asyncio.wait_for(writer.submit({"n": 3}), SHORT) == 3  # still writing
    await writer.close()


async def test_a_failing_commit_callback_does_not_stop_the_writer() -> None:
    table = Table()

    def on_commit(_: list[int]) -> None:
        raise RuntimeError("boom")

    writer = BatchWriter(table.write, batch_max=100, on_commit=on_commit, name="w")
    assert await asyncio.wait_for(writer.submit({"n": 1}), SHORT) == 1
    assert await asyncio.wait_for(writer.submit({"n": 2}), SHORT) == 2
    await writer.close()


async def test_a_dead_writer_task_never_leaves_a_submit_hanging() -> None:
    table = Table()
    gate = asyncio.Event()

    async def stuck(rows: list[Row]) -> list[int]:
        await gate.wait()
        return await table.write(rows)

    writer = BatchWriter(stuck, batch_max=100, on_commit=lambda _: None, name="w")
    waiting = asyncio.ensure_future(writer.submit({"n": 1}))
    await asyncio.sleep(0.05)
    writer._task.cancel()  # the writer dies mid-write (a bug, a stray cancel)
    with pytest.raises(StoreError, match="writer stopped"):
        await asyncio.wait_for(waiting, SHORT)
    gate.set()
    assert await asyncio.wait_for(writer.submit({"n": 2}), SHORT) == 1  # restarted
    await writer.close()
    with pytest.raises(StoreError, match="closed"):
        await writer.submit({"n": 3})

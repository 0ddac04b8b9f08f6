"""The SQL stores never stall on one bad row: a row the follower cannot decode is
skipped (a replay refuses it), and a packet that cannot be stored fails its own emit
only, not the batch of other emits it would have joined."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.exc import DataError, DBAPIError, OperationalError

from durable_adapter.exceptions import StoreError
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.schema import SINGLETON_ID, counter, packets
from durable_adapter.stores.sql.store import _may_be_one_row

from .conftest import postgres_store, sqlite_store
from .test_store_contract import Collector, bounded, packet


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SQLStore]:
    make = sqlite_store if request.param == "sqlite" else postgres_store
    async with make(tmp_path) as instance:
        assert isinstance(instance, SQLStore)
        await bounded(instance.open())
        try:
            yield instance
        finally:
            await bounded(instance.close())


async def insert_undecodable(store: SQLStore) -> int:
    """A row as another (buggy or newer) node might have written it; returns its seq."""
    async with store._write() as connection:
        top = (await connection.execute(
            update(counter).where(counter.c.id == SINGLETON_ID)
            .values(top=counter.c.top + 1).returning(counter.c.top))).scalar_one()
        await connection.execute(packets.insert().values(
            seq=top, namespace="/", payload=b"junk", rooms="[]", except_rooms="[]",
            created_at=time.time()))
    return int(top)


@pytest.mark.parametrize("where", ["middle", "end of a page"])
async def test_the_follower_skips_a_row_it_cannot_decode(
        store: SQLStore, where: str, caplog: pytest.LogCaptureFixture) -> None:
    seen = Collector()
    await bounded(store.follow(seen, after=0))
    await bounded(store.append(packet(1)))
    await seen.wait_for(1)
    bad = await insert_undecodable(store)
    if where == "end of a page":  # nothing after it yet: the cursor must still pass it
        await asyncio.sleep(store.poll_interval * 4)
    later = await bounded(store.append(packet(3)))
    await seen.wait_for(2)
    assert seen.seqs == [1, later] and later == bad + 1
    skipped = [r for r in caplog.records if getattr(r, "action", "") == "follow_bad_packet"]
    assert len(skipped) == 1  # logged once, not on every retry
    with pytest.raises(StoreError, match=f"packet {bad} cannot be decoded"):
        await bounded(store.read(after=0, limit=10))  # a replay never skips it silently


async def test_a_namespace_that_cannot_be_stored_fails_only_its_own_emit(
        store: SQLStore) -> None:
    good = [packet(i) for i in range(20)]
    bad = packet("bad", namespace="/a\x00b")  # possible with namespaces="*"
    results = await bounded(asyncio.gather(
        *(store.append(p) for p in [*good[:10], bad, *good[10:]]), return_exceptions=True))
    assert isinstance(results[10], StoreError)
    stored = results[:10] + results[11:]
    assert sorted(stored) == list(range(1, 21))  # type: ignore[type-var]
    read = await bounded(store.read(after=0, limit=50))
    assert sorted(p.data[1] for p in read) == list(range(20))


def test_only_an_error_of_the_rows_content_writes_them_one_by_one() -> None:
    def wrapped(cause: Exception) -> StoreError:
        error = StoreError("writing failed")
        error.__cause__ = cause
        return error

    data = DataError("INSERT", {}, Exception('invalid byte sequence for encoding "UTF8"'))
    lost = OperationalError("INSERT", {}, Exception("server closed the connection"))
    invalidated = DBAPIError("INSERT", {}, Exception("gone"), connection_invalidated=True)
    assert _may_be_one_row(wrapped(data))
    assert not _may_be_one_row(wrapped(lost))  # writing again would not help
    assert not _may_be_one_row(wrapped(invalidated))
    assert not _may_be_one_row(wrapped(ConnectionResetError()))

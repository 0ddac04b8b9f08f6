"""A node delivers its own committed packets from memory, in seq order with everyone's.

Issue 10, deliverable 1: an emit costs its commit, not a read-back by the node's own
follower; a packet of another process committed just before an own one still goes out
first; a failed commit delivers nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from durable_adapter.exceptions import StoreError
from durable_adapter.stores import store_from_url
from durable_adapter.stores.base import NewPacket
from durable_adapter.stores.sql.store import SQLStore
from tests.conformance.conftest import Peer, StoreMaker, StoreSpec, running

EMITS = 50


def count_follower_reads(store: SQLStore) -> list[int]:
    """Counts the running follower's page reads on a real store (wraps its reader)."""
    reads: list[int] = []
    follower = store._follower
    assert follower is not None
    read = follower._read

    async def counted(**kwargs: Any) -> Any:
        reads.append(kwargs["after"])
        return await read(**kwargs)

    follower._read = counted  # type: ignore[method-assign]
    return reads


@pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
async def test_own_emits_are_delivered_without_reading_them_back(store: StoreSpec) -> None:
    async with running(store) as node:
        sql_store = node.sio.store
        assert isinstance(sql_store, SQLStore)
        peer = Peer()
        await peer.connect(node.url)
        reads = count_follower_reads(sql_store)
        for i in range(EMITS):
            await node.sio.emit("tick", i)
            # handed to the local socket by the time the emit returns
            assert node.sio.durable_manager.delivered == (await sql_store.bounds()).top
        await peer.inbox["/"].wait_for(EMITS)
        assert peer.received() == list(range(EMITS))
        # the follower may still poll now and then (other processes' appends), but it
        # does not read each packet back: far fewer reads than emits
        assert len(reads) < EMITS / 5, reads
        await peer.close()


@pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
async def test_an_other_process_packet_committed_first_goes_out_first(
        store: StoreSpec, tmp_path: Path) -> None:
    async with running(store) as node:
        peer = Peer()
        await peer.connect(node.url)
        # another process's writer: a store of its own on the same tables, no follower
        other = store_from_url(node.sio.store.url.render_as_string(hide_password=False)) \
            if not isinstance(store, StoreMaker) else store()
        await other.open()
        try:
            for i in range(10):
                await other.append(NewPacket(namespace="/", data=["tick", f"other {i}"]))
                # its seq is below ours: ours must wait for the follower to bring it
                await node.sio.emit("tick", f"own {i}")
            await peer.inbox["/"].wait_for(20)
            expected = [x for i in range(10) for x in (f"other {i}", f"own {i}")]
            assert peer.received() == expected
        finally:
            await other.close()
            await peer.close()


@pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
async def test_a_failed_commit_delivers_nothing_and_later_emits_go_on(
        store: StoreSpec) -> None:
    async with running(store) as node:
        peer = Peer()
        await peer.connect(node.url)
        await node.sio.emit("tick", "before")
        sql_store = node.sio.store
        assert isinstance(sql_store, SQLStore)
        insert = sql_store._insert_batch

        async def failing(rows: list[dict[str, Any]]) -> list[int]:
            raise StoreError("the database went away")

        sql_store._writer._write = failing  # type: ignore[union-attr]
        with pytest.raises(StoreError):
            await node.sio.emit("tick", "lost")
        sql_store._writer._write = insert  # type: ignore[union-attr]
        await node.sio.emit("tick", "after")
        await peer.inbox["/"].wait_for(2)
        # "after" has the highest seq: nothing committed before it is still on its way
        assert peer.received() == ["before", "after"]
        await peer.close()


@pytest.mark.parametrize("store", ["memory", "sqlite", "postgres", "redis"], indirect=True)
async def test_many_emits_in_flight_arrive_once_in_offset_order(store: StoreSpec) -> None:
    async with running(store) as node:
        peer = Peer()
        await peer.connect(node.url)
        await asyncio.gather(*(node.sio.emit("tick", i) for i in range(200)))
        await node.sio.emit("tick", "end")  # the highest seq: everything else came first
        await peer.inbox["/"].wait_for(201)
        stored = await node.sio.store.read(after=0, limit=1000)
        assert peer.received() == [packet.data[1] for packet in stored]
        assert sorted(peer.received()[:-1]) == list(range(200))  # each once
        await peer.close()

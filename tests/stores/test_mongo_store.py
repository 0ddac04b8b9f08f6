"""The MongoDB store against a real replica set (``DURABLE_ADAPTER_MONGO_URL``): several
instances on one database, tombstones for dead writers, the capped collection wrapping,
replay through the _id index, the schema, control messages. Skipped without a server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from durable_adapter.exceptions import ConfigurationError
from durable_adapter.migrate import migrate
from durable_adapter.stores.base import ControlMessage, NewPacket
from durable_adapter.stores.mongo import MongoStore
from durable_adapter.stores.mongo import schema as schema
from tests._mongo import mongo_database

from .test_store_contract import Collector, bounded, packet


@pytest.fixture
def where() -> Iterator[tuple[str, str]]:
    with mongo_database() as found:
        yield found


@pytest.fixture
async def admin(where: tuple[str, str]) -> AsyncIterator[Any]:
    client: AsyncMongoClient[Any] = AsyncMongoClient(where[0])
    try:
        yield client[where[1]]
    finally:
        await client.close()


@pytest.fixture
async def open_store(where: tuple[str, str]) -> AsyncIterator[Callable[..., Awaitable[MongoStore]]]:
    """Opens ``MongoStore``s on the test database, closed after the test."""
    async with AsyncExitStack() as stack:

        async def open_one(**options: Any) -> MongoStore:
            store = MongoStore(where[0], database=where[1], gap_timeout=0.5,
                               poll_interval=0.1, **options)
            await bounded(store.open())
            stack.push_async_callback(store.close)
            return store

        yield open_one


async def test_two_nodes_share_one_history_in_one_order(open_store: Any) -> None:
    first, second = await open_store(), await open_store()
    assert first.epoch == second.epoch
    seen = [Collector(), Collector()]
    await first.follow(seen[0], after=0)
    await second.follow(seen[1], after=0)
    await bounded(asyncio.gather(*(first.append(packet(i)) for i in range(100)),
                                 *(second.append(packet(i)) for i in range(100))))
    for collector in seen:
        await collector.wait_for(200)
    assert seen[0].seqs == seen[1].seqs == list(range(1, 201))


async def test_a_dead_writer_is_tombstoned_a_late_one_fails(open_store: Any, admin: Any) -> None:
    store = await open_store()
    await bounded(store.append(packet("one")))
    collector = Collector()
    await store.follow(collector, after=0)
    # a writer takes seq 2 and dies before inserting it
    await admin["durable_adapter_meta"].update_one({"_id": "history"}, {"$inc": {"top": 1}})
    await bounded(store.append(packet("three")))
    await collector.wait_for(2)
    assert collector.seqs == [1, 3]
    assert [p.seq for p in await store.read(after=0, limit=10)] == [1, 3]
    late = schema.packet_document(2, schema.packet_fields(NewPacket(namespace="/", data=["x"])),
                                  time.time())
    with pytest.raises(DuplicateKeyError):
        await admin["durable_adapter_packets"].insert_one(late)


async def test_an_overwritten_history_is_refused_not_skipped(open_store: Any, admin: Any) -> None:
    store = await open_store(capped_size_bytes=4096)
    for i in range(100):
        await bounded(store.append(packet("x" * 200 + str(i))))
    bounds = await store.bounds()
    retained = [p.seq for p in await store.read(after=0, limit=1000)]
    assert bounds.top == 100 and retained[-1] == 100
    assert bounds.purged_through == retained[0] - 1 > 0
    assert retained == list(range(retained[0], 101))
    collector = Collector()
    await store.follow(collector, after=0)  # far behind: the start was overwritten
    await collector.wait_for(len(retained))
    assert collector.seqs == retained
    meta = await admin["durable_adapter_meta"].find_one({"_id": "history"})
    assert meta["purged_through"] >= retained[0] - 1


async def test_replay_reads_a_range_of_the_id_index(open_store: Any, admin: Any) -> None:
    store = await open_store()
    for i in range(50):
        await bounded(store.append(packet(i, namespace="/chat" if i % 2 else "/")))
    plan = await admin["durable_adapter_packets"].find(
        schema.read_filter(10, 40, "/chat")).sort("_id", 1).limit(5).hint([("_id", 1)]).explain()
    assert "IXSCAN" in str(plan["queryPlanner"]["winningPlan"])
    assert "COLLSCAN" not in str(plan["queryPlanner"]["winningPlan"])
    assert [p.seq for p in await store.read(after=10, until=40, limit=5, namespace="/chat")
            ] == [12, 14, 16, 18, 20]


async def test_schema_is_created_idempotently(where: tuple[str, str], admin: Any) -> None:
    url = schema.with_database(*where)
    with pytest.raises(ConfigurationError, match="durable-adapter migrate"):
        await bounded(MongoStore(url, auto_migrate=False).open())
    await bounded(migrate(url))
    await bounded(migrate(url))
    for name in ("durable_adapter_packets", "durable_adapter_control"):
        assert (await admin[name].options())["capped"] is True
    indexes = {i["name"]: i async for i in await admin["durable_adapter_sessions"].list_indexes()}
    assert indexes["expires_at_ttl"]["expireAfterSeconds"] == 0
    assert dict(indexes["ns_sid"]["key"]) == {"ns": 1, "sid": 1}
    async with MongoStore(url, auto_migrate=False) as store:
        epoch = store.epoch
    async with MongoStore(url) as again:
        assert again.epoch == epoch  # the same database: the same history


async def test_another_prefix_is_another_history(open_store: Any) -> None:
    store = await open_store()
    await bounded(store.append(packet(1)))
    other = await open_store(prefix="other")
    assert other.epoch != store.epoch and (await other.bounds()).top == 0


async def test_control_messages_reach_the_other_nodes(open_store: Any) -> None:
    first, second = await open_store(), await open_store()
    received: asyncio.Queue[ControlMessage] = asyncio.Queue()
    second.on_control(received.put)
    await bounded(second._tasks["control"][0].ready.wait())  # type: ignore[union-attr]
    sent = ControlMessage(method="disconnect", origin="n1", body={"sid": "s", "blob": b"\x00"})
    await bounded(first.publish_control(sent))
    assert await bounded(received.get()) == sent

"""Two instances of a SQL store on one database, as two server processes would hold:
control messages, the PostgreSQL doorbell, payloads of any size, and PostgreSQL set-up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from durable_adapter.exceptions import ConfigurationError, StoreError
from durable_adapter.stores.base import ControlMessage, StoredPacket
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.append import TARGETS, split
from durable_adapter.stores.sql.control import control_row
from durable_adapter.stores.sql.follow import FOLLOW_PAGE
from durable_adapter.stores.sql.postgres import CHANNEL_PREFIX, PostgresStore, channel_name
from durable_adapter.stores.sql.schema import control
from tests._postgres import POSTGRES_URL, postgres_schema

from .conftest import WAIT, sqlite_url
from .test_store_contract import Collector, bounded, packet


class Journal:
    """Records packets and control messages as one sequence, as a node would see them."""

    def __init__(self) -> None:
        self.entries: list[object] = []
        self._changed = asyncio.Event()

    async def packets(self, batch: list[StoredPacket]) -> None:
        self.entries.extend(p.data[1] for p in batch)
        self._changed.set()

    async def control(self, message: ControlMessage) -> None:
        self.entries.append((message.method, message.body))
        self._changed.set()

    async def wait_for(self, count: int) -> None:
        async def until() -> None:
            while len(self.entries) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), WAIT)


@pytest.fixture(params=["sqlite", "postgres"])
async def pair(request: pytest.FixtureRequest, tmp_path: Path
               ) -> AsyncIterator[tuple[SQLStore, SQLStore]]:
    async def opened(make: type[SQLStore], *args: object, **options: object
                     ) -> AsyncIterator[tuple[SQLStore, SQLStore]]:
        first, second = make(*args, **options), make(*args, **options)
        await bounded(first.open())
        await bounded(second.open())
        try:
            yield first, second
        finally:
            await bounded(first.close())
            await bounded(second.close())

    if request.param == "sqlite":
        async for stores in opened(SQLStore, sqlite_url(tmp_path), poll_interval=0.02):
            yield stores
        return
    # polls far apart: what arrives within WAIT came through the doorbell
    async with postgres_schema() as schema:
        async for stores in opened(PostgresStore, POSTGRES_URL, schema=schema,
                                   poll_interval=60):
            yield stores


async def test_control_messages_arrive_between_the_packets_they_followed(
        pair: tuple[SQLStore, SQLStore]) -> None:
    first, second = pair
    journal = Journal()
    second.on_control(journal.control)
    await bounded(second.follow(journal.packets, after=0))
    if isinstance(second, PostgresStore):
        await bounded(second.listening.wait())
    # queued together: one transaction, the order kept
    await bounded(asyncio.gather(
        first.append(packet(1)),
        first.publish_control(ControlMessage(method="join", origin="n1", body={"room": "r"})),
        first.append(packet(2)),
        first.publish_control(ControlMessage(method="leave", origin="n1", target="n2")),
    ))
    await journal.wait_for(4)
    assert journal.entries == [1, ("join", {"room": "r"}), 2, ("leave", {})]


async def test_control_messages_are_live_only(pair: tuple[SQLStore, SQLStore]) -> None:
    first, second = pair
    await bounded(first.publish_control(ControlMessage(method="old", origin="n1")))
    journal = Journal()
    second.on_control(journal.control)
    await bounded(second.follow(journal.packets, after=0))
    await bounded(first.publish_control(ControlMessage(method="new", origin="n1")))
    await journal.wait_for(1)
    assert journal.entries == [("new", {})]


async def test_old_control_rows_are_pruned(pair: tuple[SQLStore, SQLStore]) -> None:
    first, _ = pair
    for _ in range(3):
        await bounded(first.publish_control(ControlMessage(method="m", origin="n1")))
    await bounded(first.purge(now=time.time() + 61, retention=3600))
    async with first.engine.connect() as connection:
        left = (await connection.execute(select(func.count()).select_from(control))).scalar()
    assert left == 0


async def test_a_control_body_must_be_json(pair: tuple[SQLStore, SQLStore]) -> None:
    first, _ = pair
    with pytest.raises(TypeError):
        await first.publish_control(ControlMessage(method="m", origin="n", body={"b": b"x"}))


async def test_large_and_binary_payloads_reach_the_other_instance(
        pair: tuple[SQLStore, SQLStore]) -> None:
    first, second = pair
    collector = Collector()
    await bounded(second.follow(collector, after=0))
    if isinstance(second, PostgresStore):
        await bounded(second.listening.wait())
    large, binary = "x" * 100_000, bytes(range(256)) * 100  # NOTIFY caps near 8000 bytes
    await bounded(first.append(packet(large)))
    await bounded(first.append(packet(binary)))
    await collector.wait_for(2)
    assert [p.data[1] for p in collector.packets] == [large, binary]


def test_a_batch_numbers_packets_and_places_control_messages() -> None:
    def row(i: int) -> dict[str, object]:
        return {"namespace": "/", "payload": b"%d" % i, "rooms": "[]", "except_rooms": "[]",
                TARGETS: ["*"]}

    def message(method: str) -> dict[str, object]:
        return control_row(ControlMessage(method=method, origin="n1"))

    batch = split([message("first"), row(1), message("a"), message("b"), row(2)])
    assert batch.count == 2 and batch.payloads == [b"1", b"2"]
    assert list(zip(batch.methods, batch.after, strict=True)) == [("first", 0), ("a", 1),
                                                                  ("b", 1)]
    assert batch.seqs(top=12) == [10, 11, 11, 11, 12]  # the top after the batch
    assert split([row(1), row(2)]).seqs(top=7) == [6, 7]


def test_channel_names_fit_postgresql_identifiers() -> None:
    assert channel_name("t_1") == f"{CHANNEL_PREFIX}t_1"
    assert channel_name(None) == f"{CHANNEL_PREFIX}public"
    assert len(channel_name("s" * 63).encode()) <= 63
    assert channel_name("s" * 63) != channel_name("s" * 62 + "t")


async def test_postgres_without_tables_asks_for_migrate() -> None:
    async with postgres_schema(migrated=False) as schema:
        store = PostgresStore(POSTGRES_URL, schema=schema)
        with pytest.raises(ConfigurationError, match="durable-adapter migrate --store"):
            await bounded(store.open())
        migrating = PostgresStore(POSTGRES_URL, schema=schema, auto_migrate=True)
        async with migrating:
            assert migrating.epoch


async def test_postgres_unreachable_raises_store_error() -> None:
    store = PostgresStore("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    with pytest.raises(StoreError):
        await bounded(store.open())


def test_postgres_store_refuses_other_urls(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        PostgresStore(sqlite_url(tmp_path))
    with pytest.raises(ConfigurationError):
        PostgresStore(POSTGRES_URL, listen_url=sqlite_url(tmp_path))


async def test_a_handover_request_does_not_wait_behind_a_backlog(
        pair: tuple[SQLStore, SQLStore]) -> None:
    """A node lagging behind a long run of packets answers a handover at once: the
    request is handed over as soon as it is read, ahead of packets still to deliver."""
    first, second = pair
    journal = Journal()
    holding = asyncio.Event()
    release = asyncio.Event()

    async def lagging(batch: list[StoredPacket]) -> None:
        holding.set()
        await release.wait()  # the node is busy: everything below queues up
        await journal.packets(batch)

    second.on_control(journal.control)
    await bounded(second.follow(lagging, after=0))
    if isinstance(second, PostgresStore):
        await bounded(second.listening.wait())
    await bounded(first.append(packet(0)))
    await bounded(holding.wait())
    backlog = 3 * FOLLOW_PAGE
    await bounded(asyncio.gather(*(first.append(packet(i)) for i in range(1, backlog + 1))))
    await bounded(first.publish_control(ControlMessage(
        method="handover", origin="n1", target="n2", body={"pid_hash": "p"})))
    release.set()
    await journal.wait_for(backlog + 2)
    handover = journal.entries.index(("handover", {"pid_hash": "p"}))
    assert handover <= FOLLOW_PAGE + 1, f"handed after {handover - 1} of {backlog} packets"
    assert [e for e in journal.entries if isinstance(e, int)] == list(range(backlog + 1))

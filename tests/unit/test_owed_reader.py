"""The merge of target pages into one replay (``_owed``), against a real memory store:
whatever the page size, a request gets exactly the owed packets of its targets in seq
order, each once, and more than the cap owed is refused as soon as it is seen."""

from __future__ import annotations

import asyncio
import random

import pytest

from durable_adapter._owed import OwedReader, TooMany
from durable_adapter.stores.base import NewPacket, StoredPacket
from durable_adapter.stores.memory import MemoryStore
from durable_adapter.stores.targets import NAMESPACE, room_target, targets_of

ROOMS = ["a", "b", "c", "d"]


async def _history(store: MemoryStore, count: int, rng: random.Random) -> list[StoredPacket]:
    for i in range(count):
        rooms = tuple(rng.sample(ROOMS, rng.choice([0, 0, 1, 1, 1, 2])))
        await store.append(NewPacket(namespace=rng.choice(["/", "/", "/x"]), data=["e", i],
                                     rooms=rooms, except_rooms=tuple(rng.sample(ROOMS, 1))
                                     if rng.random() < 0.2 else ()))
    return await store.read(after=0, limit=count)


@pytest.mark.parametrize("page", [1, 3, 50, 1000])
async def test_pages_of_several_targets_merge_into_each_owed_packet_once_in_order(
        page: int) -> None:
    rng = random.Random(page)
    store = MemoryStore()
    history = await _history(store, 400, rng)
    reader = OwedReader(store.read_targets, page=page, batch_max=3)

    async def one(rooms: list[str], after: int, until: int) -> None:
        targets = [NAMESPACE, *map(room_target, rooms)]

        def owed(packet: StoredPacket) -> bool:
            return packet.is_for(rooms)

        got = await reader.read("/", targets, after=after, until=until, owed=owed, cap=10**6)
        expected = [p for p in history if p.namespace == "/" and after < p.seq <= until
                    and set(targets_of(p.rooms)) & set(targets) and owed(p)]
        assert got == expected

    # more requests than one round serves: later ones join the next rounds
    await asyncio.gather(*(one(rng.sample(ROOMS, rng.randint(0, 3)), after, after + span)
                           for after, span in ((rng.randint(0, 300), rng.randint(0, 200))
                                               for _ in range(10))))


async def test_more_owed_than_the_cap_is_refused_without_reading_the_rest() -> None:
    store = MemoryStore()
    for i in range(100):
        await store.append(NewPacket(namespace="/", data=["e", i], rooms=("a",)))
    pages: list[int] = []

    async def counted(ranges):  # type: ignore[no-untyped-def]
        pages.append(len(ranges))
        return await store.read_targets(ranges)

    reader = OwedReader(counted, page=10, batch_max=10)
    with pytest.raises(TooMany):
        await reader.read("/", [room_target("a")], after=0, until=100,
                          owed=lambda packet: True, cap=15)
    assert len(pages) == 2  # refused at the second page of 10, not after all ten

"""The cleanup keeps packets for the window the live servers serve, as they record it
beside their lease, instead of a flag kept equal by hand (the flag still overrides)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from sqlalchemy import update

import durable_adapter
from durable_adapter import cleanup
from durable_adapter.stores.base import NewPacket
from durable_adapter.stores.redis.store import RedisStore
from durable_adapter.stores.sql.schema import packets
from tests._redis import redis_store

from .conftest import WAIT, Target


async def _backdate(store: Any, seqs: list[int], age: float) -> None:
    async with store.engine.begin() as connection:
        await connection.execute(update(packets).where(packets.c.seq.in_(seqs))
                                 .values(created_at=time.time() - age))


async def _once(target: Target, **options: Any) -> cleanup.CleanupSummary:
    return await asyncio.wait_for(
        cleanup.run(target.url, schema=target.schema, once=True, **options), WAIT)


async def test_the_worker_keeps_packets_for_the_largest_window_of_live_servers(
        target: Target) -> None:
    async with target.store() as store:
        now = time.time()
        for node, window, alive in (("a", 600.0, True), ("b", 60.0, True),
                                    ("gone", 5000.0, False)):
            await store.renew_lease(node, now=now if alive else now - 100, expiry=30)
            await store.record_window(node, window)
        assert await store.largest_window(time.time()) == 600.0
        seqs = [await store.append(NewPacket(namespace="/", data=["e", i])) for i in range(4)]
        await _backdate(store, seqs[:2], 1000)  # past 600 + the margin
        await _backdate(store, seqs[2:], 500)  # within: a session of "a" may need them
        summary = await _once(target)
        assert summary.packets == 2
        assert [p.seq for p in await store.read(after=0, limit=10)] == seqs[2:]
        # the flag overrides what the servers recorded
        summary = await _once(target, max_disconnection_duration=60)
        assert summary.packets == 2


async def test_a_server_records_its_window_when_it_starts(target: Target) -> None:
    store = target.store()
    sio = durable_adapter.AsyncServer(
        store=store, async_mode="aiohttp",
        connection_state_recovery={"max_disconnection_duration": 777})
    try:
        await sio.emit("tick", 1)  # starts the node: its lease, then its window
        assert await store.largest_window(time.time()) == 777.0
    finally:
        await sio.shutdown()


async def test_redis_records_the_windows_of_live_servers(tmp_path: Path) -> None:
    async with redis_store(tmp_path) as store:
        assert isinstance(store, RedisStore)
        await store.open()
        try:
            assert await store.largest_window(time.time()) is None
            now = time.time()
            await store.renew_lease("a", now=now, expiry=30)
            await store.record_window("a", 90.0)
            await store.renew_lease("gone", now=now - 100, expiry=30)
            await store.record_window("gone", 5000.0)
            await store.record_window("no-lease", 8000.0)
            assert await store.largest_window(time.time()) == 90.0
            # forgotten once its node has no lease at all
            assert set(await store.redis.hkeys(store.keys.retention)) == {b"a", b"gone"}
        finally:
            await store.close()

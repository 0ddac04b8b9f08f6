"""Servers that purge a shared store themselves (``cleanup_in_server``): one at a time.

Two servers on one PostgreSQL schema (or one SQLite file), no cleanup worker: expired
packets go, exactly one server purges (it holds the worker's lock; the other stands by),
and the other takes over once the first stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from sqlalchemy import func, select, update

from durable_adapter._server_cleanup import ServerCleanup
from durable_adapter.stores.sql import SQLStore
from durable_adapter.stores.sql.schema import packets
from tests.conformance.conftest import Node, running

from .conftest import WAIT, Target

WINDOW = 2.0  # seconds: max_disconnection_duration (a pass every 0.5 s)


async def _until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _cleanup(node: Node) -> ServerCleanup:
    cleanup = node.sio.durable_manager.cleanup
    assert cleanup is not None, "cleanup_in_server is on"
    return cleanup


async def test_one_of_two_servers_purges_expired_packets_without_a_worker(
        target: Target) -> None:
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(running(
            target.store(), max_disconnection_duration=WINDOW, cleanup_in_server=True))
            for _ in range(2)]
        for n in range(10):  # starts both nodes; their cleanup starts with them
            await nodes[n % 2].sio.emit("tick", n)
        reader = nodes[0].sio.store
        assert isinstance(reader, SQLStore)

        async def stored() -> int:
            async with reader.engine.connect() as connection:
                query = select(func.count()).select_from(packets)
                return int((await connection.execute(query)).scalar_one())

        assert await stored() == 10
        retention = _cleanup(nodes[0]).settings.effective_retention
        async with reader.engine.begin() as connection:  # older than the retention
            await connection.execute(update(packets).where(packets.c.seq <= 6)
                                     .values(created_at=time.time() - retention - 1))
        await _until(lambda: _eq(stored, 4), "the 6 expired packets to be purged")
        assert (await reader.bounds()).purged_through == 6

        cleanups = [_cleanup(node) for node in nodes]
        active = [c for c in cleanups if c.active]
        assert len(active) == 1, [c.active for c in cleanups]
        (purging,), (standby,) = active, [c for c in cleanups if not c.active]
        seen = purging.passes
        await _until(lambda: _true(purging.passes >= seen + 3), "three more passes")
        assert standby.passes == 0 and not standby.active

        # the purging server stops: the other one takes over
        stopping = nodes[cleanups.index(purging)]
        await stopping.sio.shutdown()
        await _until(lambda: _true(standby.active and standby.passes >= 1),
                     "the standby server to take over the purge")


async def _eq(value: Callable[[], Awaitable[int]], expected: int) -> bool:
    return await value() == expected


async def _true(value: bool) -> bool:
    return value

"""The emitters' room-wide commands (the JS emitters' ``socketsJoin``, ``socketsLeave``,
``disconnectSockets``) on two server processes sharing a store: they act on the matching
connected sockets of every node, before any packet emitted after them, and a join is
written through: a node killed right after still leaves the room in the stored session.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import durable_adapter
from durable_adapter.stores.base import Store
from tests import _harness
from tests.cluster.conftest import ClusterStore
from tests.cluster.harness import Listener, NodeProcess
from tests.cluster.node_app import LEASE_EXPIRY_ENV
from tests.cluster.test_cross_node import rooms_of, tags

WAIT = 15.0  # seconds for one cross-node effect to show
until = functools.partial(_harness.until, within=WAIT)
LEASE_EXPIRY = 2.0  # seconds: a killed node's sessions are free to take after this


def emitter_store(store: ClusterStore) -> Store | str:
    """The store the nodes use, for an emitter in this process."""
    if store.kind != "postgres":
        return store.url
    from durable_adapter.stores.sql.postgres import PostgresStore

    return PostgresStore(store.url, schema=store.args[1])


@asynccontextmanager
async def two_nodes(store: ClusterStore) -> AsyncIterator[tuple[NodeProcess, NodeProcess]]:
    a, b = (NodeProcess(name, store.url, args=store.args,
                        env={LEASE_EXPIRY_ENV: str(LEASE_EXPIRY)}) for name in "ab")
    try:
        for node in (a, b):  # one at a time: the first may create the schema
            await node.start()
        yield a, b
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def connected(url: str, name: str, room: str | None = None) -> Listener:
    listener = Listener(name, auth={"room": room} if room else {})
    await listener.connect(url)
    return listener


async def test_sockets_join_and_leave_act_on_every_node(fault_store: ClusterStore) -> None:
    async with two_nodes(fault_store) as (a, b), \
            durable_adapter.AsyncEmitter(emitter_store(fault_store)) as emitter:
        on_a, on_b = await connected(a.url, "on_a", "vip"), await connected(b.url, "on_b", "vip")
        other = await connected(b.url, "other")
        everyone = (on_a, on_b, other)
        try:
            # no wait in between: every node joins before it delivers the emit after it
            await emitter.sockets_join(["x", "y"], room="vip")
            await emitter.emit("seq", {"tag": "to-x", "i": 0}, to="x")
            await emitter.emit("seq", {"tag": "marker", "i": 0})
            await until(lambda: all("marker" in tags(c) for c in everyone), "the markers")
            assert tags(on_a) == tags(on_b) == ["to-x", "marker"]
            assert tags(other) == ["marker"]
            for node, client in ((a, on_a), (b, on_b)):
                assert client.sid is not None
                assert {"x", "y"} <= set(await rooms_of(node, client.sid))

            await emitter.sockets_leave("x")  # every socket of the namespace
            await emitter.emit("seq", {"tag": "to-x", "i": 1}, to="x")
            await emitter.emit("seq", {"tag": "to-y", "i": 1}, to="y")
            await until(lambda: all("to-y" in tags(c) for c in (on_a, on_b)), "to-y")
            assert tags(on_a) == tags(on_b) == ["to-x", "marker", "to-y"]
        finally:
            await asyncio.gather(*(c.close() for c in everyone))


async def test_a_join_is_written_through(fault_store: ClusterStore) -> None:
    """The node holding the socket is killed right after the join: the client recovers
    on the other node from the row written through, in the room."""
    async with two_nodes(fault_store) as (a, b), \
            durable_adapter.AsyncEmitter(emitter_store(fault_store)) as emitter:
        client = await connected(b.url, "c")
        successor = Listener("c'")
        try:
            await emitter.sockets_join("x")
            await emitter.emit("seq", {"tag": "to-x", "i": 0}, to="x")
            await until(lambda: tags(client) == ["to-x"], "the room emit")
            assert b.process is not None and client.client is not None
            b.process.kill()
            await asyncio.wait_for(b.process.wait(), WAIT)
            await _harness.settle_handlers(client.client)
            await successor.connect(a.url, client.client.recovery_state())
            assert successor.recoveries == 1 and successor.sid == client.sid
            assert "x" in await rooms_of(a, client.sid)
            await emitter.emit("seq", {"tag": "to-x", "i": 1}, to="x")
            await until(lambda: tags(successor) == ["to-x"], "the room emit after recovery")
        finally:
            await asyncio.gather(client.close(), successor.close(), return_exceptions=True)


async def test_disconnect_sockets_of_a_room_on_every_node(fault_store: ClusterStore) -> None:
    async with two_nodes(fault_store) as (a, b), \
            durable_adapter.AsyncEmitter(emitter_store(fault_store)) as emitter:
        on_a, on_b = await connected(a.url, "on_a", "vip"), await connected(b.url, "on_b", "vip")
        other = await connected(a.url, "other")
        try:
            states = [c.client.recovery_state() for c in (on_a, on_b)
                      if c.client is not None]
            await emitter.disconnect_sockets(room="vip")
            await until(lambda: all(c.client is not None and not c.client.connected
                                    for c in (on_a, on_b)), "the vip sockets disconnected")
            assert other.client is not None and other.client.connected
            # a server-side disconnect: the sessions are gone, not recoverable
            for state in states:
                again = Listener("again")
                await again.connect(a.url, state)
                assert again.refusals == 1
                await again.close()

            await emitter.disconnect_sockets(close=True)
            await until(lambda: other.client is not None and not other.client.connected,
                        "every socket disconnected")
        finally:
            await asyncio.gather(*(c.close() for c in (on_a, on_b, other)),
                                 return_exceptions=True)

"""A drop whose write failed is written once the store is back.

Otherwise the socket's row would stay as its live node left it (owned by a node that is
alive), unrecoverable and never purged. The fault is real: PostgreSQL refuses the
database's connections (and drops the open ones) while the client drops.
"""

from __future__ import annotations

import time

from durable_adapter.stores.base import Session, TakeRequest
from tests._harness import WAIT, until
from tests.cluster.faults import database_of, postgres_accept, postgres_database, postgres_refuse
from tests.conformance.conftest import Peer, running


async def test_a_drop_written_during_an_outage_lands_once_the_store_is_back() -> None:
    async with postgres_database() as store, running(store.url) as node:
        manager = node.sio.durable_manager
        peer = Peer()
        await peer.connect(node.url)
        sid = peer.sid()
        pid_hash = manager.sockets.get("/", sid).pid_hash
        await postgres_refuse(database_of(store))
        try:
            state = await peer.drop(node)  # its drop write fails: nothing to reach
        finally:
            await postgres_accept(database_of(store))

        async def released() -> bool:
            owners = await manager.store.owners([("/", pid_hash)])
            return owners.get(("/", pid_hash), "absent") is None

        deadline = time.monotonic() + WAIT * 2
        while not await released():
            assert time.monotonic() < deadline, "the drop was never written"
            await until(lambda: not manager.sessions.failing or time.monotonic() > deadline,
                        "the writer to retry")
        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered() and again.sid() == sid
        (taken,) = await manager.store.take_sessions(
            [TakeRequest("/", pid_hash)], node="x", now=time.time(), window=60)
        assert not isinstance(taken, Session)  # recovered: taken by the node already
        await again.close()

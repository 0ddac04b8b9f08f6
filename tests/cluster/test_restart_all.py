"""Every server process restarted: clients still recover, on any node.

One client stays connected through the restart (SIGTERM makes ``sio.shutdown()`` save
its session); the other dropped before it (its session was saved at the drop).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests._harness import drop_transport
from tests.cluster.conftest import ClusterStore
from tests.cluster.harness import Listener, cluster, offset_seq

WAIT = 20.0  # seconds for an expected delivery


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_clients_recover_after_every_node_restarted(cluster_store: ClusterStore) -> None:
    async with cluster(cluster_store.url, 2, cluster_store.args) as nodes:
        a, b = nodes
        live, dropped = Listener("live"), Listener("dropped")
        await live.connect(a.url)
        await dropped.connect(b.url)
        assert live.client is not None and dropped.client is not None
        sids = {"live": live.client.get_sid(), "dropped": dropped.client.get_sid()}
        await a.post("/emit", {"tag": "first", "start": 0, "count": 10})
        await until(lambda: len(live.received) == 10 == len(dropped.received), "the first 10")

        # an abrupt drop before the restart: its node saves the session
        await drop_transport(dropped.client)
        await asyncio.wait_for(dropped.client.eio.disconnect(abort=True), WAIT)
        state = dropped.client.recovery_state()
        await a.post("/emit", {"tag": "missed", "start": 0, "count": 10})
        await until(lambda: len(live.received) == 20, "the missed 10 on the live client")

        for node in nodes:  # SIGTERM: each saves its live sessions, then exits
            await node.stop()
        live_state = live.client.recovery_state()
        for node in nodes:
            await node.start()
        await b.post("/emit", {"tag": "after", "start": 0, "count": 10})

        # each comes back on the other node, as a load balancer may send it
        await live.connect(b.url, live_state)
        await dropped.connect(a.url, state)
        await until(lambda: len(live.received) == 30 == len(dropped.received), "everything")
        assert live.recoveries == dropped.recoveries == 1
        assert live.refusals == dropped.refusals == 0
        assert live.client.get_sid() == sids["live"]
        assert dropped.client.get_sid() == sids["dropped"]
        for listener in (live, dropped):
            events = [(tag, i) for tag, i, _ in listener.received]
            assert events == [(t, i) for t in ("first", "missed", "after") for i in range(10)]
            seqs = [offset_seq(offset) for _, _, offset in listener.received]
            assert seqs == sorted(seqs)
        await live.close()
        await dropped.close()

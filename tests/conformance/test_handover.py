"""A client that moves to a node lagging behind the one it left gets nothing twice.

Nodes sharing one store follow it each at their own pace (SQLite: a poll for other
processes' commits). A client leaving node A at position p and recovering on node B that
has only delivered up to b < p is owed nothing at or below p; B must not hand it the
packets in (b, p] when it catches up. Run many times (``HANDOVER_ROUNDS``) as a stress test.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from durable_adapter.stores.sql import SQLStore
from tests._harness import WAIT
from tests.conformance.conftest import Peer, StoreMaker, running

ROUNDS = int(os.environ.get("HANDOVER_ROUNDS", "6"))
LAG = 0.5  # seconds between node B's looks at node A's commits


def sqlite_node(url: str, poll_interval: float) -> StoreMaker:
    return StoreMaker(lambda: SQLStore(url, poll_interval=poll_interval), lambda: None)


async def test_a_client_moving_to_a_lagging_node_gets_each_event_once(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    async with running(sqlite_node(url, 0.02)) as ahead, \
            running(sqlite_node(url, LAG)) as behind:
        peers = [Peer() for _ in range(3)]
        for peer in peers:
            await peer.connect(ahead.url)
        stop = asyncio.Event()
        emitted: list[int] = []

        async def emitter() -> None:
            i = 0
            while not stop.is_set():
                await ahead.sio.emit("tick", i)
                emitted.append(i)
                i += 1

        task = asyncio.create_task(emitter())
        try:
            received: list[list[int]] = [[] for _ in peers]
            for round_ in range(ROUNDS):
                source, target = (ahead, behind) if round_ % 2 == 0 else (behind, ahead)
                for index, peer in enumerate(peers):
                    await peer.inbox["/"].wait_for(len(peer.received()) + 5)
                    state = await peer.drop(source)
                    received[index] += peer.received()
                    again = Peer()
                    await again.connect(target.url, state)
                    assert again.client.is_recovered(), target.last["failure"]
                    peers[index] = again
        finally:
            stop.set()
            await asyncio.wait_for(task, WAIT)
        last = emitted[-1]
        for index, peer in enumerate(peers):
            await peer.inbox["/"].wait_for(1)
            while peer.received()[-1] != last:
                await peer.inbox["/"].wait_for(len(peer.received()) + 1)
            seen = received[index] + peer.received()
            assert len(seen) == len(set(seen)), f"peer {index} got an event twice"
            assert seen == sorted(seen), f"peer {index} got events out of order"
            assert seen == list(range(seen[0], last + 1)), f"peer {index} missed an event"
            await peer.client.disconnect()

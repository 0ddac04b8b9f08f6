"""Three processes on one SQLite file, one of them slow to see the others' commits: clients
re-created on another process mid-stream get every event once.

A client that leaves a node ahead and recovers on a node behind was handed, once that
node caught up, the packets it already had. ``LAGGING_RUNS`` repeats the whole scenario.
The lagging node emits nothing: its own commits would wake its follower.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests.cluster.harness import Listener, NodeProcess

RUNS = int(os.environ.get("LAGGING_RUNS", "1"))
EMITS = 300  # per emitter, one on each node ahead
CLIENTS = 10
TOTAL = 2 * EMITS
LAG = "1.0"  # seconds between the lagging node's looks at the others' commits


@asynccontextmanager
async def lagging_cluster(store: str) -> AsyncIterator[list[NodeProcess]]:
    """Two nodes that poll every 50 ms and one that looks only every ``LAG`` s."""
    nodes = [NodeProcess("n0", store), NodeProcess("n1", store),
             NodeProcess("n2", store, args=("--poll-interval", LAG))]
    try:
        for node in nodes:  # one at a time: the first creates the schema
            await node.start()
        yield nodes
    finally:
        await asyncio.gather(*(node.stop() for node in nodes))


async def one_run(store: str, seed: int) -> None:
    async with lagging_cluster(store) as nodes:
        listeners = [Listener(f"c{i}") for i in range(CLIENTS)]
        for i, listener in enumerate(listeners):
            await listener.connect(nodes[i % 3].url)

        async def emitter(node: NodeProcess) -> None:
            for start in range(0, EMITS, 30):
                await node.post("/emit", {"tag": node.name, "start": start, "count": 30})

        async def move_everyone() -> None:
            rng = random.Random(seed)
            for listener in listeners:
                assert listener.client is not None
                here = next(n for n in nodes if n.url == listener.client.connection_url)
                # mostly onto the lagging node, where the duplicates came from
                there = nodes[2] if here is not nodes[2] else rng.choice(nodes[:2])
                await listener.hop(there.url)

        await asyncio.wait_for(
            asyncio.gather(move_everyone(), *(emitter(n) for n in nodes[:2])), 120)

        async def everything_arrived() -> None:
            while any(len(lis.received) < TOTAL for lis in listeners):  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        await asyncio.wait_for(everything_arrived(), 60)
        # a duplicate comes when the lagging node catches up: wait until it has
        await nodes[0].post("/emit", {"tag": "end", "start": 0, "count": 1})

        async def end_arrived() -> None:
            while any(lis.received[-1][0] != "end" for lis in listeners):  # noqa: ASYNC110
                await asyncio.sleep(0.05)

        await asyncio.wait_for(end_arrived(), 60)
        for listener in listeners:
            assert listener.refusals == 0, f"{listener.name} was refused a recovery"
            events = [(tag, i) for tag, i, _ in listener.received]
            assert len(events) == len(set(events)) == TOTAL + 1, f"{listener.name}: a dup"
            await listener.close()


@pytest.mark.parametrize("run", range(RUNS))
async def test_clients_moving_to_a_lagging_node_get_each_event_once(
        tmp_path: Path, run: int) -> None:
    await one_run(f"sqlite+aiosqlite:///{tmp_path / 'cluster.db'}", seed=run)

"""Several server processes on one store: recovery on any node, one total order."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from tests._harness import until
from tests.cluster.conftest import ClusterStore
from tests.cluster.harness import Listener, cluster, offset_seq

EMITS_PER_NODE = int(os.environ.get("CLUSTER_EMITS_PER_NODE", "3400"))  # 3 nodes: > 10^4
CHUNK = 100
HOPS = 15


# three server processes and 10^4 events: 20-70 s on a loaded 2-core machine, more while
# the rest of the suite runs beside it on the xdist workers
@pytest.mark.timeout(300)
async def test_hopping_clients_see_every_event_once_in_one_order(
        cluster_store: ClusterStore) -> None:
    async with cluster(cluster_store.url, 3, cluster_store.args) as nodes:
        listeners = [Listener(f"c{i}") for i in range(6)]
        for i, listener in enumerate(listeners):
            await listener.connect(nodes[i % 3].url)

        async def emitter(node_index: int) -> None:
            node = nodes[node_index]
            for start in range(0, EMITS_PER_NODE, CHUNK):
                await node.post("/emit", {"tag": node.name, "start": start, "count": CHUNK})
                # pacing, not synchronisation: spread the traffic over the hops
                await asyncio.sleep(0.05)

        async def chaos() -> None:
            rng = random.Random(7)
            for _ in range(HOPS):
                listener = rng.choice(listeners)
                here = next(n for n in nodes if n.url == listener.client.connection_url)
                elsewhere = rng.choice([n for n in nodes if n is not here])
                await listener.hop(elsewhere.url)

        await asyncio.wait_for(
            asyncio.gather(chaos(), *(emitter(i) for i in range(3))), 300)
        total = 3 * EMITS_PER_NODE

        await until(lambda: all(len(lis.received) >= total for lis in listeners),
                    lambda: "every event: " + ", ".join(
                        f"{lis.name}={len(lis.received)}" for lis in listeners) + f" of {total}",
                    within=60)
        # one event more, after all others: whatever came before it (a duplicate
        # included) has reached a client when it arrives there
        await nodes[0].post("/emit", {"tag": "end", "start": 0, "count": 1})
        await until(lambda: all(("end", 0) in {(t, i) for t, i, _ in lis.received[total:]}
                                for lis in listeners), "the end marker")
        for listener in listeners:
            tags = [tag for tag, _, _ in listener.received]
            assert tags.count("end") == 1 and tags[-1] == "end", f"{listener.name}: {tags[-3:]}"
            del listener.received[-1]

        order = None
        for listener in listeners:
            assert listener.refusals == 0, f"{listener.name} was refused a recovery"
            events = [(tag, i) for tag, i, _ in listener.received]
            assert len(events) == total == len(set(events)), f"{listener.name}: gap or dup"
            seqs = [offset_seq(offset) for _, _, offset in listener.received]
            assert seqs == sorted(seqs) and len(set(seqs)) == total, "out of order"
            if order is None:
                order = listener.received
            assert listener.received == order, "clients disagree on the total order"
            per_node = {}
            for tag, i in events:
                assert per_node.get(tag, -1) < i, "one node's emits were reordered"
                per_node[tag] = i
        assert sum(lis.recoveries for lis in listeners) == HOPS
        for listener in listeners:
            await listener.close()

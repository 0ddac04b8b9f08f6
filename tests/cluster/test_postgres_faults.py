"""Server processes on PostgreSQL when the database misbehaves: a LISTEN connection
killed, the server restarted mid-traffic.

Restarting PostgreSQL disturbs everyone on the machine: the restart test is short, and
waits with ``pg_isready`` until the server is back whatever happens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from durable_adapter.stores.sql.postgres import LISTEN_APPLICATION_NAME, channel_name
from tests._postgres import POSTGRES_URL, execute, pg_ctl, wait_ready
from tests.cluster.conftest import ClusterStore
from tests.cluster.harness import Listener, cluster, offset_seq

pytestmark = pytest.mark.serial  # restarts the PostgreSQL every other test uses

WAIT = 20.0  # seconds for an expected delivery
SLOW_POLL = "30"  # seconds between top checks: deliveries within WAIT came by the doorbell


async def until(condition: Callable[[], bool], what: str, within: float = WAIT) -> float:
    """Wait for ``condition``; return the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def listen_name(schema: str) -> str:
    return f"{LISTEN_APPLICATION_NAME} {channel_name(schema)}"


async def listener_pids(schema: str) -> set[int]:
    engine = create_async_engine(POSTGRES_URL)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text(
                "SELECT pid FROM pg_stat_activity WHERE application_name = :name"),
                {"name": listen_name(schema)})
            return {row[0] for row in rows}
    finally:
        await engine.dispose()


def check_order(listener: Listener) -> None:
    events = [(tag, i) for tag, i, _ in listener.received]
    assert len(events) == len(set(events)), f"{listener.name}: a duplicate"
    seqs = [offset_seq(offset) for _, _, offset in listener.received]
    assert seqs == sorted(seqs), f"{listener.name}: out of order"


async def test_killed_listen_connection_catches_up(pg_cluster_store: ClusterStore) -> None:
    schema = pg_cluster_store.args[1]
    args = (*pg_cluster_store.args, "--poll-interval", SLOW_POLL)
    async with cluster(pg_cluster_store.url, 2, args) as (a, b):
        client = Listener("c")
        await client.connect(b.url)
        # with polls 30 s apart, a fast delivery shows b's doorbell works
        await a.post("/emit", {"tag": "before", "start": 0, "count": 5})
        await until(lambda: len(client.received) == 5, "events rung in by the doorbell")
        killed = await listener_pids(schema)
        assert len(killed) == 2

        # the schema is a plain identifier (t_<hex>): nothing to escape
        await execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      f"WHERE application_name = '{listen_name(schema)}'")
        # sent while nobody listens: only the catch-up after the reconnect finds them
        await a.post("/emit", {"tag": "while", "start": 0, "count": 50})
        took = await until(lambda: len(client.received) == 55, "the catch-up")

        # each node reconnects after its own random wait (under 1 s): b may be back first
        start = time.monotonic()
        while len(replaced := await listener_pids(schema) - killed) < 2:
            assert time.monotonic() - start < WAIT, f"LISTEN connections back: {replaced}"
            await asyncio.sleep(0.05)
        assert await listener_pids(schema) == replaced  # and none of the killed ones
        await a.post("/emit", {"tag": "after", "start": 0, "count": 5})
        await until(lambda: len(client.received) == 60, "the doorbell after the reconnect")
        check_order(client)
        print(f"caught up 50 events {took:.2f} s after the LISTEN connections were killed")
        await client.close()


@pytest.mark.timeout(240)
async def test_postgres_restart_loses_no_committed_packet(
        pg_cluster_store: ClusterStore) -> None:
    async with cluster(pg_cluster_store.url, 2, pg_cluster_store.args) as (a, b):
        clients = [Listener("on-a"), Listener("on-b")]
        await clients[0].connect(a.url)
        await clients[1].connect(b.url)
        stored: set[tuple[str, int]] = set()
        failed: set[tuple[str, int]] = set()
        restarted = asyncio.Event()
        after_restart = 0

        async def emitter() -> None:
            nonlocal after_restart
            start = 0
            while after_restart < 200:  # keep going until traffic flows again
                node = a if start % 40 == 0 else b
                # failed emits are reported, not raised: the node must answer
                answer = await node.post("/emit", {"tag": "t", "start": start, "count": 20,
                                                   "tolerate": True}, within=60)
                bad = set(answer["failed"])
                for i in range(start, start + 20):
                    (failed if i in bad else stored).add(("t", i))
                if restarted.is_set() and not bad:
                    after_restart += 20
                start += 20
                await asyncio.sleep(0.02)

        async def restart() -> None:
            await until(lambda: len(stored) >= 200, "traffic before the restart", 60)
            try:
                await asyncio.to_thread(pg_ctl, "restart")
            finally:
                await asyncio.to_thread(wait_ready)
            restarted.set()

        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(emitter(), restart()), 180)
        took = await until(lambda: all(stored <= {(t, i) for t, i, _ in c.received}
                                       for c in clients), "every stored event", 60)
        for client in clients:
            got = {(t, i) for t, i, _ in client.received}
            assert got <= stored | failed  # a failed emit may still have committed
            check_order(client)
        assert clients[0].received == clients[1].received
        print(f"{len(stored)} stored, {len(failed)} failed during the restart; "
              f"{time.monotonic() - started:.1f} s; settled {took:.2f} s after the last emit")
        for client in clients:
            await client.close()

"""Recoveries, refusals, appends, sessions, follower lag and the cleanup worker move
their metrics (real SQLite stores, in-process servers, real clients)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from durable_adapter import cleanup
from durable_adapter.migrate import migrate
from durable_adapter.stores.base import NewPacket, Session
from durable_adapter.stores.sql import SQLStore
from tests._harness import WAIT, serving

from ._servers import Client, make_server, sqlite_url, wait_for
from .conftest import sample


async def test_forced_recovery_and_forged_pid_move_the_right_counters(
        registry: Any, tmp_path: Path) -> None:
    sio = make_server(sqlite_url(tmp_path))
    async with serving(sio) as url:
        client = await Client().connect(url)
        await sio.emit("tick", 1)
        await client.ticks.wait_for(1)
        state = await client.drop(sio)
        assert sample(registry, "durable_adapter_sessions_saved_total") == 1
        await sio.emit("tick", 2)
        await sio.emit("tick", 3)

        back = await Client(state).connect(url)
        await back.ticks.wait_for(2)
        assert back.sio.is_recovered()
        recovered = {"namespace": "/", "outcome": "recovered", "reason": ""}
        assert sample(registry, "durable_adapter_recoveries_total", **recovered) == 1
        assert sample(registry, "durable_adapter_recovered_packets_count") == 1
        assert sample(registry, "durable_adapter_recovered_packets_sum") == 2
        assert sample(registry, "durable_adapter_recovery_seconds_count") == 1
        assert sample(registry, "durable_adapter_sessions_claimed_total") == 1

        # a well-formed pid nobody was given, and one that is not a pid at all
        forged = await Client().connect(url, auth={"pid": "A" * 32})
        assert not forged.sio.is_recovered()
        malformed = await Client().connect(url, auth={"pid": "not a pid!"})
        refused = {"namespace": "/", "outcome": "refused"}
        assert sample(registry, "durable_adapter_recoveries_total", **refused,
                      reason="unknown_session") == 1
        assert sample(registry, "durable_adapter_recoveries_total", **refused,
                      reason="malformed") == 1
        # refusals are not recoveries: the recovered series did not move
        assert sample(registry, "durable_adapter_recoveries_total", **recovered) == 1
        assert sample(registry, "durable_adapter_recovered_packets_count") == 1
        assert sample(registry, "durable_adapter_sessions_claimed_total") == 1
        assert sample(registry, "durable_adapter_sockets", namespace="/") == 3
        for peer in (back, forged, malformed):
            await peer.sio.disconnect()


async def test_append_moves_the_histograms(registry: Any, tmp_path: Path) -> None:
    sio = make_server(sqlite_url(tmp_path))
    async with serving(sio) as url:
        client = await Client().connect(url)
        await asyncio.gather(*(sio.emit("tick", i) for i in range(20)))
        await client.ticks.wait_for(20)
        assert sample(registry, "durable_adapter_append_seconds_count") == 20
        assert sample(registry, "durable_adapter_append_seconds_sum") > 0
        # every packet was written by some transaction, several per transaction at best
        assert sample(registry, "durable_adapter_append_batch_packets_sum") == 20
        assert 1 <= sample(registry, "durable_adapter_append_batch_packets_count") <= 20
        assert sample(registry, "durable_adapter_store_errors_total", operation="append") == 0
        await client.sio.disconnect()


async def test_follower_lag_shows_packets_this_node_has_not_delivered(
        registry: Any, tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await migrate(url)
    # this node only looks for other nodes' packets every 60 s; another node appends
    sio = make_server(SQLStore(url, poll_interval=60))
    async with serving(sio) as server_url:
        client = await Client().connect(server_url)
        await wait_for(lambda: sample(registry, "durable_adapter_follower_lag_packets") == 0
                       and registry.get_sample_value("durable_adapter_follower_lag_packets")
                       is not None, "the first lag probe")
        other = SQLStore(url)
        await other.open()
        try:
            for i in range(3):
                await other.append(NewPacket(namespace="/", data=["tick", i]))
        finally:
            await other.close()
        await wait_for(lambda: sample(registry, "durable_adapter_follower_lag_packets") == 3,
                       "the probe to see 3 undelivered packets")
        await wait_for(lambda: sample(registry, "durable_adapter_follower_lag_seconds") > 0,
                       "the age of the oldest undelivered packet")
        assert client.ticks.items == []  # indeed not delivered
        await client.sio.disconnect()


async def test_cleanup_pass_moves_the_worker_metrics(registry: Any, tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    await migrate(url)
    store = SQLStore(url, auto_migrate=False)
    await store.open()
    try:
        for i in range(5):
            await store.append(NewPacket(namespace="/", data=["tick", i]))
        now = time.time()
        await store.save_sessions([Session(
            pid_hash="h" * 64, namespace="/", sid="gone", rooms=(), data={},
            epoch=store.epoch, start_seq=0, position=5, last_sent_seq=None,
            disconnected_at=now - 10, expires_at=now - 1)])
        # absent, not 0, before a pass: servers and standby workers report none
        assert registry.get_sample_value(
            "durable_adapter_cleanup_last_success_timestamp_seconds") is None
        before = time.time()
        await wait_for(lambda: time.time() > now + 0.01, "the packets to age past retention")
        summary = await asyncio.wait_for(cleanup.run(
            url, once=True, retention=0.01, max_disconnection_duration=0.01), WAIT)
        assert (summary.sessions, summary.packets) == (1, 5)
        assert sample(registry, "durable_adapter_cleanup_removed_total", kind="sessions") == 1
        assert sample(registry, "durable_adapter_cleanup_removed_total", kind="packets") == 5
        assert sample(registry, "durable_adapter_cleanup_last_success_timestamp_seconds") \
            >= before
        assert sample(registry, "durable_adapter_retained_packets") == 0
        await store.append(NewPacket(namespace="/", data=["tick", 5]))
        await cleanup.run(url, once=True, retention=3600, max_disconnection_duration=60)
        assert sample(registry, "durable_adapter_retained_packets") == 1
        assert sample(registry, "durable_adapter_cleanup_removed_total", kind="packets") == 5
    finally:
        await store.close()

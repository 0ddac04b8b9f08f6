"""``durable_adapter.Client`` (the sync client) against a sync server node process."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import durable_adapter
from durable_adapter import RecoveryFailure
from tests._harness import until
from tests.cluster.conftest import open_cluster_store
from tests.cluster.harness import released
from tests.sync._nodes import SyncNode, sync_nodes


def sever(client: durable_adapter.Client) -> None:
    """Cut the client's websocket as a network loss would: no CLOSE, no DISCONNECT."""
    client.eio.ws.sock.shutdown(socket.SHUT_RDWR)


async def emit(node: SyncNode, start: int, stop: int) -> None:
    await node.post("/emit", {"start": start, "stop": stop, "to": "lobby"})


def recording(got: list[Any], **options: Any) -> durable_adapter.Client:
    client = durable_adapter.Client(reconnection_delay=0.1, reconnection_delay_max=0.2,
                                    **options)
    client.on("tick", got.append)
    return client


async def test_sync_client_recovers_by_itself_then_from_saved_state(tmp_path: Path) -> None:
    async with open_cluster_store("sqlite", tmp_path) as store, \
            sync_nodes(store.url, 1) as (node,):
        got: list[Any] = []
        client = recording(got)
        await asyncio.to_thread(client.connect, node.url, transports=["websocket"],
                                auth={"user": "ada"})
        sid = client.get_sid()
        try:
            await emit(node, 0, 3)
            await until(lambda: len(got) >= 3, "the first 3 ticks")
            sever(client)
            await released(node.url, sid)
            await emit(node, 3, 60)  # missed while away
            await until(lambda: client.connected and len(got) >= 60,
                        lambda: f"60 ticks after the reconnect, got {len(got)}")
            assert client.get_sid() == sid and client.is_recovered()
            assert got == list(range(60))  # in order, once each, offsets stripped
            seen = await node.connect_of(sid)
            assert seen is not None and seen["recovered"] and seen["session"] == {"user": "ada"}

            # another process resumes from what this one saved
            state = client.recovery_state()
            client.reconnection = False
            sever(client)
            await released(node.url, sid)
        finally:
            await asyncio.to_thread(client.disconnect)
        await emit(node, 60, 70)
        later: list[Any] = []
        successor = recording(later, reconnection=False)
        successor.load_recovery_state(state)
        await asyncio.to_thread(successor.connect, node.url, transports=["websocket"])
        try:
            await until(lambda: len(later) >= 10, "the 10 ticks missed meanwhile")
            assert successor.get_sid() == sid and successor.is_recovered()
            assert later == list(range(60, 70))
        finally:
            await asyncio.to_thread(successor.disconnect)


async def test_deliberate_disconnect_leaves_nothing_to_recover(tmp_path: Path) -> None:
    async with sync_nodes("memory://", 1) as (node,):
        got: list[Any] = []
        client = recording(got, reconnection=False)
        await asyncio.to_thread(client.connect, node.url, transports=["websocket"])
        sid = client.get_sid()
        await emit(node, 0, 2)
        await until(lambda: len(got) >= 2, "2 ticks")
        state = client.recovery_state()
        await asyncio.to_thread(client.disconnect)
        await released(node.url, sid)
        assert client.recovery_state() == {}

        again = recording([], reconnection=False)
        again.load_recovery_state(state)
        await asyncio.to_thread(again.connect, node.url, transports=["websocket"])
        try:
            assert again.get_sid() != sid and not again.is_recovered()
            seen = await node.connect_of(again.get_sid())
            assert seen is not None, "no connect recorded"
            assert seen["failure"] == RecoveryFailure.UNKNOWN_SESSION.value, seen
        finally:
            await asyncio.to_thread(again.disconnect)

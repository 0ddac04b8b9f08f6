"""Delivery on one node: application code it runs, payloads it cannot send, shutdown."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from durable_adapter.stores.base import NewPacket
from tests._harness import WAIT
from tests.conformance.conftest import Peer, StoreSpec, running

PROMPT = 3.0  # seconds: well under the 10 s an emit waits for a stalled delivery
DEEP = 600  # nesting python-socketio cannot encode (RecursionError), JSON can store


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


async def joined(node: Any, *peers: Peer) -> None:
    for peer in peers:
        await peer.connect(node.url)
        await peer.client.call("join", timeout=WAIT)


def join_lobby(node: Any) -> None:
    @node.sio.on("join")
    async def join(sid: str) -> None:
        await node.sio.enter_room(sid, "lobby")


@pytest.mark.parametrize("store", ["memory", "sqlite"], indirect=True)
async def test_a_disconnect_handler_that_emits_during_delivery_stalls_nothing(
        store: StoreSpec) -> None:
    async with running(store) as node:
        reasons: list[Any] = []

        @node.sio.on("disconnect")
        async def disconnect(sid: str, reason: Any) -> None:
            reasons.append(reason)
            await node.sio.emit("tick", f"{sid} left")  # what a chat does

        watcher, victim = Peer(), Peer()
        await watcher.connect(node.url)
        await victim.connect(node.url)
        victim_sid = victim.sid()
        # the victim stopped answering pings: python-engineio finds out at the next send
        # to it, which is the delivery's, and runs the disconnect chain inside that send
        eio_sid = node.sio.manager.eio_sid_from_sid(victim_sid, "/")
        node.sio.eio.sockets[eio_sid].last_ping = time.time() - 3600
        started = time.monotonic()
        for i in range(5):
            # no wait_for(PROMPT) here: python-engineio swallows the cancellation inside
            # the disconnect handler, so a stalled emit would still seem to return
            await asyncio.wait_for(node.sio.emit("tick", i), WAIT)
        got = await watcher.inbox["/"].wait_for(6, within=WAIT)
        assert time.monotonic() - started < PROMPT, "delivery stalled"
        assert got == [0, f"{victim_sid} left", 1, 2, 3, 4]
        assert reasons == [node.sio.reason.PING_TIMEOUT]
        await victim.close()
        await watcher.client.disconnect()


@pytest.mark.parametrize("store", ["memory", "sqlite", "postgres"], indirect=True)
async def test_a_payload_that_cannot_be_sent_fails_only_its_own_emit(store: StoreSpec) -> None:
    async with running(store) as node:
        join_lobby(node)
        live, leaving = Peer(), Peer()
        await joined(node, live, leaving)
        state = await leaving.drop(node)  # recovers across the emits below

        started = time.monotonic()
        results = await asyncio.gather(
            node.sio.emit("tick", nested(DEEP), to="lobby"),
            *(node.sio.emit("tick", i, to="lobby") for i in range(30)),
            return_exceptions=True)
        assert isinstance(results[0], RecursionError)  # as python-socketio's own emit
        assert results[1:] == [None] * 30
        assert time.monotonic() - started < PROMPT
        assert await live.inbox["/"].wait_for(30, within=PROMPT) == list(range(30))

        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered()
        assert await again.inbox["/"].wait_for(30) == list(range(30))
        await node.sio.emit("tick", "end", to="lobby")
        assert (await again.inbox["/"].wait_for(31))[30:] == ["end"]
        await again.client.disconnect()
        await live.client.disconnect()


@pytest.mark.parametrize("store", ["memory", "sqlite", "postgres"], indirect=True)
async def test_a_stored_packet_that_cannot_be_sent_stops_neither_delivery_nor_replay(
        store: StoreSpec) -> None:
    """Stored by a node without the check above (an older version): skipped, alone."""
    async with running(store) as node:
        join_lobby(node)
        live, leaving = Peer(), Peer()
        await joined(node, live, leaving)
        state = await leaving.drop(node)

        await node.sio.store.append(
            NewPacket(namespace="/", data=["tick", nested(DEEP)], rooms=("lobby",)))
        for i in range(30):
            await asyncio.wait_for(node.sio.emit("tick", i, to="lobby"), PROMPT)
        assert await live.inbox["/"].wait_for(30, within=PROMPT) == list(range(30))

        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered()
        assert await again.inbox["/"].wait_for(30) == list(range(30))
        await again.client.disconnect()
        await live.client.disconnect()


@pytest.mark.parametrize("store", ["sqlite", "postgres"], indirect=True)
def test_shutdown_saves_each_socket_at_exactly_what_it_was_sent(store: StoreSpec) -> None:
    """Emits go on while the server shuts down: every client recovers on the next server,
    with each stored event once, in order (none refused as 'offset ahead')."""

    async def first_life() -> dict[str, Any]:
        async with running(store) as node:
            peers = [Peer() for _ in range(5)]
            for peer in peers:
                await peer.connect(node.url)
            stored: list[int] = []
            stopping = asyncio.Event()

            async def emitter() -> None:
                i = 0
                while not stopping.is_set():
                    try:
                        await node.sio.emit("tick", i)
                    except Exception:  # the store closed under this emit
                        return
                    stored.append(i)
                    i += 1

            task = asyncio.create_task(emitter())
            await peers[-1].inbox["/"].wait_for(20)  # traffic flows to every socket
            await node.sio.shutdown()
            stopping.set()
            await asyncio.wait_for(task, WAIT)
            states = [await peer.drop(node) for peer in peers]
            return {"states": states, "stored": stored,
                    "received": [list(peer.received()) for peer in peers]}

    async def second_life(before: dict[str, Any]) -> None:
        async with running(store) as node:
            for state, received in zip(before["states"], before["received"], strict=True):
                again = Peer()
                await again.connect(node.url, state)
                assert again.client.is_recovered(), node.last["failure"]
                await node.sio.emit("tick", "end", to=again.sid())
                after = await again.inbox["/"].wait_for(1)
                while after[-1] != "end":
                    after = await again.inbox["/"].wait_for(len(after) + 1)
                seen = received + after[:-1]
                assert seen == sorted(set(seen)), "a duplicate or a reordering"
                assert set(before["stored"]) <= set(seen), "a stored event never arrived"
                await again.client.disconnect()

    # two event loops: only the database carries over, as across a restart
    before = asyncio.run(first_life())
    assert len(before["stored"]) >= 20
    asyncio.run(second_life(before))

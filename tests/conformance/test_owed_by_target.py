"""A recovery reads what its socket may be owed, and only that, on every store.

What the rest of the application emitted meanwhile (other rooms, other namespaces, other
sids) neither reaches the client nor counts against ``max_replay_packets``; the room log
still decides what a socket in a room is owed; a purge racing a restore still gives a
complete replay or a refusal. ``history_cache_bytes=0`` makes a replay read the store's
target index; with the default the node's recent window serves it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from durable_adapter import RecoveryFailure
from durable_adapter._recovery import DEFAULT_HISTORY_CACHE_BYTES
from durable_adapter.stores.base import NewPacket, Store
from tests._harness import WAIT
from tests.conformance.conftest import Node, Peer, StoreSpec, running
from tests.conformance.test_room_history import _received_until_end, _rooms_handlers

UNRELATED = 100_000  # packets sent elsewhere while the socket is away
APPEND_CHUNK = 5_000  # appends awaited together (the store batches them)
CACHES = [pytest.param(0, id="from-the-store"),
          pytest.param(DEFAULT_HISTORY_CACHE_BYTES, id="from-recent-memory")]


async def _append_all(store: Store, packets: list[NewPacket]) -> None:
    for start in range(0, len(packets), APPEND_CHUNK):
        await asyncio.wait_for(asyncio.gather(*(
            store.append(packet) for packet in packets[start:start + APPEND_CHUNK])), WAIT * 3)


def _unrelated(count: int, tag: str) -> list[NewPacket]:
    """Packets the away socket is not owed: another room, another namespace, other sids,
    and the namespace except a room it is in."""
    kinds = [
        {"namespace": "/", "rooms": ("b",)},
        {"namespace": "/other", "rooms": ()},
        {"namespace": "/other", "rooms": ("a",)},
        {"namespace": "/", "rooms": ("someone-else",)},
        {"namespace": "/", "rooms": (), "except_rooms": ("a",)},
    ]
    return [NewPacket(data=["tick", f"{tag}{i}"], **kinds[i % len(kinds)])  # type: ignore[arg-type]
            for i in range(count)]


async def _join(node: Node, peer: Peer, *rooms: str) -> None:
    for room in rooms:
        await peer.client.call("join", room, timeout=WAIT)


async def _delivered_all(node: Node) -> None:
    """Until the node delivered everything stored (what a restore replays up to)."""
    top = (await node.sio.store.bounds()).top
    deadline = time.monotonic() + WAIT * 3
    while node.sio.durable_manager.delivered < top:
        assert time.monotonic() < deadline, "the node did not catch up"
        await asyncio.sleep(0.02)


def _keeping_all(spec: StoreSpec) -> StoreSpec:
    """The store, keeping every packet of the test (Redis trims its stream at maxlen)."""
    if isinstance(spec, str) and spec.startswith("redis"):
        return f"{spec}{'&' if '?' in spec else '?'}maxlen={UNRELATED * 2}"
    return spec


async def test_a_socket_in_a_room_recovers_exactly_its_packets_among_100000_others(
        store_url: StoreSpec) -> None:
    # the replay is read from the store's target index, not from this node's memory
    # a loaded machine takes a while to store 10^5 packets: the session must outlive it
    async with running(_keeping_all(store_url), history_cache_bytes=0,
                       max_disconnection_duration=600) as node:
        _rooms_handlers(node)
        peer = Peer()
        await peer.connect(node.url)
        await _join(node, peer, "a")
        sid = peer.sid()
        state = await peer.drop(node)

        owed: list[Any] = []
        unrelated = _unrelated(UNRELATED, "x")
        step = UNRELATED // 4
        for part in range(4):  # owed packets between the others, more than a page of them
            for i in range(300):
                data = f"a-{part}-{i}"
                await node.sio.emit("tick", data, to="a")
                owed.append(data)
            await node.sio.emit("tick", f"ns-{part}")
            await node.sio.emit("tick", f"sid-{part}", to=sid)
            owed += [f"ns-{part}", f"sid-{part}"]
            await _append_all(node.sio.store, unrelated[part * step:(part + 1) * step])
        await _delivered_all(node)

        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered(), node.last["failure"]
        assert await _received_until_end(node, again, len(owed)) == owed
        await again.client.disconnect()


@pytest.mark.parametrize("cache", CACHES)
async def test_the_cap_counts_the_packets_a_socket_is_owed(store_url: StoreSpec,
                                                           cache: int) -> None:
    async with running(store_url, max_replay_packets=5, history_cache_bytes=cache) as node:
        _rooms_handlers(node)
        few, many = Peer(), Peer()
        for peer, room in ((few, "few"), (many, "many")):
            await peer.connect(node.url)
            await _join(node, peer, room, "a")  # "a": not owed what skips it
        states = [await few.drop(node), await many.drop(node)]
        await _append_all(node.sio.store, _unrelated(1000, "x"))
        for i in range(6):  # one over the cap for "many"
            await node.sio.emit("tick", f"m{i}", to="many")
        for i in range(5):  # exactly the cap for "few"
            await node.sio.emit("tick", f"f{i}", to="few")
        await _delivered_all(node)

        again = Peer()
        await again.connect(node.url, states[0])
        assert again.client.is_recovered(), node.last["failure"]
        assert await _received_until_end(node, again, 5) == [f"f{i}" for i in range(5)]
        await again.client.disconnect()

        refused = Peer()
        await refused.connect(node.url, states[1])
        assert not refused.client.is_recovered()
        assert node.last["failure"] is RecoveryFailure.REPLAY_TOO_LARGE
        await refused.client.disconnect()


@pytest.mark.parametrize("cache", CACHES)
async def test_a_packet_to_the_namespace_except_a_room_skips_its_members(
        store_url: StoreSpec, cache: int) -> None:
    async with running(store_url, history_cache_bytes=cache) as node:
        _rooms_handlers(node)
        peer = Peer()
        await peer.connect(node.url)
        await _join(node, peer, "a")
        sid = peer.sid()
        state = await peer.drop(node)
        await node.sio.emit("tick", "all-but-a", skip_sid="a")
        await node.sio.emit("tick", "all-but-z", skip_sid="z")
        await node.sio.emit("tick", "all-but-me", skip_sid=sid)
        await node.sio.emit("tick", "a-but-me", to="a", skip_sid=sid)
        await node.sio.emit("tick", "a-but-z", to="a", skip_sid="z")
        await node.sio.emit("tick", "a-and-b-but-b", to=["a", "b"], skip_sid="b")
        await node.sio.emit("tick", "b-and-c-but-a", to=["b", "c"], skip_sid="a")

        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered()
        assert await _received_until_end(node, again, 3) == [
            "all-but-z", "a-but-z", "a-and-b-but-b"]
        await again.client.disconnect()


@pytest.mark.parametrize("cache", CACHES)
async def test_rooms_joined_and_left_before_the_drop_are_honoured(
        store_url: StoreSpec, cache: int) -> None:
    async with running(store_url, history_cache_bytes=cache) as node:
        _rooms_handlers(node)
        peer = Peer()
        await peer.connect(node.url)
        await node.sio.emit("tick", "first")
        await peer.inbox["/"].wait_for(1)
        offset = peer.client.recovery_state()["/"]["offset"]
        await _join(node, peer, "x", "y")
        await node.sio.emit("tick", "x-while-in", to="x")
        await peer.client.call("leave", "x", timeout=WAIT)
        await node.sio.emit("tick", "x-after-leaving", to="x")
        await node.sio.emit("tick", "y-while-in", to="y")
        assert await peer.inbox["/"].wait_for(3) == ["first", "x-while-in", "y-while-in"]
        state = await peer.drop(node)
        await node.sio.emit("tick", "x-while-away", to="x")
        await node.sio.emit("tick", "y-while-away", to="y")

        state["/"]["offset"] = offset  # owed everything since "first", by the room log
        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered()
        assert await _received_until_end(node, again, 3) == [
            "x-while-in", "y-while-in", "y-while-away"]
        await again.client.disconnect()


@pytest.mark.parametrize("cache", CACHES)
async def test_a_socket_in_several_rooms_gets_them_merged_in_offset_order(
        store_url: StoreSpec, cache: int) -> None:
    async with running(store_url, history_cache_bytes=cache) as node:
        _rooms_handlers(node)
        peer = Peer()
        await peer.connect(node.url)
        await _join(node, peer, "a", "b", "c")
        state = await peer.drop(node)
        expected: list[Any] = []
        for i in range(40):
            room = "abcd"[i % 4]
            await node.sio.emit("tick", f"{room}{i}", to=room)
            if room != "d":
                expected.append(f"{room}{i}")
            if i % 7 == 0:
                await node.sio.emit("tick", f"ns{i}")
                expected.append(f"ns{i}")
            if i % 5 == 0:  # one packet to two of its rooms: once
                await node.sio.emit("tick", f"ab{i}", to=["a", "b"])
                expected.append(f"ab{i}")

        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered()
        assert await _received_until_end(node, again, len(expected)) == expected
        await again.client.disconnect()


PURGE_ROUNDS = 25


async def test_a_purge_racing_restores_gives_complete_or_refused(store_url: StoreSpec) -> None:
    async with running(store_url, history_cache_bytes=0) as node:
        _rooms_handlers(node)
        store = node.sio.store
        outcomes: set[str] = set()
        for round_ in range(PURGE_ROUNDS):
            peer = Peer()
            await peer.connect(node.url)
            await _join(node, peer, "a")
            state = await peer.drop(node)
            owed = [f"{round_}-{i}" for i in range(30)]
            for i, data in enumerate(owed):
                await node.sio.emit("tick", data, to="a")
                if i % 3 == 0:
                    await store.append(NewPacket(namespace="/", data=["tick", "b"],
                                                 rooms=("b",)))
            await _delivered_all(node)

            again = Peer()
            restore = asyncio.ensure_future(again.connect(node.url, state))
            # a real purge of everything stored so far, racing the restore's reads from
            # before its first read to after its last
            await asyncio.sleep(round_ % 6 * 0.003)
            await asyncio.wait_for(store.purge(now=time.time() + 1, retention=0,
                                               batch_size=7), WAIT)
            await asyncio.wait_for(restore, WAIT * 2)
            if again.client.is_recovered():
                outcomes.add("recovered")
                assert await _received_until_end(node, again, len(owed)) == owed
            else:
                outcomes.add("refused")
                assert node.last["failure"] is RecoveryFailure.NOT_RETAINED
            await again.client.disconnect()
        # each round ended one way or the other, never in between; both happen here
        assert outcomes

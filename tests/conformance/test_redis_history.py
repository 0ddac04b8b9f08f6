"""A Redis that lost or trimmed its history refuses old offsets, through the server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from durable_adapter import RecoveryFailure
from tests._redis import REDIS_URL, delete_prefix, redis_prefix, store_url
from tests.conformance.conftest import Node, Peer, running


@pytest.fixture
def prefix() -> Iterator[str]:
    with redis_prefix() as name:
        yield name


async def _missed_then_back(node: Node, lose: str) -> Peer:
    """A client misses events, the history is lost as ``lose`` says, the client returns."""
    peer = Peer()
    await peer.connect(node.url)
    await node.sio.emit("tick", 0)
    await peer.inbox["/"].wait_for(1)
    state = await peer.drop(node)
    for i in range(1, 6):
        await node.sio.emit("tick", i)
    prefix = node.sio.store.keys.prefix  # type: ignore[attr-defined]
    if lose == "everything":  # FLUSHALL, or a restart without persistence
        delete_prefix(prefix)
    else:
        with redis.Redis.from_url(REDIS_URL) as admin:
            keys = node.sio.store.keys  # type: ignore[attr-defined]
            admin.delete(keys.packets, keys.epoch, keys.top)
    again = Peer()
    await again.connect(node.url, state)
    return again


@pytest.mark.parametrize(("lose", "failure"), [
    ("everything", RecoveryFailure.UNKNOWN_SESSION),
    ("history only", RecoveryFailure.HISTORY_RESET),
])
async def test_a_lost_history_refuses_old_offsets_and_goes_on(
        prefix: str, lose: str, failure: RecoveryFailure) -> None:
    async with running(store_url(prefix)) as node:
        again = await _missed_then_back(node, lose)
        assert not again.client.is_recovered()
        assert node.last["recovered"] is False
        assert node.last["failure"] is failure
        assert again.received() == []  # nothing of the old history, nothing misread
        # the node follows the new history: live emits still arrive
        await node.sio.emit("tick", "after")
        assert await again.inbox["/"].wait_for(1) == ["after"]
        await again.client.disconnect()


async def test_an_offset_older_than_the_first_entry_is_not_retained(prefix: str) -> None:
    async with running(store_url(prefix, maxlen=10)) as node:
        peer = Peer()
        await peer.connect(node.url)
        await node.sio.emit("tick", 0)
        await peer.inbox["/"].wait_for(1)
        state = await peer.drop(node)
        for i in range(1, 500):
            await node.sio.emit("tick", i)
        again = Peer()
        await again.connect(node.url, state)
        assert not again.client.is_recovered()
        assert node.last["failure"] is RecoveryFailure.NOT_RETAINED
        assert again.received() == []
        await again.client.disconnect()


async def test_a_node_started_on_a_wiped_redis_reaches_the_clients_of_running_nodes(
        prefix: str) -> None:
    """The new node starts the new history at seq 0, below the running node's position:
    the running node must start over with it and deliver its emits, not drop them."""
    url = store_url(prefix, block_ms=200)
    async with running(url) as first:
        peer = Peer()
        await peer.connect(first.url)
        for i in range(5):
            await first.sio.emit("tick", i)
        await peer.inbox["/"].wait_for(5)
        delete_prefix(prefix)  # FLUSHALL, or a restart without persistence
        async with running(url) as second:
            for i in range(3):
                await second.sio.emit("tick", f"new {i}")
            await peer.inbox["/"].wait_for(8)
        assert peer.received() == [0, 1, 2, 3, 4, "new 0", "new 1", "new 2"]
        await first.sio.emit("tick", "from the running node")
        await peer.inbox["/"].wait_for(9)
        await peer.client.disconnect()


async def test_rooms_joined_before_a_redis_history_reset_count_in_the_new_one(
        prefix: str) -> None:
    """A replay sends a room's packets only to sockets that were in the room at their
    seq; a socket that joined before the reset is in it throughout the new history."""
    url = store_url(prefix, block_ms=200)
    async with running(url) as first:
        peer = Peer()
        await peer.connect(first.url)
        for i in range(5):
            await first.sio.emit("tick", i)
        await peer.inbox["/"].wait_for(5)
        await first.sio.enter_room(peer.sid(), "lobby")  # joined after old seq 5
        delete_prefix(prefix)
        async with running(url) as second:
            await second.sio.emit("tick", "new 0", to="lobby")
            await peer.inbox["/"].wait_for(6)
            state = await peer.drop(first)
            for i in (1, 2):
                await second.sio.emit("tick", f"new {i}", to="lobby")
            again = Peer()
            await again.connect(first.url, state)
            assert again.client.is_recovered()
            assert await again.inbox["/"].wait_for(2) == ["new 1", "new 2"]
            await again.client.disconnect()

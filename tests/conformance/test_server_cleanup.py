"""What a server cleans up by itself: a clean disconnect's session on every store, and
a memory store's expired sessions and packets (nothing outside the process can)."""

from __future__ import annotations

from durable_adapter.stores.memory import MemoryStore
from tests._harness import WAIT, until
from tests.conformance.conftest import Node, Peer, StoreSpec, running


def _join_handler(node: Node) -> None:
    @node.sio.on("join")
    async def join(sid: str, room: str) -> None:
        await node.sio.enter_room(sid, room)


async def _stored(node: Node, pid_hash: str) -> bool:
    return ("/", pid_hash) in await node.sio.store.owners([("/", pid_hash)])


async def test_a_recovered_socket_that_leaves_cleanly_leaves_no_session(
        store_url: StoreSpec) -> None:
    async with running(store_url) as node:
        _join_handler(node)
        peer = Peer()
        await peer.connect(node.url)
        await peer.client.call("join", "room", timeout=WAIT)
        await node.sio.emit("tick", 1, to="room")
        await peer.inbox["/"].wait_for(1)
        sid = peer.sid()
        pid_hash = node.sio.durable_manager.sockets.get("/", sid).pid_hash
        state = await peer.drop(node)
        assert await _stored(node, pid_hash)  # dropped: kept for its recovery

        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered() and again.sid() == sid
        await again.client.disconnect()  # on purpose: not recoverable any more
        await node.wait_gone(sid)
        assert not await _stored(node, pid_hash), "the session outlived a clean disconnect"


async def test_the_memory_store_purges_expired_sessions_and_packets_by_itself() -> None:
    store = MemoryStore()
    window = 1.0  # seconds: max_disconnection_duration
    async with running(store, max_disconnection_duration=window) as node:
        cleanup = node.sio.durable_manager.cleanup
        assert cleanup is not None
        gone = Peer()
        await gone.connect(node.url)
        for n in range(5):
            await node.sio.emit("tick", n)
        await gone.inbox["/"].wait_for(5)
        await gone.drop(node)  # never comes back
        assert len(store._sessions) == 1 and len(store._packets) == 5

        await until(lambda: not store._sessions and not store._packets,
                    lambda: f"{len(store._sessions)} sessions and {len(store._packets)} "
                            "packets still held",
                    within=WAIT + cleanup.settings.effective_retention)
        assert (await store.bounds()).purged_through == 5
        assert cleanup.active and cleanup.passes >= 1

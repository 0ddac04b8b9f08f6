"""The restore path under refusals, probes and races (issue 14: items 2, 3, 4a-4c, 4g, 4h).

Raw Engine.IO frames (tests/_raw.py) send what a well-behaved client never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import durable_adapter
from durable_adapter import RecoveryFailure
from durable_adapter.exceptions import StoreError
from durable_adapter.stores.memory import MemoryStore
from tests._harness import WAIT, drop_transport, serving
from tests._raw import RawSocket, connect_frame, payload
from tests.conformance.conftest import Peer, StoreSpec, away_after_one, make_store, running


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def bookkeeping(sio: durable_adapter.AsyncServer) -> dict[str, int]:
    """Sizes of everything the server and its manager keep per socket."""
    manager = sio.durable_manager
    return {
        "sockets kept": len(manager.sockets), "holds": len(manager.holds),
        "restores": sio._restorer.pending if sio._restorer else 0,
        "pending": sum(len(sids) for sids in  # python-socketio 5.18+
                       getattr(manager, "pending_connect", {}).values()),
        "sockets": len(manager.rooms.get("/", {}).get(None, {})),
    }


async def drop(peer: Peer, sio: durable_adapter.AsyncServer) -> dict[str, Any]:
    """An abrupt transport close, once the server has saved the session."""
    sid = peer.sid()
    await drop_transport(peer.client)
    await until(lambda: not sio.manager.is_connected(sid, "/"), "still connected")
    await peer.close()
    return peer.client.recovery_state()


@contextlib.asynccontextmanager
async def gated(store: StoreSpec, **server_options: Any
                ) -> AsyncIterator[tuple[durable_adapter.AsyncServer, str, dict[str, bool]]]:
    """A server whose connect handler accepts only while ``gate["open"]``."""
    sio = durable_adapter.AsyncServer(
        store=make_store(store), async_mode="aiohttp",
        connection_state_recovery={"max_disconnection_duration": 30}, **server_options)
    gate = {"open": True}

    @sio.on("connect")
    async def connect(sid: str, environ: Any, auth: Any) -> bool:
        return gate["open"]

    async with serving(sio) as url:
        yield sio, url, gate


# -- item 2: refused CONNECTs ---------------------------------------------------------

@pytest.mark.parametrize("always_connect", [False, True])
async def test_refused_connects_leave_nothing_behind_and_keep_the_session(
        always_connect: bool) -> None:
    async with gated("memory://", always_connect=always_connect) as (sio, url, gate):
        peer = Peer()
        await peer.connect(url)
        sid = peer.sid()
        state = await drop(peer, sio)
        await sio.emit("tick", "missed")
        baseline = bookkeeping(sio)

        gate["open"] = False
        probe = await RawSocket.open(url)
        for round_ in range(100):
            auth = state["/"] if round_ % 2 else {"pid": "A" * 32}  # real, then unknown
            reply = await probe.connect(auth=auth)
            if always_connect:  # python-socketio: CONNECT first, then a DISCONNECT
                assert reply.startswith("40")
                assert (await probe.next_frame() or "").startswith("41")
            else:
                assert reply.startswith("44")
        # a refused client is sent none of the session's missed events
        assert not [f for f in probe.frames if f.startswith("42")]
        await until(lambda: bookkeeping(sio) == baseline,
                    f"bookkeeping grew: {bookkeeping(sio)} vs {baseline}")
        await probe.close()

        gate["open"] = True
        again = Peer()
        await again.connect(url, state)
        assert again.client.is_recovered() and again.sid() == sid
        assert await again.inbox["/"].wait_for(1) == ["missed"]
        await again.client.disconnect()


# -- item 3: refusals after the claim -----------------------------------------------------

class FlakyStore(MemoryStore):
    """A memory store whose next replay read fails, as a store that is briefly unreachable."""

    fail_next_read = False

    async def read_targets(self, ranges: Any) -> Any:
        if self.fail_next_read:
            self.fail_next_read = False
            raise StoreError("the store is briefly unreachable")
        return await super().read_targets(ranges)


async def test_a_store_failure_while_reading_the_replay_keeps_the_session() -> None:
    store = FlakyStore()
    # no recent history kept in memory: the replay reads the store
    async with running(store, history_cache_bytes=0) as node:
        sid, state = await away_after_one(node)

        store.fail_next_read = True
        unlucky = Peer()
        await unlucky.connect(node.url, state)
        assert not unlucky.client.is_recovered()
        assert node.last["failure"] is RecoveryFailure.STORE_UNAVAILABLE
        await unlucky.client.disconnect()

        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered() and again.sid() == sid
        assert await again.inbox["/"].wait_for(1) == [2]
        await again.client.disconnect()


@pytest.mark.parametrize(("offset", "failure"), [
    ("'; DROP TABLE x; --", RecoveryFailure.MALFORMED),
    ("deadbeef-1", RecoveryFailure.HISTORY_RESET),
], ids=["malformed", "another history"])
async def test_a_bad_offset_does_not_destroy_the_session(
        store_url: StoreSpec, offset: str, failure: RecoveryFailure) -> None:
    async with running(store_url) as node:
        peer = Peer()
        await peer.connect(node.url)
        sid = peer.sid()
        state = await peer.drop(node)
        await node.sio.emit("tick", "missed")

        spoiled = Peer()
        await spoiled.connect(node.url, auth={"pid": state["/"]["pid"], "offset": offset})
        assert node.last["failure"] is failure
        await spoiled.client.disconnect()

        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered() and again.sid() == sid
        assert await again.inbox["/"].wait_for(1) == ["missed"]
        await again.client.disconnect()


# -- items 4a, 4b, 4c: probes on one connection and take-overs ---------------------------

async def test_a_second_connect_with_another_clients_pid_leaves_no_trace(
        store_url: StoreSpec) -> None:
    async with running(store_url) as node:
        victim = Peer()
        await victim.connect(node.url)
        victim_sid = victim.sid()
        await node.sio.save_session(victim_sid, {"role": "admin"})
        state = await victim.drop(node)

        probe = await RawSocket.open(node.url)
        sid = payload(await probe.connect())["sid"]
        await node.sio.save_session(sid, {"role": "user"})
        # the same connection asks again, now with the victim's pid
        assert (await probe.connect(auth=state["/"])).startswith("44")
        assert await node.sio.get_session(sid) == {"role": "user"}
        assert not node.sio.is_recovered(sid)
        await probe.close()

        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered() and again.sid() == victim_sid
        assert await node.sio.get_session(victim_sid) == {"role": "admin"}
        await again.client.disconnect()


async def test_a_refused_restore_does_not_evict_the_live_socket(store_url: StoreSpec) -> None:
    async with running(store_url) as node:
        @node.sio.on("connect")
        async def connect(sid: str, environ: Any, auth: Any) -> bool:
            if auth and auth.get("token") == "bad":
                # sent while the restore holds the sid: it must reach the live socket
                await node.sio.emit("tick", "during", to="lobby")
            return bool(auth) and auth.get("token") == "good"

        owner = Peer()
        await owner.connect(node.url, auth={"token": "good"})
        sid = owner.sid()
        await node.sio.enter_room(sid, "lobby")
        await node.sio.emit("tick", "before", to="lobby")
        await owner.inbox["/"].wait_for(1)
        offset_before = owner.client.recovery_state()["/"]["offset"]
        pid = owner.client.recovery_state()["/"]["pid"]

        thief = await RawSocket.open(node.url)
        assert (await thief.connect(auth={"pid": pid, "token": "bad"})).startswith("44")
        assert node.sio.manager.is_connected(sid, "/")
        assert set(node.sio.rooms(sid)) == {sid, "lobby"}
        await node.sio.emit("tick", "after", to="lobby")
        assert await owner.inbox["/"].wait_for(3) == ["before", "during", "after"]
        assert owner.client.connected
        assert not [f for f in thief.frames if f.startswith("42")]
        await thief.close()

        # its room stays went on unbroken: a replay from before the probe sends both
        state = await owner.drop(node)
        state["/"]["offset"] = offset_before
        again = Peer()
        await again.connect(node.url, state, auth={"token": "good"})
        assert again.client.is_recovered() and again.sid() == sid
        assert await again.inbox["/"].wait_for(2) == ["during", "after"]

        # accepted, a take-over goes ahead: the new connection holds the sid
        heir = await RawSocket.open(node.url)
        reply = await heir.connect(auth={**again.client.recovery_state()["/"], "token": "good"})
        assert payload(reply)["sid"] == sid
        await until(lambda: not again.client.connected, "the old connection stays open")
        assert set(node.sio.rooms(sid)) == {sid, "lobby"}
        await heir.close()
        await again.close()


async def test_evicted_connections_leave_nothing_registered() -> None:
    async with running("memory://") as node:
        baseline = bookkeeping(node.sio)["sockets"], len(node.sio.eio.sockets)
        for _ in range(200):
            first = await RawSocket.open(node.url)
            pid = payload(await first.connect())["pid"]
            seen = len(first.frames)
            second = await RawSocket.open(node.url)
            assert (await second.connect(auth={"pid": pid})).startswith("40")
            with contextlib.suppress(Exception):  # it may be closed already
                await first.send(connect_frame())
            while await first.next_frame() is not None:
                pass  # the evicted connection is closed by the server
            assert first.frames[seen:] == ["1"]  # Engine.IO CLOSE, and no CONNECT reply
            await first.close()
            await second.close()

        def registered() -> tuple[int, int]:
            return bookkeeping(node.sio)["sockets"], len(node.sio.eio.sockets)

        await until(lambda: registered() == baseline, f"left registered: {registered()}")
        assert not getattr(node.sio.manager, "pending_connect", None)


# -- item 4g: reconnect at once, again and again ------------------------------------------

FAST_RECONNECTS = 100


async def test_fast_reconnects_recover_every_time(store_url: StoreSpec) -> None:
    async with running(store_url) as node:
        peer = Peer()
        await peer.connect(node.url)
        sid = peer.sid()
        for round_ in range(FAST_RECONNECTS):
            await node.sio.emit("tick", round_)
            await peer.inbox["/"].wait_for(1)
            state = peer.client.recovery_state()
            await drop_transport(peer.client)  # and reconnect at once, no wait
            again = Peer()
            await again.connect(node.url, state)
            assert again.client.is_recovered(), (round_, node.last["failure"])
            assert again.sid() == sid
            await peer.close()
            peer = again
        await peer.client.disconnect()


# -- item 4h -----------------------------------------------------------------------------

async def test_a_namespace_without_recovery_never_sees_pid_or_offset() -> None:
    async with running("memory://", namespaces=["/"]) as node:
        probe = await RawSocket.open(node.url)
        auth = {"pid": "A" * 32, "offset": "deadbeef-1", "token": "t"}
        assert (await probe.connect("/admin", auth=auth)).startswith("40/admin,")
        assert node.last["namespace"] == "/admin" and node.last["auth"] == {"token": "t"}
        await probe.close()


async def test_deeply_nested_session_data_recovers(store_url: StoreSpec) -> None:
    nested: Any = "bottom"
    for depth in range(500):
        nested = [nested] if depth % 2 else {"d": nested}
    async with running(store_url) as node:
        peer = Peer()
        await peer.connect(node.url)
        sid = peer.sid()
        await node.sio.save_session(sid, {"deep": nested})
        state = await peer.drop(node)
        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered()
        assert await node.sio.get_session(sid) == {"deep": nested}
        await again.client.disconnect()


async def test_recoveries_without_offset_do_not_replay_older_connections(
        store_url: StoreSpec) -> None:
    """Issue 14 item 4h: a client that keeps no offsets gets what its previous connection
    was sent once more, not everything since its first connect on every recovery."""
    async with running(store_url) as node:
        peer = Peer()
        await peer.connect(node.url)
        for event in ("a1", "a2"):
            await node.sio.emit("tick", event)
        await peer.inbox["/"].wait_for(2)
        state = await peer.drop(node)

        for event, expected in (("b", ["a1", "a2", "b"]), ("c", ["b", "c"]),
                                ("d", ["c", "d"])):
            state["/"]["offset"] = None  # a client that keeps no offsets
            again = Peer()
            await again.connect(node.url, state)
            assert again.client.is_recovered()
            await node.sio.emit("tick", event)
            assert await again.inbox["/"].wait_for(len(expected)) == expected
            state = await again.drop(node)


async def test_an_offset_inside_a_replay_cut_short_keeps_its_place(
        store_url: StoreSpec) -> None:
    """A no-offset recovery moves where the next no-offset recovery starts, never the
    floor of offsets: a client that got part of that replay still gets the rest."""
    async with running(store_url) as node:
        peer = Peer()
        await peer.connect(node.url)
        await node.sio.emit("tick", "a1")
        await peer.inbox["/"].wait_for(1)
        first_offset = peer.client.last_offset()
        for event in ("a2", "a3"):
            await node.sio.emit("tick", event)
        await peer.inbox["/"].wait_for(3)
        state = await peer.drop(node)
        state["/"]["offset"] = None
        again = Peer()
        await again.connect(node.url, state)
        assert await again.inbox["/"].wait_for(3) == ["a1", "a2", "a3"]
        state = await again.drop(node)
        state["/"]["offset"] = first_offset  # as if only a1 of the replay had arrived
        third = Peer()
        await third.connect(node.url, state)
        assert third.client.is_recovered()
        assert await third.inbox["/"].wait_for(2) == ["a2", "a3"]
        await third.client.disconnect()


async def test_leaving_on_purpose_leaves_nothing_behind_and_nothing_to_recover(
        store_url: StoreSpec) -> None:
    """Its session was written through at connect: a deliberate leave deletes it, and the
    server keeps nothing per socket afterwards."""
    async with running(store_url) as node:
        baseline = bookkeeping(node.sio)
        states = []
        for _ in range(20):
            peer = Peer()
            await peer.connect(node.url)
            state = peer.client.recovery_state()
            sid = peer.sid()
            await node.sio.durable_manager.sessions.flush()  # written through
            await peer.client.disconnect()
            await until(lambda s=sid: not node.sio.manager.is_connected(s, "/"), "gone")
            states.append(state)
        await node.sio.durable_manager.sessions.flush()
        assert bookkeeping(node.sio) == baseline
        again = Peer()
        await again.connect(node.url, states[-1])
        assert not again.client.is_recovered()
        assert node.last["failure"] is RecoveryFailure.UNKNOWN_SESSION
        await again.close()

"""A replay sends a room's packets only for the time the socket was in that room.

Live delivery sends a packet to the sockets in its room when the packet is delivered; a
recovering client with an older offset (or none) must get the same set back, not the
room's whole history judged by the rooms it has now (issue 14, item 4d).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from durable_adapter import RecoveryFailure
from durable_adapter._offsets import hash_pid
from durable_adapter.stores import membership
from durable_adapter.stores.base import Session, StoredPacket, TakeRequest
from durable_adapter.stores.membership import MembershipLog
from tests._harness import WAIT
from tests.conformance.conftest import Node, Peer, running

# what the peer in _history() received live, in order
LIVE = ["all-0", "not-priv", "member-1", "member-2"]


def _rooms_handlers(node: Node) -> None:
    @node.sio.on("join")
    async def join(sid: str, room: str) -> None:
        await node.sio.enter_room(sid, room)

    @node.sio.on("leave")
    async def leave(sid: str, room: str) -> None:
        await node.sio.leave_room(sid, room)


async def _history(node: Node, peer: Peer) -> str:
    """Joins, leaves and rejoins "priv" around emits; returns the offset of "all-0"."""
    await node.sio.emit("tick", "all-0")
    await peer.inbox["/"].wait_for(1)
    first_offset = peer.client.recovery_state()["/"]["offset"]
    assert first_offset is not None
    await node.sio.emit("tick", "not-priv", skip_sid="priv")  # it was not in priv then
    await node.sio.emit("tick", "before-join", to="priv")
    await peer.client.call("join", "priv", timeout=WAIT)
    await node.sio.emit("tick", "member-1", to="priv")
    await node.sio.emit("tick", "skip-priv", skip_sid="priv")  # it was in priv then
    await peer.client.call("leave", "priv", timeout=WAIT)
    await node.sio.emit("tick", "while-away", to="priv")
    await peer.client.call("join", "priv", timeout=WAIT)
    await node.sio.emit("tick", "member-2", to="priv")
    assert await peer.inbox["/"].wait_for(len(LIVE)) == LIVE
    return first_offset


async def _received_until_end(node: Node, peer: Peer, count: int) -> list[Any]:
    """Everything ``peer`` got before a final "end" sent to its sid (so nothing is late)."""
    await node.sio.emit("tick", "end", to=peer.sid())
    got = await peer.inbox["/"].wait_for(count + 1)
    assert got[-1] == "end", got
    return got[:-1]


@pytest.mark.parametrize("offset", ["none", "older"])
async def test_replay_sends_a_room_only_while_the_socket_was_in_it(
        store_url: str, offset: str) -> None:
    async with running(store_url) as node:
        _rooms_handlers(node)
        peer = Peer()
        await peer.connect(node.url)
        first_offset = await _history(node, peer)
        sid = peer.sid()
        state = await peer.drop(node)
        await node.sio.emit("tick", "missed", to="priv")
        await node.sio.emit("tick", "elsewhere", to="other")

        state["/"]["offset"] = None if offset == "none" else first_offset
        again = Peer()
        await again.connect(node.url, state)
        assert again.sid() == sid and again.client.is_recovered()
        expected = [*LIVE, "missed"] if offset == "none" else [*LIVE[1:], "missed"]
        assert await _received_until_end(node, again, len(expected)) == expected
        assert set(node.sio.rooms(sid)) == {sid, "priv"}
        await again.client.disconnect()


async def test_room_stays_survive_a_recovery(store_url: str) -> None:
    async with running(store_url) as node:
        _rooms_handlers(node)
        peer = Peer()
        await peer.connect(node.url)
        first_offset = await _history(node, peer)
        state = await peer.drop(node)
        await node.sio.emit("tick", "missed", to="priv")

        again = Peer()
        await again.connect(node.url, state)
        assert await again.inbox["/"].wait_for(1) == ["missed"]
        await again.client.call("leave", "priv", timeout=WAIT)
        await node.sio.emit("tick", "away-again", to="priv")
        await again.client.call("join", "priv", timeout=WAIT)
        await node.sio.emit("tick", "member-3", to="priv")
        await again.inbox["/"].wait_for(2)
        state = await again.drop(node)

        state["/"]["offset"] = first_offset
        third = Peer()
        await third.connect(node.url, state)
        assert third.client.is_recovered()
        expected = [*LIVE[1:], "missed", "member-3"]
        assert await _received_until_end(node, third, len(expected)) == expected
        await third.client.disconnect()


async def test_session_saved_without_a_log_recovers_with_its_rooms(store_url: str) -> None:
    """Sessions written by the version before the log: their rooms count since connect."""
    async with running(store_url) as node:
        _rooms_handlers(node)
        peer = Peer()
        await peer.connect(node.url)
        await peer.client.call("join", "priv", timeout=WAIT)
        await node.sio.emit("tick", "member-1", to="priv")
        await peer.inbox["/"].wait_for(1)
        sid = peer.sid()
        state = await peer.drop(node)
        pid = state["/"]["pid"]
        assert pid is not None
        store = node.sio.store
        (saved,) = await store.take_sessions([TakeRequest("/", hash_pid(pid))], node="editor",
                                             now=time.time(), window=60)
        assert isinstance(saved, Session) and saved.membership is not None
        # written back disconnected, as the version before the log left it
        await store.save_sessions([dataclasses.replace(saved, membership=None, owner=None)])
        await node.sio.emit("tick", "missed", to="priv")

        state["/"]["offset"] = None
        again = Peer()
        await again.connect(node.url, state)
        assert again.sid() == sid and again.client.is_recovered()
        assert await _received_until_end(node, again, 2) == ["member-1", "missed"]
        assert set(node.sio.rooms(sid)) == {sid, "priv"}
        await again.client.disconnect()


async def test_a_replay_older_than_the_kept_stays_is_refused(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(membership, "MAX_CLOSED", 2)
    async with running(store_url) as node:
        _rooms_handlers(node)
        peer = Peer()
        await peer.connect(node.url)
        await node.sio.emit("tick", "all-0")
        await peer.inbox["/"].wait_for(1)
        old = peer.client.recovery_state()["/"]
        for _ in range(4):  # four stays in priv, each with a packet: two are dropped
            await peer.client.call("join", "priv", timeout=WAIT)
            await node.sio.emit("tick", "m", to="priv")
            await peer.client.call("leave", "priv", timeout=WAIT)
            await node.sio.emit("tick", "x", to="other")  # a packet between two stays
        await peer.inbox["/"].wait_for(5)
        await peer.drop(node)

        stale = Peer()
        await stale.connect(node.url, {"/": old})
        assert not stale.client.is_recovered()
        assert node.last["failure"] is RecoveryFailure.NOT_RETAINED
        await stale.client.disconnect()


# -- the log itself ------------------------------------------------------------------


def _packet(seq: int, rooms: tuple[str, ...] = (), except_rooms: tuple[str, ...] = ()
            ) -> StoredPacket:
    return StoredPacket(namespace="/", data=["e"], rooms=rooms, except_rooms=except_rooms,
                        seq=seq, created_at=0.0)


def test_membership_follows_joins_and_leaves_in_seq_positions() -> None:
    log = MembershipLog()
    log.join("a", 3)  # receives a's packets 4..6
    log.leave("a", 6)
    log.join("a", 9)  # and from 10 on
    assert [s for s in range(1, 13) if log.was_in("a", s)] == [4, 5, 6, 10, 11, 12]
    assert log.was_for(_packet(5, except_rooms=("a",)), "me") is False
    assert log.was_for(_packet(8, except_rooms=("a",)), "me") is True
    assert log.was_for(_packet(8, rooms=("me",)), "me") is True  # its sid room, always
    assert log.was_for(_packet(8, except_rooms=("me",)), "me") is False


def test_membership_merges_and_drops_empty_stays() -> None:
    log = MembershipLog()
    log.join("a", 3)
    log.leave("a", 3)  # nothing delivered meanwhile: no stay
    assert log.rooms == {}
    log.join("a", 3)
    log.leave("a", 5)
    log.join("a", 5)  # back before anything else was delivered: one stay
    assert log.rooms == {"a": [(3, None)]}


def test_membership_keeps_a_bounded_number_of_stays() -> None:
    log = MembershipLog()
    for at in range(0, 4 * membership.MAX_CLOSED, 2):
        log.join("a", at)
        log.leave("a", at + 1)
    assert len(log.rooms["a"]) == membership.MAX_CLOSED
    last_dropped_end = 4 * membership.MAX_CLOSED - 2 * membership.MAX_CLOSED - 1
    assert log.since == last_dropped_end
    assert not log.was_in("a", last_dropped_end + 1) and log.was_in("a", last_dropped_end + 2)


def test_membership_stored_form_round_trips_and_rejects_garbage() -> None:
    log = MembershipLog(since=4, rooms={"a.b$": [(5, 7), (9, None)], "": [(4, None)]})
    assert MembershipLog.from_value(log.to_value()) == log
    for bad in (None, {}, {"since": "1", "rooms": []}, {"since": 1, "rooms": [[1, []]]},
                {"since": 1, "rooms": [["a", [[1]]]]}, {"since": True, "rooms": []}):
        with pytest.raises(ValueError):
            MembershipLog.from_value(bad)

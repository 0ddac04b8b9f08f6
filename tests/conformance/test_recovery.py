"""What a recovery promises (design.md §1), checked on every store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import socketio

from durable_adapter import RecoveryFailure
from tests._harness import WAIT, Inbox
from tests.conformance.conftest import Peer, away_after_one, make_store, running


async def test_restores_sid_rooms_data_and_missed_events(store_url: str) -> None:
    async with running(store_url) as node:
        @node.sio.on("join")
        async def join(sid: str, room: str) -> None:
            await node.sio.enter_room(sid, room)
            await node.sio.save_session(sid, {"user": "ada", "blob": b"\x00\x01"})

        peer = Peer()
        await peer.connect(node.url)
        await peer.client.call("join", "lobby", timeout=WAIT)
        await node.sio.emit("tick", 1, to="lobby")
        await peer.inbox["/"].wait_for(1)
        sid = peer.sid()
        state = await peer.drop(node)
        for i in range(2, 12):
            await node.sio.emit("tick", i, to="lobby")

        again = Peer()
        await again.connect(node.url, state)
        assert again.sid() == sid
        assert again.client.is_recovered()
        assert node.last["recovered"] is True
        assert await again.inbox["/"].wait_for(10) == list(range(2, 12))
        assert set(node.sio.rooms(sid)) == {sid, "lobby"}
        assert await node.sio.get_session(sid) == {"user": "ada", "blob": b"\x00\x01"}
        await node.sio.emit("tick", 12, to="lobby")
        assert await again.inbox["/"].wait_for(11) == list(range(2, 13))
        await again.client.disconnect()


async def test_replay_comes_once_in_order_before_live_events(store_url: str) -> None:
    async with running(store_url) as node:
        peer = Peer()
        await peer.connect(node.url)
        await node.sio.emit("tick", 0)
        await peer.inbox["/"].wait_for(1)
        state = await peer.drop(node)
        for i in range(1, 301):
            await node.sio.emit("tick", i)

        again = Peer()
        stop = asyncio.Event()

        async def live_emitter() -> None:
            # live traffic while the restore is under way must not overtake the replay
            n = 1000
            while not stop.is_set():
                await node.sio.emit("tick", n)
                n += 1
                await asyncio.sleep(0)

        emitter = asyncio.create_task(live_emitter())
        await again.connect(node.url, state)
        await again.inbox["/"].wait_for(320)
        stop.set()
        await emitter
        got = again.received()
        assert got[:300] == list(range(1, 301))
        live = got[300:]
        assert live == sorted(set(live)) and all(n >= 1000 for n in live)
        await again.client.disconnect()


async def test_replay_respects_rooms_and_skip_sid(store_url: str) -> None:
    async with running(store_url) as node:
        @node.sio.on("join")
        async def join(sid: str, room: str) -> None:
            await node.sio.enter_room(sid, room)

        peer, other = Peer(), Peer()
        await peer.connect(node.url)
        await other.connect(node.url)
        await peer.client.call("join", "a", timeout=WAIT)
        await other.client.call("join", "a", timeout=WAIT)
        sid = peer.sid()
        state = await peer.drop(node)
        await node.sio.emit("tick", "room-a", to="a")
        await node.sio.emit("tick", "room-b", to="b")
        await node.sio.emit("tick", "skip-me", to="a", skip_sid=sid)
        await node.sio.emit("tick", "all")
        await node.sio.emit("tick", "others-sid", to=other.sid())
        await node.sio.emit("tick", "mine", to=sid)
        await node.sio.emit("tick", "a-or-b", to=["b", "a"])

        again = Peer()
        await again.connect(node.url, state)
        assert await again.inbox["/"].wait_for(4) == ["room-a", "all", "mine", "a-or-b"]
        await node.sio.emit("tick", "end", to=sid)
        assert (await again.inbox["/"].wait_for(5))[-1] == "end"
        await again.client.disconnect()
        await other.client.disconnect()


async def test_zero_event_client_recovers_everything_since_it_connected(store_url: str) -> None:
    async with running(store_url) as node:
        await node.sio.emit("tick", "before-it-connected")
        peer = Peer()
        await peer.connect(node.url)
        sid = peer.sid()
        state = await peer.drop(node)
        assert state["/"]["offset"] is None
        await node.sio.emit("tick", "missed")

        again = Peer()
        await again.connect(node.url, state)
        assert again.sid() == sid and again.client.is_recovered()
        assert await again.inbox["/"].wait_for(1) == ["missed"]
        await again.client.disconnect()


async def test_packet_in_flight_at_drop_is_replayed(store_url: str) -> None:
    """The client's offset is older than what the server last sent: it gets the rest."""
    async with running(store_url) as node:
        peer = Peer()
        await peer.connect(node.url)
        for i in range(3):
            await node.sio.emit("tick", i)
        await peer.inbox["/"].wait_for(3)
        offsets_seen = peer.client.recovery_state()
        state = await peer.drop(node)
        # the client pretends it lost everything after the first packet
        first_offset = offsets_seen["/"]["offset"]
        assert first_offset is not None
        epoch, seq = first_offset.rsplit("-", 1)
        state["/"]["offset"] = f"{epoch}-{int(seq) - 2}"

        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered()
        assert await again.inbox["/"].wait_for(2) == [1, 2]
        await again.client.disconnect()


@pytest.mark.parametrize("how", ["client disconnect", "server disconnect"])
async def test_deliberate_disconnects_do_not_recover(store_url: str, how: str) -> None:
    async with running(store_url) as node:
        peer = Peer()
        await peer.connect(node.url)
        await node.sio.emit("tick", 1)
        await peer.inbox["/"].wait_for(1)
        sid = peer.sid()
        state = peer.client.recovery_state()
        if how == "client disconnect":
            await peer.client.disconnect()
        else:
            await node.sio.disconnect(sid)
        await node.wait_gone(sid)

        again = Peer()
        await again.connect(node.url, state)
        assert again.sid() != sid and not again.client.is_recovered()
        assert node.last["recovered"] is False
        assert node.last["failure"] is RecoveryFailure.UNKNOWN_SESSION
        await again.client.disconnect()


async def test_server_disconnect_deletes_a_stored_session(store_url: str) -> None:
    async with running(store_url) as node:
        peer = Peer()
        await peer.connect(node.url)
        sid = peer.sid()
        state = await peer.drop(node)
        await node.sio.disconnect(sid)  # e.g. the user was banned while away

        again = Peer()
        await again.connect(node.url, state)
        assert not again.client.is_recovered() and again.sid() != sid
        await again.client.disconnect()


async def test_expired_session_does_not_recover(store_url: str) -> None:
    async with running(store_url, max_disconnection_duration=0.3) as node:
        peer = Peer()
        await peer.connect(node.url)
        state = await peer.drop(node)
        await asyncio.sleep(0.5)  # the scenario: away longer than max_disconnection_duration

        again = Peer()
        await again.connect(node.url, state)
        assert not again.client.is_recovered()
        assert node.last["failure"] is RecoveryFailure.UNKNOWN_SESSION
        await again.client.disconnect()


BAD_CREDENTIALS: list[tuple[str, Any, Any, RecoveryFailure]] = [
    ("unknown pid", "A" * 32, None, RecoveryFailure.UNKNOWN_SESSION),
    ("malformed pid", "not a pid!", None, RecoveryFailure.MALFORMED),
    ("pid of wrong type", {"$ne": None}, None, RecoveryFailure.MALFORMED),
    ("oversized pid", "x" * 100_000, None, RecoveryFailure.MALFORMED),
    ("oversized offset", None, "1" * 100_000, RecoveryFailure.MALFORMED),
    ("offset of wrong type", None, ["0"], RecoveryFailure.MALFORMED),
    ("offset of another history", None, "deadbeef-1", RecoveryFailure.HISTORY_RESET),
    ("offset ahead", None, "+ahead", RecoveryFailure.OFFSET_AHEAD),
    ("garbage offset", None, "'; DROP TABLE x; --", RecoveryFailure.MALFORMED),
]


@pytest.mark.parametrize(("case", "pid", "offset", "failure"), BAD_CREDENTIALS,
                         ids=[c[0] for c in BAD_CREDENTIALS])
async def test_bad_credentials_get_a_fresh_session(
        store_url: str, case: str, pid: Any, offset: Any, failure: RecoveryFailure) -> None:
    async with running(store_url) as node:
        victim = Peer()
        await victim.connect(node.url)
        await node.sio.emit("tick", "secret")
        await victim.inbox["/"].wait_for(1)
        victim_sid = victim.sid()
        real = await victim.drop(node)
        real_pid, real_offset = real["/"]["pid"], real["/"]["offset"]
        epoch, seq = real_offset.rsplit("-", 1)
        if pid is None:
            pid = real_pid  # a real session, attacked through its offset
        if offset == "+ahead":
            offset = f"{epoch}-{int(seq) + 5}"

        attacker = Peer()
        auth = {"pid": pid, "offset": offset} if offset is not None else {"pid": pid}
        await attacker.connect(node.url, auth=auth)
        assert not attacker.client.is_recovered()
        assert attacker.sid() != victim_sid  # a fresh session, never the victim's
        assert node.last["recovered"] is False
        assert node.last["failure"] is failure
        assert not node.last["auth"]  # pid and offset never reach the application
        await node.sio.emit("tick", "after")
        assert await attacker.inbox["/"].wait_for(1) == ["after"]
        await attacker.client.disconnect()


FORGED_PIDS = [(case, pid) for case, pid, _, _ in BAD_CREDENTIALS if pid is not None]


@pytest.mark.parametrize(("case", "pid"), FORGED_PIDS, ids=[c[0] for c in FORGED_PIDS])
async def test_a_forged_pid_leaves_the_real_session_to_its_owner(
        store_url: str, case: str, pid: Any) -> None:
    async with running(store_url) as node:
        victim = Peer()
        await victim.connect(node.url)
        victim_sid = victim.sid()
        real = await victim.drop(node)

        attacker = Peer()
        await attacker.connect(node.url, auth={"pid": pid})
        assert not attacker.client.is_recovered() and attacker.sid() != victim_sid
        await node.sio.emit("tick", "missed")

        owner = Peer()
        await owner.connect(node.url, real)
        assert owner.client.is_recovered() and owner.sid() == victim_sid
        assert await owner.inbox["/"].wait_for(1) == ["missed"]
        await owner.client.disconnect()
        await attacker.client.disconnect()


async def test_two_reconnects_with_one_pid_exactly_one_wins(store_url: str) -> None:
    """A cloned client: never two sockets with one sid; the session ends with one of them."""
    async with running(store_url) as node:
        sid, state = await away_after_one(node)

        first, second = Peer(), Peer()
        await asyncio.gather(first.connect(node.url, state), second.connect(node.url, state))

        def holders() -> list[Peer]:
            return [p for p in (first, second)
                    if p.client.connected and p.client.get_sid() == sid]

        async def settled() -> None:
            while len(holders()) != 1:  # noqa: ASYNC110 - the evicted one leaves soon
                await asyncio.sleep(0.01)

        await asyncio.wait_for(settled(), WAIT)
        [winner] = holders()
        assert winner.client.is_recovered()
        assert await winner.inbox["/"].wait_for(1) == [2]
        assert node.sio.manager.is_connected(sid, "/")
        loser = first if winner is second else second
        # refused outright (a fresh session, still connected), or recovered first and
        # then taken over (disconnected): nothing else
        assert (loser.client.connected, loser.client.is_recovered()) in {
            (True, False), (False, True)}
        # each connect handler saw either a recovery or the reason there was none
        assert [c["recovered"] or c["failure"] is not None for c in node.connects[-2:]] == [
            True, True]
        await node.sio.emit("tick", 3)
        assert await winner.inbox["/"].wait_for(2) == [2, 3]
        for p in (first, second):
            await p.close()


async def test_reconnect_before_the_drop_is_noticed_still_recovers(store_url: str) -> None:
    """socket.io #4880: the old transport is still registered when the client returns."""
    async with running(store_url) as node:
        peer = Peer()
        await peer.connect(node.url)
        await node.sio.emit("tick", 1)
        await peer.inbox["/"].wait_for(1)
        sid = peer.sid()
        state = peer.client.recovery_state()
        # the server has not seen this connection die: it is still connected there
        assert node.sio.manager.is_connected(sid, "/")

        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered() and again.sid() == sid
        await node.sio.emit("tick", 2)
        assert await again.inbox["/"].wait_for(1) == [2]
        await peer.close()
        await again.client.disconnect()


async def test_reconnect_during_a_slow_disconnect_handler_recovers(store_url: str) -> None:
    """The session is saved before the app's disconnect handler; a fast reconnect waits
    for the old socket to finish leaving instead of losing the session."""
    async with running(store_url) as node:
        leaving = asyncio.Event()

        @node.sio.on("disconnect")
        async def disconnect(sid: str, reason: Any) -> None:
            leaving.set()
            await asyncio.sleep(0.3)  # the scenario: a handler slower than the reconnect

        peer = Peer()
        await peer.connect(node.url)
        sid = peer.sid()
        await node.sio.emit("tick", 1)
        await peer.inbox["/"].wait_for(1)
        state = peer.client.recovery_state()
        from tests._harness import drop_transport

        await drop_transport(peer.client)
        await asyncio.wait_for(leaving.wait(), WAIT)
        assert node.sio.manager.is_connected(sid, "/") or node.sio.manager.eio_sid_from_sid(
            sid, "/") is not None  # still leaving
        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered() and again.sid() == sid
        await peer.close()
        await again.client.disconnect()


async def test_acked_and_volatile_emits_are_not_stored(store_url: str) -> None:
    async with running(store_url) as node:
        peer = Peer(events=("tick", "ask"))
        await peer.connect(node.url)
        answers: list[Any] = []
        await node.sio.emit("ask", "question", to=peer.sid(), callback=answers.append)
        # not a string: the JS client's rule takes a trailing string for an offset
        await node.sio.emit("tick", {"v": 1}, volatile=True)
        assert await peer.inbox["/"].wait_for(2) == ["question", {"v": 1}]
        state = await peer.drop(node)
        await node.sio.emit("ask", "q2", to=peer.sid(), callback=answers.append)
        await node.sio.emit("tick", {"v": 2}, volatile=True)
        await node.sio.emit("tick", "stored")

        again = Peer(events=("tick", "ask"))
        await again.connect(node.url, state)
        assert again.client.is_recovered()
        # a live event comes after the whole replay: when it arrives, anything replayed
        # (the acked or volatile emits, were they stored) is already there before it
        await node.sio.emit("tick", "live")
        assert await again.inbox["/"].wait_for(2) == ["stored", "live"]
        await again.client.disconnect()


async def test_binary_payloads_replay_intact(store_url: str) -> None:
    async with running(store_url) as node:
        peer = Peer(events=("file",))
        await peer.connect(node.url)
        state = await peer.drop(node)
        blob = bytes(range(256)) * 40
        await node.sio.emit("file", ({"name": "a.bin", "data": blob}, b"\xff"))

        again = Peer(events=("file",))
        await again.connect(node.url, state)
        [(meta, tail)] = await again.inbox["/"].wait_for(1)
        assert meta == {"name": "a.bin", "data": blob} and tail == b"\xff"
        await again.client.disconnect()


async def test_two_namespaces_on_one_connection_recover_separately(store_url: str) -> None:
    async with running(store_url) as node:
        peer = Peer(namespaces=("/", "/chat"))
        await peer.connect(node.url)
        sids = {ns: peer.sid(ns) for ns in ("/", "/chat")}
        state = await peer.drop(node)
        await node.sio.emit("tick", "root")
        await node.sio.emit("tick", "chat", namespace="/chat")

        again = Peer(namespaces=("/", "/chat"))
        await again.connect(node.url, state)
        for namespace, expected in (("/", ["root"]), ("/chat", ["chat"])):
            assert again.client.is_recovered(namespace)
            assert again.sid(namespace) == sids[namespace]
            assert await again.inbox[namespace].wait_for(1) == expected
        await again.client.disconnect()


async def test_connect_handler_can_refuse_a_recovery_and_keep_it(store_url: str) -> None:
    async with running(store_url) as node:
        allow = {"value": True}

        @node.sio.on("connect")
        async def connect(sid: str, environ: Any, auth: Any) -> bool:
            return allow["value"]

        peer = Peer()
        await peer.connect(node.url)
        sid = peer.sid()
        state = await peer.drop(node)
        await node.sio.emit("tick", "missed")
        allow["value"] = False
        refused = Peer()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect(node.url, state, wait_timeout=2)
        await refused.close()
        allow["value"] = True
        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered() and again.sid() == sid
        assert await again.inbox["/"].wait_for(1) == ["missed"]
        await again.client.disconnect()


async def test_skip_middlewares_skips_the_connect_handler(store_url: str) -> None:
    async with running(store_url, skip_middlewares=True) as node:
        peer = Peer()
        await peer.connect(node.url)
        state = await peer.drop(node)
        calls = len(node.connects)
        again = Peer()
        await again.connect(node.url, state)
        assert again.client.is_recovered()
        assert len(node.connects) == calls
        await again.client.disconnect()


async def test_recovery_off_behaves_like_python_socketio(store_url: str) -> None:
    from tests._harness import serving

    sio = __import__("durable_adapter").AsyncServer(
        store=make_store(store_url), async_mode="aiohttp", connection_state_recovery=None)
    async with serving(sio) as url:
        client = socketio.AsyncClient(reconnection=False)
        got = Inbox()
        client.on("tick", lambda *args: got.put(args))
        await client.connect(url, transports=["websocket"], wait_timeout=WAIT)
        await sio.emit("tick", "plain")
        assert await got.wait_for(1) == [("plain",)]  # no offset appended
        await client.disconnect()


def test_sessions_survive_a_server_restart(store_url: str) -> None:
    if store_url == "memory://":
        pytest.skip("the memory store lives in one process")

    async def first_life() -> dict[str, Any]:
        async with running(store_url) as node:
            sid, state = await away_after_one(node)
            return {"state": state, "sid": sid}

    async def second_life(before: dict[str, Any]) -> None:
        async with running(store_url) as node:
            await node.sio.emit("tick", 3)
            again = Peer()
            await again.connect(node.url, before["state"])
            assert again.client.is_recovered() and again.sid() == before["sid"]
            assert await again.inbox["/"].wait_for(2) == [2, 3]
            await again.client.disconnect()

    # two event loops: nothing in memory carries over, only the database file
    before = asyncio.run(first_life())
    asyncio.run(second_life(before))

"""What a client was told never outruns what the store holds for it.

Read from the store the instant an acknowledgement arrives, with no flush and no wait:
the CONNECT reply, an acknowledged ``enter_room`` + ``save_session``, and a packet
delivered after a room change nobody awaited each find the socket's row as the client
knows it. One bad session fails only its own socket.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from durable_adapter.exceptions import SessionDataError
from durable_adapter.stores.base import Session, TakeRequest
from tests._harness import WAIT
from tests.conformance.conftest import Node, Peer, StoreMaker, running
from tests.conformance.test_live_handover import shared

__all__ = ["shared"]  # the fixture, parametrized over SQLite, PostgreSQL and Redis


async def stored(node: Node, observer: Node, sid: str) -> Session:
    """``sid``'s row as another node finds it right now (taken as from a dead node, then
    handed straight back to ``node``, so its later writes still land)."""
    manager = node.sio.durable_manager
    state = manager.sockets.get("/", sid)
    assert state is not None and state.pid_hash is not None
    (taken,) = await observer.sio.store.take_sessions(
        [TakeRequest("/", state.pid_hash, force_from=manager.host_id)],
        node="observer", now=time.time(), window=60)
    assert isinstance(taken, Session), f"no row for {sid}: {taken!r}"
    await observer.sio.store.save_sessions([dataclasses.replace(taken, owner=manager.host_id)],
                                           node="observer")
    return taken


@asynccontextmanager
async def watched(shared: StoreMaker) -> AsyncIterator[tuple[Node, Node]]:
    """Node ``a`` serving, node ``b`` (the observer) started on the same store."""
    async with running(shared) as a, running(shared) as b:
        on_join(a)
        await b.sio.durable_manager.start()
        yield a, b


def on_join(node: Node) -> None:
    @node.sio.on("join")
    async def join(sid: str, room: str, data: Any) -> str:
        await node.sio.enter_room(sid, room)
        try:
            await node.sio.save_session(sid, data)
        except SessionDataError as exc:
            return f"refused: {exc}"
        return "ok"


async def test_the_connect_reply_comes_after_the_row_commits(shared: StoreMaker) -> None:
    async with watched(shared) as (a, b):
        for _ in range(5):
            peer = Peer()
            await peer.connect(a.url)
            sid = peer.sid()
            assert sid in (await stored(a, b, sid)).rooms
            await peer.close()


async def test_an_acknowledged_join_and_save_are_committed(shared: StoreMaker) -> None:
    async with watched(shared) as (a, b):
        peer = Peer()
        await peer.connect(a.url)
        sid = peer.sid()
        for round_ in range(5):
            room = f"room-{round_}"
            assert await peer.client.call("join", (room, {"n": round_}), timeout=WAIT) == "ok"
            session = await stored(a, b, sid)
            assert room in session.rooms and session.data == {"n": round_}
        await peer.close()


async def test_a_packet_reaches_a_socket_after_its_room_change_commits(
        shared: StoreMaker) -> None:
    async with watched(shared) as (a, b):
        peer = Peer()
        await peer.connect(a.url)
        sid = peer.sid()
        for round_ in range(5):
            room = f"room-{round_}"
            # python-socketio's synchronous form, never awaited by the application
            a.sio.durable_manager.basic_enter_room(sid, "/", room)
            await a.sio.emit("tick", round_, to=room)
            await peer.inbox["/"].wait_for(round_ + 1)
            assert room in (await stored(a, b, sid)).rooms
        await peer.close()


async def test_one_unstorable_session_fails_only_its_own_socket(shared: StoreMaker) -> None:
    async with watched(shared) as (a, b):
        bad, good = Peer(), Peer()
        await bad.connect(a.url)
        await good.connect(a.url)
        answer = await bad.client.call(
            "join", ("bad-room", {"when": datetime.datetime.now(datetime.UTC).isoformat()}),
            timeout=WAIT)
        assert answer == "ok"  # a string is fine; an object is refused at the call:
        with pytest.raises(SessionDataError):
            await a.sio.save_session(bad.sid(), {"when": datetime.datetime.now(datetime.UTC)})
        # a session changed behind save_session's back fails its own writes only
        (await a.sio.eio.get_session(a.sio.durable_manager.sockets.get(
            "/", bad.sid()).eio_sid))["/"] = {"object": object()}
        a.sio.durable_manager.sessions.mark("/", bad.sid())
        assert await good.client.call("join", ("good-room", {"ok": 1}), timeout=WAIT) == "ok"
        session = await stored(a, b, good.sid())
        assert "good-room" in session.rooms and session.data == {"ok": 1}
        # and the shutdown is not held up by it
        await bad.close()
        await good.close()
